"""What happened to each checkpoint in a run: mergeable across xdist workers.

One record per checkpoint name, in the shape of the JSON report (docs/reference/report.md "The JSON report (`--ckpts-report`)"):
``status`` is one of downloaded, cached, stale, skipped, failed; ``bytes`` is what this
run transferred; ``reason`` is set for skipped, failed and stale. Workers send
``to_json()`` in ``workeroutput``; the controller ``merge``s them.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["STATUSES", "Stats"]

#: Report statuses, strongest first: when workers disagree the strongest wins.
STATUSES = ("failed", "downloaded", "stale", "cached", "skipped")
_RANK = {s: i for i, s in enumerate(STATUSES)}


def _blank(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "status": None,
        "sha256": None,
        "commit": None,
        "bytes": 0,
        "size": None,
        "seconds": 0.0,
        "reason": None,
    }


@dataclass
class Stats:
    """Per-checkpoint records plus hashing totals for the summary line."""

    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    hashed_bytes: int = 0
    hash_seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def record(
        self,
        name: str,
        status: str,
        *,
        nbytes: int = 0,
        seconds: float = 0.0,
        reason: str | None = None,
        sha256: str | None = None,
        commit: str | None = None,
        size: int | None = None,
    ) -> None:
        """Note an event; the strongest status seen for ``name`` wins."""
        with self._lock:
            rec = self.records.setdefault(name, _blank(name))
            current = rec["status"]
            if current is None or _RANK[status] <= _RANK[current]:
                rec["status"] = status
                if reason is not None or status in ("downloaded", "cached"):
                    rec["reason"] = reason
            rec["bytes"] += nbytes
            rec["seconds"] += seconds
            for key, value in (("sha256", sha256), ("commit", commit), ("size", size)):
                if value is not None:
                    rec[key] = value

    def by_status(self, status: str) -> dict[str, dict[str, Any]]:
        return {n: r for n, r in self.records.items() if r["status"] == status}

    def to_json(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "hashed_bytes": self.hashed_bytes,
            "hash_seconds": self.hash_seconds,
        }

    def merge(self, data: Mapping[str, Any]) -> None:
        for name, rec in data.get("records", {}).items():
            self.record(
                name,
                rec["status"] or "cached",
                nbytes=int(rec.get("bytes") or 0),
                seconds=float(rec.get("seconds") or 0.0),
                reason=rec.get("reason"),
                sha256=rec.get("sha256"),
                commit=rec.get("commit"),
                size=rec.get("size"),
            )
        self.hashed_bytes += int(data.get("hashed_bytes", 0))
        self.hash_seconds += float(data.get("hash_seconds", 0.0))

    def report_rows(self) -> list[dict[str, Any]]:
        """The ``checkpoints`` list of the JSON report, sorted by name."""
        keys = ("name", "status", "sha256", "commit", "bytes", "size", "seconds", "reason")
        return [
            {k: (round(r[k], 3) if k == "seconds" else r[k]) for k in keys}
            for _, r in sorted(self.records.items())
            if r["status"] is not None
        ]

    @property
    def empty(self) -> bool:
        return not any(r["status"] for r in self.records.values())
