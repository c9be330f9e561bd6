"""Fetch the checkpoints a run needs in the background while its tests run.

After collection the plugin hands the names the selected tests need, in order of first
use, to a :class:`Prefetcher`: N threads (``--ckpts-prefetch N``) resolve them through
the run's store, so a test waits only for its own checkpoints. The per-file lock of the
store still guarantees one download per file across threads and processes.

Events (downloads, verifications) happen in worker threads; each fetch returns them
with its result (:class:`Outcome`), and they are replayed on the main thread when a test
asks for that checkpoint, so pytest hooks and the summary see exactly what they would
without prefetch, and a failure reaches the test as the same exception, hence the same
skip or error.

What needs no thread gets none: pinned entries whose stamp vouches for their file are
resolved on the main thread when the prefetcher starts (a ``stat`` and a look-up in the
stamp log each, no lock, no network) and handed out the same way; only the others go
to the threads, so a warm run starts no thread and pays no hand-over per checkpoint.

Prefetch never outlives the tests: :meth:`Prefetcher.close` (the session is ending,
normally or early: ``-x``, ``--maxfail``, Ctrl-C, ``pytest.exit``) stops the transfers
in flight within about a second (:class:`~pytest_ckpts._transfer.TransferStop`). What
they fetched stays as partial files that the next download of those files, in this run
(another xdist worker) or the next, continues with a ``Range`` request. The threads are
daemons: one blocked where a stop cannot reach it (connecting, waiting for another
process's file lock) never holds the process at exit.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._transfer import TransferStop
from .errors import CheckpointsError, TransferStopped

if TYPE_CHECKING:
    from .checkpoint import Checkpoint
    from .manifest import CheckpointSpec
    from .store import Store

__all__ = ["Outcome", "Prefetcher"]

#: Seconds :meth:`Prefetcher.close` waits for stopped transfers to close their files.
STOP_GRACE = 1.0

Event = tuple[str, tuple[Any, ...]]


class _Recorder:
    """An observer that queues events for replay on the main thread."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def on_download(self, spec: CheckpointSpec, path: Path, nbytes: int, seconds: float) -> None:
        self.events.append(("on_download", (spec, path, nbytes, seconds)))

    def on_verify(
        self, spec: CheckpointSpec, path: Path, sha256: str, ok: bool, seconds: float
    ) -> None:
        self.events.append(("on_verify", (spec, path, sha256, ok, seconds)))

    def on_resolve(self, spec: CheckpointSpec, checkpoint: Checkpoint) -> None:
        self.events.append(("on_resolve", (spec, checkpoint)))


@dataclass(frozen=True)
class Outcome:
    """What one background fetch ended with: the checkpoint or the error, and the
    store events it produced (replayed on the main thread)."""

    checkpoint: Checkpoint | None
    error: BaseException | None = None
    events: list[Event] = field(default_factory=list)

    @property
    def stopped(self) -> bool:
        return isinstance(self.error, TransferStopped)

    def replay(self, observer: Any) -> None:
        for method, args in self.events:
            handler: Callable[..., None] = getattr(observer, method)
            handler(*args)


class Prefetcher:
    """Resolves ``specs`` with ``workers`` threads; :meth:`result` waits for one of them."""

    def __init__(self, store: Store, specs: list[CheckpointSpec], *, workers: int) -> None:
        self._stop = TransferStop()
        hub = store.hub
        sleep = self._stop.wait if hub.sleep is time.sleep else hub.sleep
        # the same budget, run state and probe answers; only the stop switch is its own
        self._store = dataclasses.replace(
            store, hub=dataclasses.replace(hub, stop=self._stop, sleep=sleep)
        )
        self._queue: collections.deque[CheckpointSpec] = collections.deque()
        self._futures: dict[str, Future[Outcome]] = {}
        self._replayed: set[str] = set()
        here = dataclasses.replace(self._store)  # one copy; its observer is set per entry
        for spec in specs:  # submission order is order of first use
            if spec.name in self._futures:
                continue
            future: Future[Outcome] = Future()
            self._futures[spec.name] = future
            warm = self._warm(here, spec)
            if warm is None:
                self._queue.append(spec)
            else:
                future.set_running_or_notify_cancel()
                future.set_result(warm)  # replayed when a test asks, like a fetched one
        #: what went to the threads (the rest was decided warm on this thread)
        self.pending: list[CheckpointSpec] = list(self._queue)
        self._threads = [
            threading.Thread(target=self._work, name=f"ckpts-prefetch-{i}", daemon=True)
            for i in range(min(workers, len(self._queue)))
        ]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _warm(store: Store, spec: CheckpointSpec) -> Outcome | None:
        """``spec`` resolved here, on the main thread, when its stamp vouches for its pinned
        file (a ``stat`` and a stamp look-up: what a thread would do); None: a thread's job.
        ``store``: this thread's copy, its events recorded per entry."""
        recorder = _Recorder()
        store.observer = recorder
        try:
            ckpt = store.resolve_warm(spec)
        except (CheckpointsError, OSError):  # raised again where a test asks for it
            return None
        return None if ckpt is None else Outcome(ckpt, None, recorder.events)

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                spec = self._queue.popleft()
            except IndexError:
                return
            future = self._futures[spec.name]
            if future.set_running_or_notify_cancel():
                future.set_result(self._fetch(spec))

    def _fetch(self, spec: CheckpointSpec) -> Outcome:
        recorder = _Recorder()
        store = dataclasses.replace(self._store, observer=recorder)
        try:
            return Outcome(store.resolve(spec), None, recorder.events)
        except BaseException as exc:  # handed to the test that needs it, on the main thread
            return Outcome(None, exc, recorder.events)

    def result(self, name: str, store: Store) -> Checkpoint:
        """The prefetched checkpoint (or its exception); direct resolve if not prefetched."""
        future = self._futures.get(name)
        if future is None or name in self._replayed:
            return store.resolve(store.manifest.get(name))
        self._replayed.add(name)
        if future.cancel():  # not started yet: fetch it here, now
            return store.resolve(store.manifest.get(name))
        outcome = future.result()
        if outcome.stopped:
            return store.resolve(store.manifest.get(name))
        outcome.replay(store.observer)
        if outcome.error is not None:
            raise outcome.error
        assert outcome.checkpoint is not None
        return outcome.checkpoint

    def close(self, observer: Any) -> None:
        """The session is ending: cancel what has not started, stop the transfers in
        flight (their partial files stay), wait up to :data:`STOP_GRACE` seconds for
        them, and report what finished but no test asked for (an xdist worker prefetches
        for the whole collection, and other workers may run those tests)."""
        for future in self._futures.values():
            future.cancel()
        self._stop.set()
        deadline = time.monotonic() + STOP_GRACE
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        for name, future in self._futures.items():
            if name in self._replayed or not future.done() or future.cancelled():
                continue
            self._replayed.add(name)
            outcome = future.result()
            if not outcome.stopped:
                outcome.replay(observer)
