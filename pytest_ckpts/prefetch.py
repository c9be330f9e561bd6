"""Fetch the checkpoints a run needs in the background while its tests run.

After collection the plugin hands the names the selected tests need, in order of first
use, to a :class:`Prefetcher`: N threads (``--ckpts-prefetch N``) resolve them through
the run's store, so a test waits only for its own checkpoints. The per-file lock of the
store still guarantees one download per file across threads and processes.

Events (downloads, verifications) happen in worker threads; they are recorded and
replayed on the main thread when a test asks for that checkpoint, so pytest hooks and
the summary see exactly what they would without prefetch, and a failure reaches the
test as the same exception, hence the same skip or error.

What needs no thread gets none: pinned entries whose stamp vouches for their file are
resolved on the main thread when the prefetcher starts (a ``stat`` and a look-up in the
stamp log each, no lock, no network) and handed out the same way; only the others go
to the pool, so a warm run starts no thread and pays no hand-over per checkpoint.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import CheckpointsError

if TYPE_CHECKING:
    from .checkpoint import Checkpoint
    from .manifest import CheckpointSpec
    from .store import Store

__all__ = ["Prefetcher"]


class _Recorder:
    """An observer that queues events for replay on the main thread."""

    def __init__(self) -> None:
        self.events: list[tuple[str, tuple[Any, ...]]] = []

    def on_download(self, spec: CheckpointSpec, path: Path, nbytes: int, seconds: float) -> None:
        self.events.append(("on_download", (spec, path, nbytes, seconds)))

    def on_verify(
        self, spec: CheckpointSpec, path: Path, sha256: str, ok: bool, seconds: float
    ) -> None:
        self.events.append(("on_verify", (spec, path, sha256, ok, seconds)))

    def on_resolve(self, spec: CheckpointSpec, checkpoint: Checkpoint) -> None:
        self.events.append(("on_resolve", (spec, checkpoint)))


class Prefetcher:
    """Resolves ``specs`` with ``workers`` threads; :meth:`result` waits for one of them."""

    def __init__(self, store: Store, specs: list[CheckpointSpec], *, workers: int) -> None:
        self._store = store
        self._futures: dict[str, Future[tuple[Checkpoint, _Recorder]]] = {}
        self._replayed: set[str] = set()
        # Decided here, on the main thread: a pinned entry whose stamp vouches for its
        # file is resolved at once (a stat and a stamp look-up, what a thread would do);
        # the pool gets only the rest, and a warm run starts no thread at all.
        self._warm: dict[str, tuple[Checkpoint, _Recorder]] = {}
        recorder = _Recorder()
        quiet = dataclasses.replace(store, observer=recorder)
        self.pending: list[CheckpointSpec] = []
        for spec in specs:
            try:
                ckpt = quiet.resolve_warm(spec)
            except (CheckpointsError, OSError):  # raised again where a test asks for it
                ckpt = None
            if ckpt is None:
                self.pending.append(spec)
                continue
            self._warm[spec.name] = (ckpt, recorder)  # replayed when a test asks
            recorder = _Recorder()
            quiet.observer = recorder
        self._pool: ThreadPoolExecutor | None = None
        if self.pending:
            pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ckpts-prefetch")
            self._pool = pool
            for spec in self.pending:  # submission order is order of first use
                self._futures[spec.name] = pool.submit(self._fetch, spec)

    def _fetch(self, spec: CheckpointSpec) -> tuple[Checkpoint, _Recorder]:
        recorder = _Recorder()
        store = dataclasses.replace(self._store, observer=recorder)
        try:
            return store.resolve(spec), recorder
        except BaseException as exc:
            exc.__dict__["_ckpts_events"] = recorder
            raise

    def result(self, name: str, store: Store) -> Checkpoint:
        """The prefetched checkpoint (or its exception); direct resolve if not prefetched."""
        warm = self._warm.pop(name, None)
        if warm is not None:
            _replay(warm[1], store.observer)
            return warm[0]
        future = self._futures.get(name)
        if future is None or name in self._replayed:
            return store.resolve(store.manifest.get(name))
        self._replayed.add(name)
        try:
            ckpt, recorder = future.result()
        except BaseException as exc:
            events = exc.__dict__.get("_ckpts_events")
            if isinstance(events, _Recorder):
                _replay(events, store.observer)
            raise
        _replay(recorder, store.observer)
        return ckpt

    def close(self, observer: Any) -> None:
        """Stop: cancel what has not started, wait for transfers in flight, and report
        what finished but no test asked for (an xdist worker prefetches for the whole
        collection, and other workers may run those tests)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        for _ckpt, events in self._warm.values():
            _replay(events, observer)
        self._warm.clear()
        for name, future in self._futures.items():
            if name in self._replayed or future.cancelled():
                continue
            self._replayed.add(name)
            exc = future.exception()
            if exc is None:
                _replay(future.result()[1], observer)
            elif isinstance(exc.__dict__.get("_ckpts_events"), _Recorder):
                _replay(exc.__dict__["_ckpts_events"], observer)


def _replay(recorder: _Recorder, observer: Any) -> None:
    for method, args in recorder.events:
        handler: Callable[..., None] = getattr(observer, method)
        handler(*args)
