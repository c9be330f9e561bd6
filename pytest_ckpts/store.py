"""Resolve a manifest entry to a verified local file: the sequence, nothing else.

fast path (stamp) → lock → look again → mirrors → download → verify → stamp → retry once.

- The commit comes from the manifest (a pinned 40-hex revision) or from one bounded
  probe per run (a branch); see :mod:`pytest_ckpts.hub_client`.
- A cached file whose stamp still matches ``stat`` is returned without hashing or HTTP.
- Otherwise a per-file lock (any number of processes: one download), a second look, a
  download, a hash compared with the manifest, a stamp. A cached copy that fails the
  check is downloaded again once; a fresh download that fails is deleted and the
  mismatch is remembered for the run (docs/modes.md "Run modes": never downloaded again).
- Mirrors (docs/mirrors.md "What happens on a fetch"): an entry with a sha256 is streamed from the first mirror
  holding the right bytes before the hub is asked (a pinned entry: no hub request at
  all); the step lives in :mod:`pytest_ckpts.sources.step`.
- Stale-while-error: when a branch cannot be resolved because the hub is down,
  rate-limited or the retry budget is spent, the verified copy of the commit the
  branch last resolved to is used, and reported as ``stale``.

Paths and stamps live in :mod:`pytest_ckpts.cache`; the network in ``hub_client``.
This module knows nothing of pytest.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ._stamps import blob_of
from ._transfer import blocked_dir_error
from .cache import Cache, Stamp
from .checkpoint import Checkpoint
from .errors import (
    CacheError,
    CheckpointDownloadError,
    CheckpointSkipped,
    ChecksumMismatchError,
    Fix,
)
from .hub_client import DEFAULT_ENDPOINT, Downloaded, HubClient, redact, resolve_endpoint
from .integrity import calculate_sha256
from .manifest import CheckpointSpec, Manifest, is_pinned
from .retry import RetryBudget, RunState
from .settings import Mode, Settings
from .sources.step import MirrorSupport, from_mirrors, may_mirror, unresolved

__all__ = ["DEFAULT_ENDPOINT", "NullObserver", "Observer", "Store", "redact", "resolve_endpoint"]

logger = logging.getLogger("pytest_ckpts")


class Observer(Protocol):
    """Receives store events; the plugin forwards them to ``pytest_ckpts_*`` hooks."""

    def on_download(self, spec: CheckpointSpec, path: Path, nbytes: int, seconds: float) -> None:
        """A file finished downloading."""

    def on_verify(
        self, spec: CheckpointSpec, path: Path, sha256: str, ok: bool, seconds: float
    ) -> None:
        """A file was hashed and compared with the manifest."""

    def on_resolve(self, spec: CheckpointSpec, checkpoint: Checkpoint) -> None:
        """A checkpoint is ready for use (cached, downloaded or stale)."""


class NullObserver:
    """An observer that ignores everything."""

    def on_download(self, spec: CheckpointSpec, path: Path, nbytes: int, seconds: float) -> None:
        pass

    def on_verify(
        self, spec: CheckpointSpec, path: Path, sha256: str, ok: bool, seconds: float
    ) -> None:
        pass

    def on_resolve(self, spec: CheckpointSpec, checkpoint: Checkpoint) -> None:
        pass


@dataclass
class Store(MirrorSupport):
    """Resolves manifest entries to verified files in ``cache_dir``.

    ``offline=True`` never touches the network: a missing file raises
    ``CheckpointSkipped``. ``rehash=True`` ignores stamps and hashes every file once.
    ``client`` is built from the manifest when not given (tests and the plugin pass
    their own, sharing one retry budget and run state).
    """

    manifest: Manifest
    cache_dir: Path | None = None
    offline: bool = False
    rehash: bool = False
    progress: bool = False
    lock_timeout: float = 6 * 3600.0
    observer: Observer = field(default_factory=NullObserver)
    client: HubClient | None = None
    retry_budget: float = 60.0
    run_state: RunState | None = None
    trust_endpoint: bool = False
    #: why each stale checkpoint was used (name -> reason), for summaries and reports
    stale_reasons: dict[str, str] = field(default_factory=dict, repr=False)
    #: the hub failure behind each stale copy (name -> error), for front ends' own words
    stale_errors: dict[str, CheckpointDownloadError] = field(default_factory=dict, repr=False)
    _memory: dict[str, Stamp] = field(default_factory=dict, repr=False)
    #: huggingface_hub's cache when it is not ``cache_dir/hub`` (``HF_HUB_CACHE``)
    hub_dir: Path | None = None
    _layout: Cache | None = field(default=None, repr=False)
    _snapshots: dict[tuple[str, str, str, str], Path] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.hub_dir is None:  # none given, none in the manifest: huggingface_hub's own
            located = Cache.in_force(self.cache_dir, self.manifest)
            self.cache_dir, self.hub_dir = located.root, located.hub_dir
        if self.run_state is None:
            self.run_state = RunState()
        if self.client is None:
            self.client = HubClient.for_manifest(
                self.manifest,
                budget=RetryBudget(self.retry_budget),
                run_state=self.run_state,
                trust_endpoint=self.trust_endpoint,
                progress=self.progress,
            )

    @classmethod
    def from_settings(cls, manifest: Manifest, settings: Settings, **overrides: Any) -> Store:
        """The store ``settings`` describe (cache dir, offline mode, rehash, retry budget,
        token trust); the plugin, the CLI and the library build theirs here."""
        values: dict[str, Any] = {
            "cache_dir": settings.cache_dir,
            "offline": settings.mode is Mode.OFFLINE,
            "rehash": settings.rehash,
            "retry_budget": settings.retry_budget,
            "trust_endpoint": settings.trust_manifest_endpoint,
            "mirrors": settings.mirrors if settings.mirrors is not None else manifest.mirrors,
        }
        return cls(manifest, **{**values, **overrides})

    # ------------------------------------------------------------------ views
    @property
    def cache(self) -> Path:
        assert self.cache_dir is not None
        return self.cache_dir

    @property
    def layout(self) -> Cache:
        """The cache's paths; an old layout is moved into ``hub/`` on first use."""
        if self._layout is None:
            self._layout = Cache(self.cache, self.hub_dir).ready()
        return self._layout

    @property
    def hub(self) -> HubClient:
        assert self.client is not None
        return self.client

    @property
    def cache_dir_arg(self) -> Path | None:
        """The cache directory a ``pytest-ckpts`` command must be told (``--cache-dir``):
        None when it is the manifest's default, which the command finds by itself."""
        default = Cache.in_force(None, self.manifest)
        if (default.root, default.hub_dir) == (self.cache, self.hub_dir):
            return None
        return self.hub_dir if self.hub_dir is not None else self.cache

    def run_fix(self, *command: str, why: str = "") -> Fix:
        """A ``pytest-ckpts`` command as a fix, on the cache directory in force."""
        return Fix.run(*command, cache_dir=self.cache_dir_arg, why=why)

    def snapshot_path(self, spec: CheckpointSpec, commit: str) -> Path:
        key = (spec.repo_type, spec.repo, spec.hf_path, commit)
        path = self._snapshots.get(key)  # built and checked once per run (warm: ~1000s)
        if path is None:
            path = self._snapshots[key] = self.layout.snapshot(spec, commit)
        return path

    def cached_commit(self, spec: CheckpointSpec) -> str | None:
        return self.layout.cached_commit(spec)

    def cached_path(self, spec: CheckpointSpec) -> Path | None:
        return self.layout.cached_path(spec)

    def is_trusted(self, spec: CheckpointSpec) -> bool:
        """Cached and its stamp vouches for the expected bytes (cheap: stat only)."""
        commit = self.cached_commit(spec)
        return (
            commit is not None and self._trusted(spec, self.snapshot_path(spec, commit)) is not None
        )

    def describe(self, spec: CheckpointSpec, revision: str | None = None) -> str:
        return self.hub.describe(spec, revision)

    def probe(self, spec: CheckpointSpec) -> str:
        return self.hub.probe(spec)

    def resolve_warm(self, spec: CheckpointSpec) -> Checkpoint | None:
        """``spec`` resolved if it is pinned and its stamp vouches for its file (one
        ``stat``: no lock, no network, no hashing); None when it needs more than that."""
        if not is_pinned(spec.revision):
            return None
        return self._fast_path(spec, self.snapshot_path(spec, spec.revision), spec.revision)

    def needs_network(self, spec: CheckpointSpec) -> bool:
        """True unless a pinned entry is cached and trusted, or may come from a mirror."""
        return not (is_pinned(spec.revision) and (self.is_trusted(spec) or may_mirror(self, spec)))

    # ------------------------------------------------------------------ resolve
    def resolve(self, spec: CheckpointSpec, *, force_download: bool = False) -> Checkpoint:
        """Return a verified ``Checkpoint`` for ``spec``, downloading if needed."""
        if not force_download:
            self._raise_known_mismatch(spec)
        if not is_pinned(spec.revision):
            self.layout.ref_path(spec)  # a revision leaving the cache: refused before any I/O
        if self.offline:
            return self._resolve_offline(spec)
        try:
            commit = self.hub.probe(spec) if not is_pinned(spec.revision) else spec.revision
            path = self.snapshot_path(spec, commit)
            if not force_download:
                ready = self._fast_path(spec, path, commit)
                if ready is not None:
                    return ready
            return self._locked(spec, path, commit, force_download)
        except CheckpointDownloadError as exc:
            stale = self._stale(spec, exc) or unresolved(self, spec, exc)
            if stale is None:
                raise
            return stale

    def _resolve_offline(self, spec: CheckpointSpec) -> Checkpoint:
        commit = self.cached_commit(spec)
        path = self.snapshot_path(spec, commit) if commit else None
        if commit is None or path is None or not path.exists():
            raise CheckpointSkipped(
                f"pytest-ckpts: checkpoint '{spec.name}' is not cached in {self.cache} and "
                "the mode is offline (no downloads).",
                entry=spec.name,
                cause="not cached",
                fixes=(self.run_fix("fetch", spec.name), Fix.set("mode", Mode.AUTO.value)),
            )
        ready = self._fast_path(spec, path, commit)
        if ready is not None:
            return ready
        return self._verify_cached(spec, path, commit, "cached copy; offline, not re-downloaded")

    def _stale(self, spec: CheckpointSpec, exc: CheckpointDownloadError) -> Checkpoint | None:
        """The cached copy to use when the hub cannot be asked (down, or the budget spent).

        A branch falls back to the commit it last resolved to, a pinned entry to its
        commit's snapshot. A copy no stamp vouches for (a cache restored by a copy: new
        inodes and ctimes) is hashed once here: served when it matches, a mismatch when
        it does not (docs/explanation/verification.md "Stale copies": never a skip).
        """
        if not exc.hub_down:
            return None
        commit = self.cached_commit(spec)
        if commit is None:
            return None
        path = self.snapshot_path(spec, commit)
        if not path.exists():
            return None
        cause = exc.cause or exc.summary
        stamp = self._trusted(spec, path) or self._verified_copy(spec, path, cause)
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp.verified_at))
        self.stale_reasons[spec.name] = (
            f"stale: commit {commit[:12]} verified {when}; hub failed: {cause}"
        )
        self.stale_errors[spec.name] = exc
        logger.warning(
            "pytest-ckpts: using stale copy of '%s' (%s)", spec.name, self.stale_reasons[spec.name]
        )
        return self._done(spec, path, commit, stamp, "stale")

    def _verified_copy(self, spec: CheckpointSpec, path: Path, cause: str) -> Stamp:
        """Hash a cached copy once (under the file's lock when the cache is writable, so
        xdist workers hash it once between them) and stamp it, or raise the mismatch."""
        from filelock import FileLock, Timeout

        lock_path = self.layout.lock_path(spec)
        lock = FileLock(str(lock_path), timeout=self.lock_timeout)
        try:
            lock_path.parent.mkdir(parents=True, exist_ok=True)
            lock.acquire()
            held = True
        except (OSError, Timeout):  # read-only cache: nobody else can stamp it either
            held = False
        try:
            stamp = self._trusted(spec, path)  # another process hashed it meanwhile
            if stamp is not None:
                return stamp
            self._raise_known_mismatch(spec)
            ok, actual, stamp = self._hash_and_stamp(spec, path)
            if not ok:
                assert self.run_state is not None
                self.run_state.mark_mismatch(self._mismatch_key(spec), f"{path}\0{actual}")
                raise self._mismatch(
                    spec,
                    path,
                    actual,
                    f"cached copy; not downloaded again, the hub failed: {cause}",
                    cached=True,
                )
            return stamp
        finally:
            if held:
                lock.release()

    def _locked(
        self, spec: CheckpointSpec, path: Path, commit: str, force_download: bool
    ) -> Checkpoint:
        from ._lock import LockTimeout, acquire

        lock_path = self.layout.lock_path(spec)
        try:
            try:
                lock = acquire(lock_path, self.lock_timeout)
            except FileNotFoundError:  # first download into this cache
                lock_path.parent.mkdir(parents=True, exist_ok=True)
                lock = acquire(lock_path, self.lock_timeout)
        except LockTimeout:
            raise CheckpointDownloadError(
                f"pytest-ckpts: timed out after {self.lock_timeout:.0f}s waiting for another "
                f"process to download '{spec.name}' (lock {lock_path}). If no other "
                "process is running, delete the lock file.",
                name=spec.name,
            ) from None
        except OSError as exc:  # read-only cache: nobody can write, so no lock is needed
            if path.exists() and not force_download:
                return self._verify_cached(spec, path, commit, "cached copy in a read-only cache")
            blocked = blocked_dir_error(lock_path.parent, spec)  # a dangling symlink?
            if blocked is not None:
                raise blocked from None
            raise CacheError(
                f"pytest-ckpts: cannot download checkpoint '{spec.name}': the cache {self.cache} "
                f"is not writable ({exc.strerror or exc}).",
                entry=spec.name,
                cause="cache not writable",
                fixes=(
                    Fix.set("cache_dir", why="(a writable directory)"),
                    self.run_fix("fetch", why="where the cache is writable"),
                ),
            ) from None
        try:
            return self._resolve_locked(spec, path, commit, force_download)
        finally:
            lock.release()

    def _verify_cached(self, spec: CheckpointSpec, path: Path, commit: str, why: str) -> Checkpoint:
        """Hash a cached copy that cannot be replaced here: hand it out, or the mismatch."""
        ok, actual, stamp = self._hash_and_stamp(spec, path)
        if not ok:
            raise self._mismatch(spec, path, actual, why, cached=True)
        return self._done(spec, path, commit, stamp, "cached")

    def _resolve_locked(
        self, spec: CheckpointSpec, path: Path, commit: str, force_download: bool
    ) -> Checkpoint:
        corrupted: str | None = None  # the sha256 of a cached copy that failed the check
        if not force_download:
            # another process (an xdist worker) may have found a mismatch while we waited
            self._raise_known_mismatch(spec)
            ready = self._fast_path(spec, path, commit)  # another process finished meanwhile
            if ready is not None:
                return ready
            if path.exists():
                ok, actual, stamp = self._hash_and_stamp(spec, path)
                if ok:
                    self.layout.write_ref(spec, commit)
                    return self._done(spec, path, commit, stamp, "cached")
                corrupted = actual
                logger.warning(
                    "pytest-ckpts: cached copy of '%s' is corrupted (sha256 %s, expected %s); "
                    "downloading it again",
                    spec.name,
                    actual,
                    spec.sha256,
                )
        try:
            if (mirrored := from_mirrors(self, spec, commit, not force_download)) is not None:
                return mirrored  # else pinned: one short hub probe decided "is the hub there"
            got = self.hub.download(spec, commit, self.layout)
        except CheckpointDownloadError as exc:
            if corrupted is None:
                raise
            # the copy found here is the answer: a mismatch is never a skip (docs/modes.md "Run modes")
            raise self._mismatch(
                spec,
                path,
                corrupted,
                f"cached copy; downloading it again failed: {exc.cause or exc.summary}",
                cached=True,
            ) from None
        ok, actual, stamp = self._landed(spec, got)
        if not ok and got.resumed:  # the part before the cut may be the bad part: once more
            self.layout.discard(spec, got.path)
            got = self.hub.download(spec, commit, self.layout)
            ok, actual, stamp = self._landed(spec, got)
        if not ok:
            self.layout.discard(spec, got.path)
            error = self._mismatch(
                spec, got.path, actual, "freshly downloaded; the file was deleted"
            )
            assert self.run_state is not None
            self.run_state.mark_mismatch(self._mismatch_key(spec), f"{got.path}\0{actual}")
            raise error
        self.layout.write_ref(spec, commit)
        return self._done(spec, got.path, commit, stamp, "downloaded")

    def _landed(self, spec: CheckpointSpec, got: Downloaded) -> tuple[bool, str, Stamp]:
        self.observer.on_download(spec, got.path, got.nbytes, got.seconds)
        logger.info(
            "pytest-ckpts: downloaded '%s' (%d bytes in %.2fs)", spec.name, got.nbytes, got.seconds
        )
        return self._hash_and_stamp(spec, got.path, got.sha256)

    # ------------------------------------------------------------------ stamps
    def _trusted(self, spec: CheckpointSpec, path: Path) -> Stamp | None:
        """The stamp vouching for ``path`` now: one ``stat`` (following the snapshot link)
        compared with what this store hashed, else with the cache's stamp log."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        remembered = self._memory.get(os.fspath(path))
        if remembered is not None and remembered.agrees(st):
            return remembered if spec.sha256 in (None, remembered.sha256) else None
        if self.rehash:
            return None
        return self.layout.trusted_stamp(spec, path, st)

    def _fast_path(self, spec: CheckpointSpec, path: Path, commit: str) -> Checkpoint | None:
        stamp = self._trusted(spec, path)
        return None if stamp is None else self._done(spec, path, commit, stamp, "cached")

    def _hash_and_stamp(
        self, spec: CheckpointSpec, path: Path, streamed: str | None = None
    ) -> tuple[bool, str, Stamp]:
        blob = Path(blob_of(path))
        started = time.perf_counter()
        actual = streamed if streamed is not None else calculate_sha256(blob)
        ok = spec.sha256 is None or actual == spec.sha256
        self.observer.on_verify(spec, path, actual, ok, time.perf_counter() - started)
        stamp = Stamp.of(blob, actual)
        if ok:
            # no fsync: the stamp holds only while stat of the blob agrees (see _stamps)
            self._memory[os.fspath(path)] = stamp
            self.layout.write_stamp(spec, blob, stamp)
        else:
            self.layout.revoke_stamp(spec, blob)
        return ok, actual, stamp

    def _done(
        self,
        spec: CheckpointSpec,
        path: Path,
        commit: str,
        stamp: Stamp,
        source: str,
        mirror: str | None = None,
    ) -> Checkpoint:
        """The resolved checkpoint, announced to the observer (``mirror``: where it came from)."""
        ckpt = Checkpoint(
            name=spec.name,
            path=path,
            sha256=stamp.sha256,
            size=stamp.size,
            revision=commit,
            description=spec.description,
            verified=spec.sha256 is not None,
            source=source,
            mirror=mirror,
        )
        self.observer.on_resolve(spec, ckpt)
        return ckpt

    # ------------------------------------------------------------------ errors
    def _raise_known_mismatch(self, spec: CheckpointSpec) -> None:
        """A mismatch this run already found is raised again, never downloaded again."""
        assert self.run_state is not None
        known = self.run_state.mismatch(self._mismatch_key(spec))
        if known is not None:
            path, actual = known.split("\0")
            raise self._mismatch(
                spec, Path(path), actual, "found earlier in this run; not downloaded again"
            )

    def _mismatch_key(self, spec: CheckpointSpec) -> str:
        return f"{self.layout.lock_key(spec)}:{spec.sha256}"

    def _mismatch(
        self, spec: CheckpointSpec, path: Path, actual: str, why: str, *, cached: bool = False
    ) -> ChecksumMismatchError:
        """``cached``: the bad bytes are a local copy; a fresh download is the first way out
        (``lock --update`` would record the corrupt hash)."""
        fixes = mismatch_fixes(spec)
        if cached:
            fixes = (
                self.run_fix("fetch", "--force", spec.name, why="to download it again"),
                *fixes,
            )
        return mismatch_error(spec, path, actual, why, self.describe(spec), fixes)

    # ------------------------------------------------------------------ shared with partial reads
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
        from filelock import FileLock, Timeout

        lock: Any = None
        try:
            lock_path.parent.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(lock_path), timeout=self.lock_timeout)
            lock.acquire()
        except Timeout:
            raise CheckpointDownloadError(
                f"pytest-ckpts: timed out after {self.lock_timeout:.0f}s waiting for another "
                f"process to {doing} (lock {lock_path}). If no other process is running, "
                "delete the lock file.",
                name=spec.name,
            ) from None
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
        f"pytest-ckpts: Checksum mismatch for checkpoint '{spec.name}' ({why})",
        name=spec.name,
        path=path,
        expected=spec.sha256,
        actual=actual,
        cause="checksum mismatch",
        details=(
            f"  file:     {path}\n"
            f"  source:   {source}\n"
            f"  expected: {spec.sha256}\n"
            f"  actual:   {actual}\n"
            "A checksum mismatch is never skipped: the upstream file changed or the local "
            "copy is corrupted."
        ),
        fixes=mismatch_fixes(spec) if fixes is None else fixes,
    )
