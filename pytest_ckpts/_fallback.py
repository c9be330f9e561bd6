"""The store's answers when the hub cannot be asked: stale copies, offline and
read-only caches, and checksum mismatches (a mixin of :class:`~pytest_ckpts.store.Store`,
kept apart so each class stays one job: resolving here, the fallbacks there).

This module knows nothing of pytest.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ._text import duration
from ._transfer import blocked_dir_error
from .cache import Stamp
from .checkpoint import Checkpoint
from .errors import (
    CacheError,
    CheckpointDownloadError,
    CheckpointSkipped,
    ChecksumMismatchError,
    Fix,
)
from .manifest import CheckpointSpec, is_pinned
from .settings import Mode

__all__ = ["StaleSupport", "lock_wait_error", "mismatch_error", "mismatch_fixes"]


if TYPE_CHECKING:
    from .errors import LockTimeout
    from .store import Store

logger = logging.getLogger("pytest_ckpts")


class StaleSupport:
    """Base of ``Store``: what it serves when it cannot download (docs/explanation/verification.md
    "Stale copies"), and how a mismatch is raised and remembered for the run."""

    def _resolve_offline(self, spec: CheckpointSpec) -> Checkpoint:
        store = cast("Store", self)
        commit = store.layout.cached_commit(spec)
        path = store.snapshot_path(spec, commit) if commit else None
        if commit is None or path is None or not path.exists():
            fixes = (store.run_fix("fetch", spec.name), Fix.set("mode", Mode.AUTO.value))
            raise CheckpointSkipped.not_cached(spec.name, store.layout.root, fixes=fixes)
        ready = store._fast_path(spec, path, commit)
        if ready is not None:
            return ready
        return store._verify_cached(spec, path, commit, "cached copy; offline, not re-downloaded")

    def _stale(self, spec: CheckpointSpec, exc: CheckpointDownloadError) -> Checkpoint | None:
        """The cached copy to use when the hub cannot be asked (down, or the budget spent).

        A branch falls back to the commit it last resolved to, a pinned entry to its
        commit's snapshot. A copy no stamp vouches for (a cache restored by a copy: new
        inodes and ctimes) is hashed once here: served when it matches, a mismatch when
        it does not (docs/explanation/verification.md "Stale copies": never a skip).
        """
        store = cast("Store", self)
        if not exc.hub_down:
            return None
        commit = store.layout.cached_commit(spec)
        if commit is None:
            return None
        path = store.snapshot_path(spec, commit)
        if not path.exists():
            return None
        cause = exc.cause or exc.summary
        stamp = store._trusted(spec, path) or store._verified_copy(spec, path, cause)
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp.verified_at))
        store.stale_reasons[spec.name] = (
            f"stale: commit {commit[:12]} verified {when}; hub failed: {cause}"
        )
        store.stale_errors[spec.name] = exc
        logger.warning(
            "pytest-ckpts: using stale copy of '%s' (%s)", spec.name, store.stale_reasons[spec.name]
        )
        return store._done(spec, path, commit, stamp, "stale")

    def _verified_copy(self, spec: CheckpointSpec, path: Path, cause: str) -> Stamp:
        """Hash a cached copy once (under the file's lock when the cache is writable, so
        xdist workers hash it once between them) and stamp it, or raise the mismatch."""
        store = cast("Store", self)
        from ._lock import acquire
        from .errors import LockTimeout

        lock_path = store.layout.lock_path(spec)
        lock = None
        try:
            lock_path.parent.mkdir(parents=True, exist_ok=True)
            lock = acquire(lock_path, store.lock_timeout)
        except (OSError, LockTimeout):  # read-only cache: nobody else can stamp it either
            pass
        try:
            stamp = store._trusted(spec, path)  # another process hashed it meanwhile
            if stamp is not None:
                return stamp
            store._raise_known_mismatch(spec)
            ok, actual, stamp = store._hash_and_stamp(spec, path)
            if not ok:
                assert store.run_state is not None
                store.run_state.mark_mismatch(store._mismatch_key(spec), f"{path}\0{actual}")
                raise store._mismatch(
                    spec,
                    path,
                    actual,
                    f"cached copy; not downloaded again, the hub failed: {cause}",
                    cached=True,
                )
            return stamp
        finally:
            if lock is not None:
                lock.release()

    def _verify_cached(self, spec: CheckpointSpec, path: Path, commit: str, why: str) -> Checkpoint:
        """Hash a cached copy that cannot be replaced here: hand it out, or the mismatch."""
        store = cast("Store", self)
        ok, actual, stamp = store._hash_and_stamp(spec, path)
        if not ok:
            raise store._mismatch(spec, path, actual, why, cached=True)
        return store._done(spec, path, commit, stamp, "cached")

    def _raise_known_mismatch(self, spec: CheckpointSpec) -> None:
        """A mismatch this run already found is raised again, never downloaded again."""
        store = cast("Store", self)
        assert store.run_state is not None
        known = store.run_state.mismatch(store._mismatch_key(spec))
        if known is not None:
            path, actual = known.split("\0")
            raise store._mismatch(
                spec, Path(path), actual, "found earlier in this run; not downloaded again"
            )

    def _mismatch_key(self, spec: CheckpointSpec) -> str:
        store = cast("Store", self)
        return f"{store.layout.lock_key(spec)}:{spec.sha256}"

    def _mismatch(
        self, spec: CheckpointSpec, path: Path, actual: str, why: str, *, cached: bool = False
    ) -> ChecksumMismatchError:
        """``cached``: the bad bytes are a local copy; a fresh download is the first way out
        (``lock --update`` would record the corrupt hash)."""
        store = cast("Store", self)
        fixes = mismatch_fixes(spec)
        if cached:
            fixes = (
                store.run_fix("fetch", "--force", spec.name, why="to download it again"),
                *fixes,
            )
        return mismatch_error(spec, path, actual, why, store.hub.describe(spec), fixes)

    def _locked(
        self, spec: CheckpointSpec, path: Path, commit: str, force_download: bool
    ) -> Checkpoint:
        store = cast("Store", self)
        from ._lock import acquire
        from .errors import LockTimeout

        lock_path = store.layout.lock_path(spec)
        try:
            try:
                lock = acquire(lock_path, store.lock_timeout)
            except FileNotFoundError:  # first download into this cache
                lock_path.parent.mkdir(parents=True, exist_ok=True)
                lock = acquire(lock_path, store.lock_timeout)
        except LockTimeout as exc:
            raise lock_wait_error(
                spec, f"download '{spec.name}'", store.lock_timeout, exc
            ) from None
        except OSError as exc:  # read-only cache: nobody can write, so no lock is needed
            if path.exists() and not force_download:
                return store._verify_cached(spec, path, commit, "cached copy in a read-only cache")
            blocked = blocked_dir_error(lock_path.parent, spec)  # a dangling symlink?
            if blocked is not None:
                raise blocked from None
            raise CacheError(
                f"pytest-ckpts: cannot download checkpoint '{spec.name}': the cache {store.layout.root} "
                f"is not writable ({exc.strerror or exc}).",
                entry=spec.name,
                cause="cache not writable",
                fixes=(
                    Fix.set("cache_dir", why="(a writable directory)"),
                    store.run_fix("fetch", why="where the cache is writable"),
                ),
            ) from None
        try:
            return store._resolve_locked(spec, path, commit, force_download)
        finally:
            lock.release()

    def may_serve_stale(self, spec: CheckpointSpec, exc: CheckpointDownloadError) -> bool:
        """Whether ``exc`` may be answered from an older verified copy: a branch whose hub
        is down, rate-limited or out of retry budget; never a pinned commit."""
        return not is_pinned(spec.revision) and exc.hub_down

    @staticmethod
    def stale_reason(used: str, exc: CheckpointDownloadError) -> str:
        """How a stale copy is reported: what was ``used`` and why the hub failed."""
        return f"stale: {used}; hub failed: {exc.cause or exc.summary}"

    @contextmanager
    def cache_lock(self, lock_path: Path, spec: CheckpointSpec, doing: str) -> Iterator[bool]:
        """Hold the cross-process lock ``lock_path`` while ``doing`` (for the timeout
        message); yields False, holding nothing, where the cache is read-only (nothing
        will be written there, so nothing needs one)."""
        store = cast("Store", self)
        from ._lock import acquire
        from .errors import LockTimeout

        lock: Any = None
        try:
            lock_path.parent.mkdir(parents=True, exist_ok=True)
            lock = acquire(lock_path, store.lock_timeout)
        except LockTimeout as exc:
            raise lock_wait_error(spec, doing, store.lock_timeout, exc) from None
        except OSError as exc:  # read-only cache
            logger.debug("pytest-ckpts: no lock %s: %s", lock_path, exc)
            lock = None
        try:
            yield lock is not None
        finally:
            if lock is not None:
                lock.release()


def mismatch_fixes(spec: CheckpointSpec) -> tuple[Fix, ...]:
    """The way out of a mismatch of the hub's file: record it, if it is intended."""
    return (Fix.run("lock", "--update", spec.name, why="if the new file is intended"),)


def mismatch_error(
    spec: CheckpointSpec,
    path: Path,
    actual: str,
    why: str,
    source: str,
    fixes: tuple[Fix, ...] | None = None,
) -> ChecksumMismatchError:
    """The one error for bytes that are not the manifest's: never skipped, names the fix."""
    return ChecksumMismatchError(
        name=spec.name,
        path=path,
        expected=spec.sha256,
        actual=actual,
        why=why,
        source=source,
        fixes=mismatch_fixes(spec) if fixes is None else fixes,
    )


def lock_wait_error(
    spec: CheckpointSpec, doing: str, timeout: float, exc: LockTimeout
) -> CheckpointDownloadError:
    """Another process held ``spec``'s lock for all of ``timeout``: who, and the way out.

    An ``flock`` is freed when its process ends (``_lock``), so the holder is alive: the
    fix is to wait for it or stop it, never to delete the lock file (that would let a
    second download write beside the first).
    """
    who = exc.holder or "another process"
    return CheckpointDownloadError(
        what=f"timed out after {duration(timeout)} waiting for another process to {doing}",
        cause=f"{who} holds the lock {exc.path}",
        name=spec.name,
        fixes=(
            Fix.say(
                f"let {who} finish or stop it (the lock is freed when that process ends; "
                "deleting the lock file would let two downloads write the same file)"
            ),
        ),
    )
