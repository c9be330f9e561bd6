"""The integrity index of one experiment: ``checkpoints/{h}/index.json``.

It records, per step checkpoint, its file, size, sha256 and numeric metrics, so
``latest()``, ``best()`` and ``verify()`` need no directory scan and no tensor
load. It is rewritten atomically under a file lock (``.index.lock`` beside it), so
concurrent savers, threads or processes, cannot lose entries; the lock covers only
rename + index update. Retention lives here too: it edits the index first and
deletes files after, so the index never names a deleted file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

from ..errors import ChecksumMismatchError, ExperimentValueError
from ..integrity import atomic_write_text, calculate_sha256
from .files import Staged, fsync_dir
from .layout import ExperimentLayout

__all__ = ["ExperimentIndex", "IndexEntry", "Retention", "check_mode"]

_FORMAT_VERSION = 1


@dataclass(frozen=True)
class IndexEntry:
    """One step checkpoint as ``index.json`` records it."""

    step: int
    file: str
    sha256: str
    size: int
    metrics: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IndexEntry:
        """An entry from its JSON form (or from a dict ``latest()`` returned)."""
        return cls(
            step=int(data["step"]),
            file=str(data["file"]),
            sha256=str(data["sha256"]),
            size=int(data["size"]),
            metrics={str(k): float(v) for k, v in dict(data.get("metrics") or {}).items()},
        )

    def as_dict(self) -> dict[str, Any]:
        """The JSON form, which is also what the public API returns (a fresh dict)."""
        return {
            "step": self.step,
            "file": self.file,
            "sha256": self.sha256,
            "size": self.size,
            "metrics": dict(self.metrics),
        }


def check_mode(mode: str) -> str:
    if mode not in ("min", "max"):
        raise ExperimentValueError(f"pytest-ckpts: mode must be 'min' or 'max', got {mode!r}")
    return mode


@dataclass(frozen=True)
class Retention:
    """Which step checkpoints a save keeps: the newest ``keep_last``, the best ``keep_best``."""

    keep_last: int | None = None
    keep_best: int | None = None
    metric: str | None = None
    mode: str = "min"

    def __post_init__(self) -> None:
        check_mode(self.mode)
        for label, n in (("keep_last", self.keep_last), ("keep_best", self.keep_best)):
            if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
                raise ExperimentValueError(
                    f"pytest-ckpts: {label} must be a positive int, got {n!r}"
                )
        if self.keep_best is not None and self.metric is None:
            raise ExperimentValueError(
                "pytest-ckpts: keep_best needs best_metric= to rank checkpoints by"
            )

    def split(self, entries: list[IndexEntry]) -> tuple[list[IndexEntry], list[IndexEntry]]:
        """(kept, dropped). The latest is always kept, and so is the best by ``metric``
        when there is one (``keep_best`` or not), so no setting can delete what
        ``latest()`` or ``best()`` would name."""
        if (self.keep_last is None and self.keep_best is None) or not entries:
            return entries, []
        ordered = sorted(entries, key=lambda e: e.step)
        keep = {ordered[-1].step}
        if self.keep_last is not None:
            keep.update(e.step for e in ordered[-self.keep_last :])
        if self.metric is not None:
            ranked = rank(entries, self.metric, self.mode)
            keep.update(e.step for e in ranked[: max(1, self.keep_best or 0)])
        return [e for e in entries if e.step in keep], [e for e in entries if e.step not in keep]


def rank(entries: Iterable[IndexEntry], metric: str, mode: str) -> list[IndexEntry]:
    """Entries that have ``metric``, best first; ties go to the later step.

    ``best()`` and retention share this order, so retention can never delete the
    checkpoint ``best()`` names.
    """
    sign = 1.0 if mode == "min" else -1.0
    scored = [e for e in entries if metric in e.metrics]
    return sorted(scored, key=lambda e: (sign * e.metrics[metric], -e.step))


class ExperimentIndex:
    """Reads, updates and verifies the index of experiment ``h`` under ``layout``."""

    def __init__(self, layout: ExperimentLayout, h: str) -> None:
        self.layout = layout
        self.h = h
        self.path = layout.index_file(h)
        self._lock: FileLock | None = None

    def lock(self) -> FileLock:
        """The index lock, one instance per index so a holder may take it again.

        It is held only for rename + index update (milliseconds), so the timeout is
        a deadlock guard, not a wait budget for another process's tensor write.
        """
        if self._lock is None:
            self.layout.exp_dir(self.h).mkdir(parents=True, exist_ok=True)
            self._lock = FileLock(str(self.layout.lock_file(self.h)), timeout=60)
        return self._lock

    def _read(self) -> tuple[dict[str, Any], list[IndexEntry]]:
        try:
            raw: dict[str, Any] = json.loads(self.path.read_text("utf-8"))
        except FileNotFoundError:
            return {"format_version": _FORMAT_VERSION, "exp_hash": self.h}, []
        except ValueError as exc:
            raise ExperimentValueError(
                f"pytest-ckpts: unreadable checkpoint index {self.path}: {exc}"
            ) from exc
        try:
            return raw, [IndexEntry.from_dict(e) for e in raw["checkpoints"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ExperimentValueError(
                f"pytest-ckpts: unreadable checkpoint index {self.path}: bad or missing "
                f"{exc}; delete it and run verify() to list the step files it covered"
            ) from exc

    def entries(self) -> list[IndexEntry]:
        """Every entry, oldest step first."""
        return self._read()[1]

    def next_step(self) -> int:
        """The step after the latest (0 for an empty index); hold :meth:`lock` meanwhile."""
        return max((e.step for e in self.entries()), default=-1) + 1

    def latest(self) -> IndexEntry | None:
        entries = self.entries()
        return max(entries, key=lambda e: e.step) if entries else None

    def best(self, metric: str, mode: str) -> IndexEntry | None:
        ranked = rank(self.entries(), metric, check_mode(mode))
        return ranked[0] if ranked else None

    def commit(
        self, staged: Staged, step: int, metrics: dict[str, float], policy: Retention
    ) -> Path:
        """Rename ``staged`` into place, index it and apply ``policy``, under the lock."""
        with self.lock():
            try:
                raw, entries = self._read()
                os.replace(staged.tmp, staged.target)
            except BaseException:
                staged.tmp.unlink(missing_ok=True)
                raise
            fsync_dir(staged.target.parent)
            entry = IndexEntry(step, staged.target.name, staged.sha256, staged.size, metrics)
            entries = sorted([e for e in entries if e.step != step] + [entry], key=lambda e: e.step)
            kept, removed = policy.split(entries)
            raw["checkpoints"] = [e.as_dict() for e in kept]
            # index first: it never names a deleted file
            atomic_write_text(self.path, json.dumps(raw, indent=2, sort_keys=True) + "\n")
            for e in removed:
                self.file_of(e).unlink(missing_ok=True)
        return staged.target

    def file_of(self, entry: IndexEntry) -> Path:
        return self.layout.model_dir(self.h) / entry.file

    def check(self, entry: IndexEntry, *, rehash: bool = True) -> str | None:
        """What is wrong with the file ``entry`` names (None: size and sha256 match).

        ``rehash=False`` compares the size only, without reading the file.
        """
        path = self.file_of(entry)
        if not path.is_file():
            return f"{entry.file}: missing ({path})"
        size = path.stat().st_size
        if size != entry.size:
            return f"{entry.file}: size {size} does not match index {entry.size}"
        if not rehash:
            return None
        actual = calculate_sha256(path)
        if actual != entry.sha256:
            return f"{entry.file}: sha256 {actual} does not match index {entry.sha256}"
        return None

    def check_or_raise(self, entry: IndexEntry) -> Path:
        """The entry's file, or ``ChecksumMismatchError`` if it changed since it was saved."""
        path = self.file_of(entry)
        problem = self.check(entry)
        if problem is not None:
            raise ChecksumMismatchError(
                f"pytest-ckpts: Checksum mismatch for checkpoint {path}: {problem}; "
                "the file changed after it was saved (index.json records what was written)",
                path=path,
                expected=entry.sha256,
            )
        return path

    def problems(self, *, strict: bool) -> list[str]:
        """Indexed files that are missing or changed, and step files the index omits."""
        d = self.layout.exp_dir(self.h)
        if not d.is_dir():
            problems = [f"experiment directory missing: {d}"]
        else:
            model_dir = self.layout.model_dir(self.h)
            with self.lock():  # a consistent snapshot of index and directory
                entries = self.entries()
                on_disk = (
                    {p.name for p in model_dir.glob(self.layout.step_glob(self.h))}
                    if model_dir.is_dir()
                    else set()
                )
            problems = [p for p in map(self.check, entries) if p]
            indexed = {e.file for e in entries}
            problems += [
                f"{name}: not in index.json (a save interrupted before its index update?)"
                for name in sorted(on_disk - indexed)
            ]
        if problems and strict:
            raise ChecksumMismatchError(
                f"pytest-ckpts: Checksum mismatch in experiment {self.h} ({d}):\n  "
                + "\n  ".join(problems),
                path=d,
            )
        return problems
