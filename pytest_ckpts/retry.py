"""How long to keep asking a hub, and what a run remembers about it.

A *retry budget* is the total number of seconds one process may spend on retries in a
run (docs/how-to/ci.md "Retries and the retry budget"): transient failures (429, 5xx, resets, cut
bodies, read timeouts) are retried with exponential backoff and jitter, honouring
``Retry-After`` (or, on a 429 without it, the reset the ``RateLimit`` header names),
until the budget is spent. Every retry costs the budget its wall time (the wait and the
failed request) and at least the backoff floor, even when the hub says ``Retry-After:
0``; a request is tried at most :data:`MAX_ATTEMPTS` times. A wait the hub asks for
that is longer than what is left fails at once and says so.

The *run state* is a small JSON file per run under the cache (``.ckpts/runs/<run id>``):
once an endpoint is found unreachable, or a process spends its budget on it, every other
process of the run (xdist workers) reads that and fails at once instead of waiting again.
"""

from __future__ import annotations

import json
import math
import os
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import Kind

__all__ = [
    "MAX_ATTEMPTS",
    "TRANSIENT_STATUS",
    "Failure",
    "RetryBudget",
    "RunState",
    "backoff_delay",
    "classify_exception",
    "classify_response",
    "give_up_hint",
    "parse_retry_after",
    "ratelimit_reset",
]

#: HTTP statuses worth asking again (rate limits and server trouble).
TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})

#: First wait and cap of one backoff step (seconds), before jitter.
BASE_DELAY = 0.5
MAX_DELAY = 8.0

#: Attempts of one request at most (the first and its retries), whatever the budget.
MAX_ATTEMPTS = 10


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    import email.utils  # here: ~5-20 ms (datetime, calendar, locale), only for a date

    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    current = time.time() if now is None else now
    return max(0.0, float(when.timestamp()) - current)


def ratelimit_reset(headers: Any) -> float | None:
    """Seconds until the rate-limit window resets, from the Hub's ``RateLimit`` header
    (``"api";r=0;t=55``), parsed by huggingface_hub's public ``parse_ratelimit_headers``."""
    try:
        from huggingface_hub.utils import parse_ratelimit_headers  # type: ignore[attr-defined]
    except ImportError:  # a huggingface_hub without it: Retry-After and backoff only
        return None
    info = parse_ratelimit_headers({str(k): str(v) for k, v in headers.items()})
    return None if info is None else float(info.reset_in_seconds)


def backoff_delay(
    attempt: int,
    *,
    base: float = BASE_DELAY,
    cap: float | None = MAX_DELAY,
    rng: random.Random | None = None,
) -> float:
    """Exponential backoff with jitter: a random wait in [d/2, d], d = base * 2^attempt
    (at most ``cap``). Half of every step is a floor (no retry is free), the other half
    is random (processes that failed together do not retry together). The one formula
    of the project: hub requests and MLflow uploads both use it."""
    delay = base * (2.0 ** min(attempt, 62))
    if cap is not None:
        delay = min(cap, delay)
    return delay / 2 + (rng or random).random() * delay / 2


@dataclass
class RetryBudget:
    """Seconds this process may still spend on retries, for the whole run."""

    total: float
    spent: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.total) and self.total >= 0):
            raise ValueError(
                f"a retry budget is a finite number of seconds >= 0, not {self.total!r}"
            )

    @property
    def left(self) -> float:
        return max(0.0, self.total - self.spent)

    def take(self, seconds: float) -> bool:
        """Reserve ``seconds``; False (nothing reserved) when that is more than is left."""
        with self._lock:
            if seconds > self.total - self.spent:
                return False
            self.spent += seconds
            return True

    def charge(self, seconds: float) -> None:
        """Record ``seconds`` already spent beyond what was reserved (a wait that overran)."""
        if seconds > 0:
            with self._lock:
                self.spent += seconds


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
    """How a request failed (docs/how-to/ci.md "Retries and the retry budget")."""

    kind: Kind
    status: int | None
    text: str
    retry_after: float | None = None  # seconds the hub asked to wait
    asked_by: str = "Retry-After"  # the header that asked: Retry-After or RateLimit
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
        asked_by = "Retry-After"
        if status == 429:
            text += " (rate-limited: authenticated requests get higher limits; set HF_TOKEN)"
            if retry_after is None:
                retry_after, asked_by = ratelimit_reset(response.headers), "RateLimit"
        return Failure(Kind.TRANSIENT, status, text, retry_after, asked_by, code or None)
    return Failure(Kind.PERMANENT, status, text, code=code or None)


def give_up_hint(failure: Failure, budget: RetryBudget, *, attempts: int, capped: bool) -> str:
    """Why retrying stopped, and how long the hub asked to wait (the setting that changes
    the budget is the error's fix, in each front end's words)."""
    left = budget.left
    asked = failure.retry_after
    said = f"the hub asked to wait {asked:.0f}s ({failure.asked_by})" if asked is not None else ""
    if capped:
        hint = f"gave up after {attempts} attempts, the most for one request"
    elif asked is not None and asked > left:
        hint = f"{said}, more than the {left:.0f}s left of the retry budget"
    else:
        hint = f"gave up after {attempts} attempts: the retry budget of {budget.total:g}s is spent"
    return hint + (f"; {said}" if said and said not in hint else "")
