"""What happened to each checkpoint in a run: mergeable across xdist workers.

One record per checkpoint name, in the shape of the JSON report (docs/reference/report.md "The JSON report (`--ckpts-report`)"):
``status`` is one of downloaded, cached, stale, skipped, failed; ``bytes`` is what this
run transferred; ``reason`` is set for skipped, failed and stale; ``source`` says where
the bytes came from: ``cache``, ``hub`` or the (redacted) mirror (docs/mirrors.md "What happens on a fetch"). Workers send
``to_json()`` in ``workeroutput``; the controller ``merge``s them.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

__all__ = ["STATUSES", "Stats", "human_size", "is_mirror"]


def human_size(nbytes: float | None) -> str:
    """``1.5 MiB``: the one size format of the summary, the report and the CLI (``-``: unknown)."""
    if nbytes is None:
        return "-"
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


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
        "source": None,
    }


def is_mirror(source: str | None) -> bool:
    """A ``source`` naming a mirror (not the cache, the hub or nothing)."""
    return source not in (None, "cache", "hub")


@dataclass
class Stats:
    """Per-checkpoint records plus hashing totals for the summary line."""

    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    hashed_bytes: int = 0
    hash_seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    _events: Counter[str] = field(default_factory=Counter, repr=False, compare=False)

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
        source: str | None = None,
    ) -> None:
        """Note an event; the strongest status seen for ``name`` wins (with its source)."""
        with self._lock:
            self._events[name] += 1
            rec = self.records.setdefault(name, _blank(name))
            current = rec["status"]
            if current is None or _RANK[status] <= _RANK[current]:
                rec["status"] = status
                if reason is not None or status in ("downloaded", "cached"):
                    rec["reason"] = reason
                if source is not None:
                    rec["source"] = source
            rec["bytes"] += nbytes
            rec["seconds"] += seconds
            for key, value in (("sha256", sha256), ("commit", commit), ("size", size)):
                if value is not None:
                    rec[key] = value

    @contextmanager
    def attempt(self, name: str) -> Iterator[None]:
        """Resolve ``name`` inside: if something stops it before it records an outcome
        (a test timeout, Ctrl-C, ``pytest.exit``), record it as ``failed``, saying what."""
        before = self._events[name]
        try:
            yield
        except BaseException as exc:
            if self._events[name] == before:
                text = str(exc).strip().splitlines()
                what = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
                self.record(name, "failed", reason=f"interrupted before it finished ({what})")
            raise

    def add_received(self, received: Mapping[str, int]) -> None:
        """Fold in the bytes transfers actually received per checkpoint (a transfer cut
        short records nothing else): a checkpoint with no outcome yet is ``failed``."""
        for name, nbytes in received.items():
            rec = self.records.get(name)
            if rec is None or rec["status"] is None:
                reason = "the download stopped before it finished (the test or the run ended)"
                self.record(name, "failed", nbytes=nbytes, reason=reason)
            elif nbytes > rec["bytes"]:
                rec["bytes"] = nbytes

    def fill(self, name: str, **known: Any) -> None:
        """Set ``sha256``, ``commit`` or ``size`` of ``name`` where they are still unknown."""
        rec = self.records.get(name)
        if rec is None:
            return
        for key, value in known.items():
            if rec.get(key) is None and value is not None:
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
                source=rec.get("source"),
            )
        self.hashed_bytes += int(data.get("hashed_bytes", 0))
        self.hash_seconds += float(data.get("hash_seconds", 0.0))

    def report_rows(self) -> list[dict[str, Any]]:
        """The ``checkpoints`` list of the JSON report, sorted by name."""
        keys = (
            "name",
            "status",
            "source",
            "sha256",
            "commit",
            "bytes",
            "size",
            "seconds",
            "reason",
        )
        return [
            {k: (round(r[k], 3) if k == "seconds" else r.get(k)) for k in keys}
            for _, r in sorted(self.records.items())
            if r["status"] is not None
        ]

    @property
    def empty(self) -> bool:
        return not any(r["status"] for r in self.records.values())
