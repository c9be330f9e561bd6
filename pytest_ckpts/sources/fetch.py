"""Fetch a manifest entry's bytes from the first mirror that has them, verified as they stream.

Mirrors are untrusted (docs/mirrors.md "What happens on a fetch"): the sha256 of the manifest decides. For each
mirror in order:

- a missing object moves on quietly;
- a mirror that refuses (401/403, a backend not installed) or cannot be reached is
  remembered for the run in the :class:`~pytest_ckpts.retry.RunState` (every process of
  the run skips it from then on) and the next source is tried;
- transient failures (429, 5xx, resets, read timeouts) are retried with backoff within
  the run's :class:`~pytest_ckpts.retry.RetryBudget`, as the hub's are;
- bytes whose sha256 is not the manifest's are discarded with one warning per mirror
  per run, and the next source is tried.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .._transfer import _cache_error as cache_error
from ..errors import CacheError, MirrorKind, MirrorUnavailable
from ..retry import RetryBudget, RunState, backoff_delay
from .backends import Backend, backend_for
from .template import Mirror, parse_mirror

if TYPE_CHECKING:
    from ..manifest import CheckpointSpec

__all__ = ["Fetched", "MirrorSet"]

logger = logging.getLogger("pytest_ckpts")

T = TypeVar("T")

#: Attempts per request, whatever the budget says (a hot loop never runs).
MAX_ATTEMPTS = 5


@dataclass(frozen=True)
class Fetched:
    """Bytes a mirror delivered into ``path``, already hashed and matching the manifest."""

    mirror: Mirror
    path: Path
    sha256: str
    nbytes: int
    seconds: float


def hash_stream(chunks: Iterable[bytes]) -> tuple[str, int]:
    """(sha256, bytes) of a stream that is only read (``mirror verify``)."""
    digest = hashlib.sha256()
    nbytes = 0
    for chunk in chunks:
        digest.update(chunk)
        nbytes += len(chunk)
    return digest.hexdigest(), nbytes


class FileHasher:
    """Hashes a file while another thread writes it: ``advance(n)`` says ``n`` more bytes
    are in place (in order); :meth:`finish` returns (sha256, bytes).

    It reads back what is in the file (from the page cache), so the hash is of the bytes
    that will be renamed into the cache, whatever wrote them: an in-kernel copy, s3fs,
    an HTTP stream. Copying and hashing overlap: the cost is the slower of the two.
    Bytes a writer reports before its buffer reaches the file are waited for; after
    :meth:`finish` (the writer has closed the file) a short file is an error.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._ready = 0
        self._done = False
        self._failed: BaseException | None = None
        self._digest = hashlib.sha256()
        self._read = 0
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="pytest-ckpts-hash", daemon=True)
        self._thread.start()

    def advance(self, n: int) -> None:
        with self._cond:
            self._ready += n
            self._cond.notify()

    def _run(self) -> None:
        buffer = memoryview(bytearray(1 << 22))
        f = None
        closed = False
        try:
            while True:
                with self._cond:
                    while self._ready <= self._read and not self._done:
                        self._cond.wait()
                    target = self._ready
                    if target <= self._read:
                        return
                if f is None:
                    f = open(self._path, "rb")  # noqa: SIM115 - closed below
                while self._read < target:
                    n = f.readinto(buffer[: min(len(buffer), target - self._read)])
                    if not n:  # still in the writer's buffer: wait for a flush or the close
                        if closed:
                            raise OSError(f"{self._path} is shorter than what was written")
                        with self._cond:
                            closed = self._done  # closed: one more read sees everything
                            if not closed:
                                self._cond.wait(0.01)
                        continue
                    self._digest.update(buffer[:n])
                    self._read += n
        except BaseException as exc:  # reported by finish()
            self._failed = exc
        finally:
            if f is not None:
                f.close()

    def finish(self, *, check: bool = True) -> tuple[str, int]:
        """Stop after the bytes announced (the writer has closed the file); ``check=False``
        on a failed transfer: the temp file is discarded, only the thread must end."""
        with self._cond:
            self._done = True
            if not check:
                self._ready = self._read
            self._cond.notify()
        self._thread.join()
        if check and self._failed is not None:
            raise self._failed
        return self._digest.hexdigest(), self._read


@dataclass
class MirrorSet:
    """The run's mirrors, in order, with what the run learned about each."""

    mirrors: tuple[Mirror, ...]
    budget: RetryBudget = field(default_factory=lambda: RetryBudget(60.0))
    run_state: RunState = field(default_factory=RunState)
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    sleep: Callable[[float], None] = time.sleep
    _backends: dict[str, Backend] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def parse(cls, templates: Iterable[str], *, source: str, **kwargs: Any) -> MirrorSet:
        """``ValueError`` naming ``source`` for a bad template."""
        return cls(tuple(parse_mirror(t, source=source) for t in templates), **kwargs)

    def __bool__(self) -> bool:
        return bool(self.mirrors)

    # ------------------------------------------------------------------ policy
    def backend(self, mirror: Mirror) -> Backend:
        with self._lock:
            found = self._backends.get(mirror.key)
            if found is None:
                found = backend_for(
                    mirror, connect_timeout=self.connect_timeout, read_timeout=self.read_timeout
                )
                self._backends[mirror.key] = found
            return found

    def dead(self, mirror: Mirror) -> str | None:
        """Why ``mirror`` is not asked again in this run, if so."""
        return self.run_state.failure(mirror.key)

    def _give_up(self, mirror: Mirror, exc: MirrorUnavailable) -> None:
        if self.dead(mirror) is None:
            logger.warning(
                "pytest-ckpts: %s; not asked again in this run (next source: the following "
                "mirror or the hub)",
                exc.text,
            )
            self.run_state.mark_failed(mirror.key, exc.text)

    def attempt(self, mirror: Mirror, call: Callable[[Backend], T]) -> T:
        """``call(backend)`` under the retry policy; ``MirrorUnavailable`` when it gives up."""
        attempt = 0
        while True:
            reason = self.dead(mirror)
            if reason is not None:
                gone = "not asked again in this run"
                raise MirrorUnavailable(MirrorKind.UNREACHABLE, mirror.label, gone, text=reason)
            try:
                return call(self.backend(mirror))
            except MirrorUnavailable as exc:
                if exc.kind is MirrorKind.MISSING:
                    raise
                if exc.kind is not MirrorKind.TRANSIENT:
                    self._give_up(mirror, exc)
                    raise
                wait = exc.retry_after if exc.retry_after is not None else backoff_delay(attempt)
                wait = max(wait, backoff_delay(0) / 2)
                if attempt + 1 >= MAX_ATTEMPTS or not self.budget.take(wait):
                    spent = f"{exc.problem} (retry budget spent)"
                    self._give_up(mirror, MirrorUnavailable(exc.kind, exc.mirror, spent))
                    raise
                logger.info("pytest-ckpts: %s; retrying in %.1fs", exc.text, wait)
                self.sleep(wait)
                attempt += 1

    def _warn_mismatch(self, mirror: Mirror, spec: CheckpointSpec, actual: str) -> None:
        key = f"{mirror.key}:mismatch"
        if self.run_state.mismatch(key) is None:
            self.run_state.mark_mismatch(key, spec.name)
            logger.warning(
                "pytest-ckpts: mirror %s served bytes for '%s' whose sha256 is %s, not the "
                "manifest's %s; discarded, trying the next source (warned once per run)",
                mirror.label,
                spec.name,
                actual,
                spec.sha256,
            )

    def url(self, mirror: Mirror, spec: CheckpointSpec) -> str | None:
        try:
            return mirror.url(spec)
        except ValueError as exc:
            logger.warning("%s", exc)
            return None

    # ------------------------------------------------------------------ reads
    def fetch(self, spec: CheckpointSpec, tmp: Path) -> Fetched | None:
        """Stream ``spec``'s file from the first mirror that has the right bytes into ``tmp``."""
        if spec.sha256 is None:
            return None
        for mirror in self.mirrors:
            url = self.url(mirror, spec)
            if url is None or self.dead(mirror) is not None:
                continue
            started = time.perf_counter()

            def copy(backend: Backend, url: str = url) -> tuple[str, int]:
                hasher = FileHasher(tmp)
                try:
                    backend.download(url, tmp, hasher.advance)
                except OSError as exc:
                    hasher.finish(check=False)
                    if isinstance(exc, CacheError):
                        raise
                    raise cache_error(spec, tmp, exc, None) from None
                except BaseException:
                    hasher.finish(check=False)
                    raise
                return hasher.finish()

            try:
                actual, nbytes = self.attempt(mirror, copy)
            except MirrorUnavailable as exc:
                tmp.unlink(missing_ok=True)
                logger.debug("pytest-ckpts: '%s' not from %s", spec.name, exc.text)
                continue
            except (CacheError, BaseException):
                tmp.unlink(missing_ok=True)
                raise
            if actual != spec.sha256:
                tmp.unlink(missing_ok=True)
                self._warn_mismatch(mirror, spec, actual)
                continue
            return Fetched(mirror, tmp, actual, nbytes, time.perf_counter() - started)
        return None

    def read_range(self, spec: CheckpointSpec, begin: int, end: int) -> tuple[bytes, Mirror] | None:
        """Bytes ``[begin, end)`` of ``spec``'s file from the first mirror that has it
        (unverified: the caller checks them against the tensor index)."""
        for mirror in self.mirrors:
            url = self.url(mirror, spec)
            if url is None or spec.sha256 is None or self.dead(mirror) is not None:
                continue

            def ranged(backend: Backend, url: str = url) -> bytes:
                return backend.read_range(url, begin, end)

            try:
                data = self.attempt(mirror, ranged)
            except MirrorUnavailable:
                continue
            return data, mirror
        return None
