"""How long to keep asking a hub, and what a run remembers about it.

A *retry budget* is the total number of seconds one process may spend waiting between
attempts in a run (README "Retries and the retry budget"): transient failures (429,
5xx, resets, cut bodies, read timeouts) are retried with exponential backoff and jitter,
honouring ``Retry-After``, until the budget is spent. A ``Retry-After`` longer than what
is left fails at once and says so.

The *run state* is a small JSON file per run under the cache (``.ckpts/runs/<run id>``):
once an endpoint is found unreachable, or a process spends its budget on it, every other
process of the run (xdist workers) reads that and fails at once instead of waiting again.
"""

from __future__ import annotations

import email.utils
import json
import os
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import Kind

__all__ = [
    "TRANSIENT_STATUS",
    "Failure",
    "RetryBudget",
    "RunState",
    "backoff_delay",
    "classify_exception",
    "classify_response",
    "parse_retry_after",
]

#: HTTP statuses worth asking again (rate limits and server trouble).
TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})

#: First wait and cap of one backoff step (seconds), before jitter.
BASE_DELAY = 0.5
MAX_DELAY = 8.0


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    current = time.time() if now is None else now
    return max(0.0, float(when.timestamp()) - current)


def backoff_delay(attempt: int, *, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: a random wait in [d/2, d], d = 0.5 s * 2^n."""
    delay = min(MAX_DELAY, BASE_DELAY * (2.0**attempt))
    return delay / 2 + (rng or random).random() * delay / 2


@dataclass
class RetryBudget:
    """Seconds this process may still spend waiting between attempts, for the whole run."""

    total: float
    spent: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def left(self) -> float:
        return max(0.0, self.total - self.spent)

    def take(self, seconds: float) -> bool:
        """Reserve ``seconds`` of waiting; False (nothing reserved) when that is too much."""
        with self._lock:
            if seconds > self.total - self.spent:
                return False
            self.spent += seconds
            return True

    def sleep(self, seconds: float) -> bool:
        """Wait ``seconds`` if the budget allows; False at once when it does not."""
        if not self.take(seconds):
            return False
        time.sleep(seconds)
        return True


@dataclass
class RunState:
    """What every process of one run knows about endpoints: a JSON file, shared by path.

    ``path`` is None for a run that shares nothing (a plain library call): then the
    record lives in memory only. Writes are atomic (temp file + rename) under a lock
    file, and reads are cheap (one ``stat`` when nothing changed).
    """

    path: Path | None = None
    _data: dict[str, dict[str, str]] = field(default_factory=dict, repr=False)
    _seen: tuple[int, int] | None = field(default=None, repr=False)

    def _load(self) -> None:
        if self.path is None:
            return
        try:
            st = self.path.stat()
        except OSError:
            return
        key = (st.st_mtime_ns, st.st_size)
        if key == self._seen:
            return
        try:
            data = json.loads(self.path.read_text("utf-8"))
        except (OSError, ValueError):
            return
        if isinstance(data, dict):
            self._data = {k: dict(v) for k, v in data.items() if isinstance(v, dict)}
            self._seen = key

    def failure(self, endpoint: str) -> str | None:
        """Why ``endpoint`` must not be asked again in this run, if it must not."""
        self._load()
        return self._data.get("dead", {}).get(endpoint)

    def mark_failed(self, endpoint: str, reason: str) -> None:
        """Record that ``endpoint`` is not worth asking again in this run."""
        self._record("dead", endpoint, reason)

    def mismatch(self, key: str) -> str | None:
        """A checksum mismatch already found for ``key`` in this run (not downloaded again)."""
        self._load()
        return self._data.get("mismatch", {}).get(key)

    def mark_mismatch(self, key: str, message: str) -> None:
        self._record("mismatch", key, message)

    def _record(self, section: str, key: str, value: str) -> None:
        if self.path is None:
            self._data.setdefault(section, {})[key] = value
            return
        from filelock import FileLock

        from .integrity import atomic_write_text

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(self.path) + ".lock", timeout=10):
                self._seen = None
                self._load()
                self._data.setdefault(section, {})[key] = value
                atomic_write_text(self.path, json.dumps(self._data, sort_keys=True))
        except OSError:  # read-only cache: this process still remembers
            self._data.setdefault(section, {})[key] = value

    def remove(self) -> None:
        """The run is over (called by the process that created the run id)."""
        if self.path is None:
            return
        for p in (self.path, Path(str(self.path) + ".lock")):
            try:
                os.unlink(p)
            except OSError:
                pass


@dataclass
class Failure:
    """How a request failed (README "Retries and the retry budget")."""

    kind: Kind
    status: int | None
    text: str
    retry_after: float | None = None
    code: str | None = None  # the hub's X-Error-Code (RevisionNotFound, EntryNotFound, ...)


def classify_exception(exc: BaseException, *, probing: bool) -> Failure:
    import httpx2

    name = f"{type(exc).__name__}: {exc}".rstrip(": ")
    if isinstance(exc, (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.PoolTimeout)):
        return Failure(Kind.UNREACHABLE, None, name)
    if isinstance(exc, httpx2.TimeoutException):
        kind = Kind.UNREACHABLE if probing else Kind.TRANSIENT
        return Failure(kind, None, f"no answer in time ({name or 'timeout'})")
    if isinstance(exc, (httpx2.TransportError, OSError)):
        return Failure(Kind.TRANSIENT, None, f"connection broken ({name})")
    return Failure(Kind.PERMANENT, None, name)


def classify_response(response: Any) -> Failure:
    status = int(response.status_code)
    code = response.headers.get("X-Error-Code") or ""
    message = response.headers.get("X-Error-Message") or response.reason_phrase or ""
    text = f"HTTP {status}" + (f" {code}" if code else "") + (f": {message}" if message else "")
    if status in TRANSIENT_STATUS:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if status == 429:
            text += " (rate-limited: authenticated requests get higher limits; set HF_TOKEN)"
        return Failure(Kind.TRANSIENT, status, text, retry_after, code or None)
    return Failure(Kind.PERMANENT, status, text, code=code or None)
