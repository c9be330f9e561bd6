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
  branch last resolved to is used, and reported as ``stale``; these fallbacks (stale,
  offline and read-only copies, mismatches, the per-file lock) live in
  :mod:`pytest_ckpts._fallback`.

Paths and stamps live in :mod:`pytest_ckpts.cache`; the network in ``hub_client``.
This module knows nothing of pytest.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

from ._fallback import StaleSupport
from ._stamps import blob_of, note_blob
from .cache import Cache, Stamp
from .checkpoint import Checkpoint
from .errors import (
    CheckpointDownloadError,
    Fix,
)
from .hub_client import Downloaded, HubClient
from .integrity import calculate_sha256
from .manifest import CheckpointSpec, Manifest, is_pinned
from .retry import RetryBudget, RunState
from .settings import Mode, Settings
from .sources.step import MirrorSupport, from_mirrors, may_mirror, unresolved

__all__ = ["NullObserver", "Observer", "Store"]

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
class Store(StaleSupport, MirrorSupport):
    """Resolves manifest entries to verified files in ``cache_dir``.

    ``offline=True`` never touches the network: a missing file raises
    ``CheckpointSkipped``. ``rehash=True`` ignores stamps and hashes every file once.
    ``hub`` (the :class:`HubClient`) is built from the manifest when not given (tests
    and the plugin pass their own, sharing one retry budget and run state).
    ``cache_dir`` is the cache asked for (None: the manifest's, else huggingface_hub's);
    ``layout`` is the cache in force.
    """

    manifest: Manifest
    cache_dir: Path | None = None
    offline: bool = False
    rehash: bool = False
    progress: bool = False
    lock_timeout: float = 6 * 3600.0
    observer: Observer = field(default_factory=NullObserver)
    hub: HubClient = None  # type: ignore[assignment]  # None: built in __post_init__
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
    #: the ``cache_dir`` already located (a copy made by ``dataclasses.replace``, as
    #: prefetch makes one per checkpoint, does not locate it again: two ``realpath``)
    _located: Path | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.hub_dir is None and (self._located is None or self._located != self.cache_dir):
            # none given, none in the manifest: huggingface_hub's own
            located = Cache.in_force(self.cache_dir, self.manifest)
            self.cache_dir, self.hub_dir = located.root, located.hub_dir
            self._located = self.cache_dir
        if self._layout is not None and self._layout.root != self.cache_dir:
            self._layout = None  # a copy given another cache_dir: not the original's paths
        if self.run_state is None:
            self.run_state = RunState()
        if cast("HubClient | None", self.hub) is None:  # not given: the manifest's
            self.hub = HubClient.for_manifest(
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
    def layout(self) -> Cache:
        """The cache's paths; an old layout is moved into ``hub/`` on first use."""
        if self._layout is None:
            assert self.cache_dir is not None  # set by __post_init__
            self._layout = Cache(self.cache_dir, self.hub_dir).ready()
        return self._layout

    @property
    def cache_dir_arg(self) -> Path | None:
        """The cache directory a ``pytest-ckpts`` command must be told (``--cache-dir``):
        None when it is the manifest's default, which the command finds by itself."""
        default = Cache.in_force(None, self.manifest)
        if (default.root, default.hub_dir) == (self.cache_dir, self.hub_dir):
            return None
        return self.hub_dir if self.hub_dir is not None else self.cache_dir

    def run_fix(self, *command: str, why: str = "") -> Fix:
        """A ``pytest-ckpts`` command as a fix, on the cache directory in force."""
        return Fix.run(*command, cache_dir=self.cache_dir_arg, why=why)

    def snapshot_path(self, spec: CheckpointSpec, commit: str) -> Path:
        key = (spec.repo_type, spec.repo, spec.hf_path, commit)
        path = self._snapshots.get(key)  # built and checked once per run (warm: ~1000s)
        if path is None:
            path = self._snapshots[key] = self.layout.snapshot(spec, commit)
        return path

    def is_trusted(self, spec: CheckpointSpec) -> bool:
        """Cached and its stamp vouches for the expected bytes (cheap: stat only)."""
        commit = self.layout.cached_commit(spec)
        return (
            commit is not None and self._trusted(spec, self.snapshot_path(spec, commit)) is not None
        )

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
        pinned = is_pinned(spec.revision)
        if pinned and not force_download and not self.offline:
            # a verified copy first: its stamp vouches for the manifest's sha256, so no
            # mismatch of this run can concern it (and the run state is not read)
            ready = self._fast_path(spec, self.snapshot_path(spec, spec.revision), spec.revision)
            if ready is not None:
                return ready
        if not force_download:
            self._raise_known_mismatch(spec)
        if not pinned:
            self.layout.ref_path(spec)  # a revision leaving the cache: refused before any I/O
        if self.offline:
            return self._resolve_offline(spec)
        try:
            commit = self.hub.probe(spec) if not pinned else spec.revision
            path = self.snapshot_path(spec, commit)
            if not force_download and not pinned:
                ready = self._fast_path(spec, path, commit)
                if ready is not None:
                    return ready
            return self._locked(spec, path, commit, force_download)
        except CheckpointDownloadError as exc:
            stale = self._stale(spec, exc) or unresolved(self, spec, exc)
            if stale is None:
                raise
            return stale

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
        return self._hash_and_stamp(spec, got.path, got.sha256, got.blob)

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
        self,
        spec: CheckpointSpec,
        path: Path,
        streamed: str | None = None,
        blob: Path | None = None,
    ) -> tuple[bool, str, Stamp]:
        """``streamed``: the sha256 hashed as the file arrived; ``blob``: where ``path``
        links to, when the caller just made the link (no ``realpath``)."""
        blob = Path(blob_of(path)) if blob is None else blob
        started = time.perf_counter()
        actual = streamed if streamed is not None else calculate_sha256(blob)
        ok = spec.sha256 is None or actual == spec.sha256
        self.observer.on_verify(spec, path, actual, ok, time.perf_counter() - started)
        stamp = Stamp.of(blob, actual)
        note_blob(path, blob, stamp.ino)
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

    # ------------------------------------------------------------------ shared with partial reads
