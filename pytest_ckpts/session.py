"""Per-run state shared by hooks and fixtures: one object, as syrupy does.

The ``CkptsSession`` lives in ``config.stash``; per-test data (resolved checkpoints,
their sha256 for baselines) lives in ``item.stash``. Under pytest-xdist each worker
has its own session; workers ship their JSON-able ``Stats`` to the controller in
``workeroutput`` and only the controller prints and writes reports.
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

from . import _properties
from .errors import (
    CacheError,
    CheckpointDownloadError,
    CheckpointsError,
    CheckpointSkipped,
    CheckpointsWarning,
    ChecksumMismatchError,
    Fix,
    TensorIndexError,
    env_words,
)
from .settings import SETTINGS, Mode, Settings
from .stats import Stats

if TYPE_CHECKING:
    from .checkpoint import Checkpoint
    from .manifest import CheckpointSpec, Manifest
    from .partial import Partial
    from .prefetch import Prefetcher
    from .store import Store

__all__ = [
    "RESOLVED_KEY",
    "SESSION_KEY",
    "USED_KEY",
    "CkptsSession",
    "get_session",
    "plugin_text",
    "plugin_words",
    "policy",
    "used_checkpoint_shas",
]


def plugin_words(fix: Fix) -> str:
    """The plugin's words for a fix: its ``--ckpts*`` options (``--ckpts=auto``)."""
    row = SETTINGS.get(fix.setting or "")
    option = None if row is None else row.option
    if option is None:
        return env_words(fix)
    if fix.setting == "mode":
        phrase = f"use {option}={fix.shown_value}"
    else:
        phrase = f"use {option} {fix.shown_value}"
        if fix.setting == "manifest":
            phrase += " (or ini ckpts_manifest)"
    return f"{phrase} {fix.why}" if fix.why else phrase


def plugin_text(exc: BaseException) -> str:
    """An error's whole message as pytest shows it (fixes as ``--ckpts*`` options)."""
    return exc.render(plugin_words) if isinstance(exc, CheckpointsError) else str(exc)


def policy(exc: BaseException, mode: Mode) -> str | None:
    """The one skip-or-fail decision (docs/modes.md "Run modes") for what resolving raised:
    ``"skip"``, ``"fail"``, or None (not a checkpoint outcome: the caller re-raises).

    Not available by policy, or the hub down outside ``require``: skip naming why. A
    mismatch, a bad tensor index, a local cache failure, or the hub down under
    ``require``: fail.
    """
    if isinstance(exc, CheckpointSkipped):
        return "skip"
    if isinstance(exc, CheckpointDownloadError):
        return "fail" if mode is Mode.REQUIRE else "skip"
    if isinstance(exc, (ChecksumMismatchError, TensorIndexError, CacheError)):
        return "fail"
    return None


#: name -> sha256 of every checkpoint a test item resolved (for baselines).
USED_KEY = pytest.StashKey[dict[str, str]]()
#: name -> Checkpoint resolved for a marked test at setup.
RESOLVED_KEY = pytest.StashKey[dict[str, "Checkpoint"]]()


def used_checkpoint_shas(item: pytest.Item) -> dict[str, str]:
    """Return name -> sha256 of the checkpoints ``item`` used so far."""
    if USED_KEY not in item.stash:
        return {}
    used: dict[str, str] = item.stash[USED_KEY]
    return used.copy()


class _HookObserver:
    """Store observer that records stats and calls the ``pytest_ckpts_*`` hooks."""

    def __init__(self, config: pytest.Config, stats: Stats) -> None:
        self._config = config
        self._stats = stats

    def on_download(self, spec: CheckpointSpec, path: Path, nbytes: int, seconds: float) -> None:
        self._stats.record(spec.name, "downloaded", nbytes=nbytes, seconds=seconds)
        self._config.hook.pytest_ckpts_downloaded(
            config=self._config, name=spec.name, path=path, nbytes=nbytes, seconds=seconds
        )

    def on_verify(
        self, spec: CheckpointSpec, path: Path, sha256: str, ok: bool, seconds: float
    ) -> None:
        try:
            self._stats.hashed_bytes += path.stat().st_size
        except OSError:
            pass
        self._stats.hash_seconds += seconds
        self._config.hook.pytest_ckpts_verified(
            config=self._config, name=spec.name, path=path, sha256=sha256, ok=ok, seconds=seconds
        )

    def on_resolve(self, spec: CheckpointSpec, checkpoint: Checkpoint) -> None:
        self._stats.record(
            spec.name,
            checkpoint.source,
            sha256=checkpoint.sha256,
            commit=checkpoint.revision,
            size=checkpoint.size,
            source=checkpoint.mirror or ("hub" if checkpoint.source == "downloaded" else "cache"),
        )
        self._config.hook.pytest_ckpts_resolved(config=self._config, checkpoint=checkpoint)


@dataclass
class CkptsSession:
    """All cross-hook state of one pytest run for pytest-ckpts."""

    config: pytest.Config
    settings: Settings
    manifest: Manifest | None
    stats: Stats = field(default_factory=Stats)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    prefetcher: Prefetcher | None = None
    _store: Store | None = None
    _warned_unverified: bool = False
    _probes_done: dict[str, dict[str, Any]] | None = None
    #: node id of the test this process runs now (library calls find their run by it)
    current_test: str | None = None

    @property
    def store(self) -> Store:
        """The run's store, created on first use (no disk or network before that)."""
        if self._store is None:
            from .cache import Cache
            from .retry import RunState
            from .store import Store

            assert self.manifest is not None
            layout = Cache.in_force(self.settings.cache_dir, self.manifest)
            self._store = Store.from_settings(
                self.manifest,
                self.settings,
                cache_dir=layout.root,
                hub_dir=layout.hub_dir,
                observer=_HookObserver(self.config, self.stats),
                run_state=RunState(layout.runs_dir() / f"{self.run_id}.json"),
            )
            workerinput = getattr(self.config, "workerinput", None)
            if workerinput and workerinput.get("ckpts_probes"):
                self._store.hub.probes_from_json(workerinput["ckpts_probes"])
        return self._store

    def probes_for_workers(self) -> dict[str, dict[str, Any]]:
        """Branch revisions resolved once on the xdist controller (empty when not needed).

        Pinned entries that are cached and trusted cost nothing (a warm pinned run
        makes no request); anything else is probed here once, so a dead hub costs one
        short probe for the whole run rather than one per worker.
        """
        if self.manifest is None:
            return {}
        # The one-time move of an old cache layout happens here, before any worker walks
        # the rootdir: a worker moving it while another collects broke pytest 7's walk.
        _ = self.store.layout
        if not self.settings.downloads:
            return {}
        if self._probes_done is None:  # once per run, not once per worker node
            store = self.store
            for spec in self.manifest.entries.values():
                if store.needs_network(spec) and store.hub.dead() is None:
                    try:
                        store.hub.probe(spec)
                    except CheckpointDownloadError:
                        pass
            self._probes_done = store.hub.probes_to_json()
        return self._probes_done

    def spec(self, name: str) -> CheckpointSpec:
        if self.manifest is None:
            raise pytest.UsageError(
                f"pytest-ckpts: checkpoint '{name}' requested but no manifest was found. "
                "Create checkpoints/checkpoints.yaml or pass --ckpts-manifest."
            )
        return self.manifest.get(name)

    @property
    def mode_source(self) -> str:
        return self.settings.source("mode")

    def _check_unverified(self, name: str, spec: CheckpointSpec) -> None:
        __tracebackhide__ = True
        if spec.sha256 is not None:
            return
        if self.settings.strict:
            self.stats.record(name, "failed", reason="unverified (strict)")
            pytest.fail(
                f"pytest-ckpts: checkpoint '{name}' has no sha256 in {self.manifest_label} "
                "and --ckpts-strict is on. Run `pytest-ckpts lock` to fill it in.",
                pytrace=False,
            )
        if not self._warned_unverified and self.manifest is not None:
            self._warned_unverified = True
            names = ", ".join(self.manifest.unverified)
            warnings.warn(
                CheckpointsWarning(
                    f"pytest-ckpts: unverified checkpoints (sha256 <to_be_calculated>) "
                    f"in {self.manifest_label}: {names}. Run `pytest-ckpts lock` to pin "
                    "their checksums; --ckpts-strict makes this an error."
                ),
                stacklevel=1,
            )

    def shares(self, settings: Settings) -> bool:
        """Whether a library call that resolved ``settings`` at call time is this run's:
        same manifest, mode and cache directory (docs/how-to/writing-tests.md "The library API")."""
        if self.manifest is None or settings.manifest is None:
            return False
        if settings.mode is not self.settings.mode:
            return False
        from .cache import Cache

        # the run's cache as the run located it; the call's as the environment says now
        # (a test may set HF_HUB_CACHE / HF_HOME, which a manifest without cache_dir follows)
        ours = Cache(self.store.layout.root, self.store.hub_dir)
        theirs = Cache.in_force(settings.cache_dir, self.manifest)
        return (
            _same(settings.manifest, self.manifest.path)
            and _same(ours.root, theirs.root)
            and _same(ours.hub, theirs.hub)
        )

    def call_mode(self) -> Mode:
        """The mode a library call in the running test resolves now."""
        try:
            return Settings.from_pytest(self.config, discover=True).mode
        except ValueError:  # the call itself raised it; the run's mode decides the rest
            return self.settings.mode

    def _library_spec(self, name: str) -> CheckpointSpec:
        spec = self.spec(name)
        if self.settings.mode is Mode.SKIP:
            raise CheckpointSkipped.disabled(name, self.mode_source)
        return spec

    def resolve_for_library(self, name: str, force_download: bool = False) -> Checkpoint:
        """``get_checkpoint()`` inside a run: the run's store, mode and ``--ckpts-strict``.

        Raises the library's exceptions; ``pytest_runtest_call`` turns them into skips
        for ``requires_checkpoints`` tests.
        """
        __tracebackhide__ = True
        spec = self._library_spec(name)
        self._check_unverified(name, spec)
        return self.store.resolve(spec, force_download=force_download)

    def resolve_tensors_for_library(self, name: str, tensor_names: list[str]) -> dict[str, Any]:
        """``fetch_tensors()`` inside a run: the run's store and mode, recorded in the stats."""
        return self._read_tensors(self._library_spec(name), tensor_names).tensors

    def _test_spec(self, name: str) -> CheckpointSpec:
        """The entry for a test, or fail (unknown name) / skip (mode ``skip``)."""
        __tracebackhide__ = True
        try:
            spec = self.spec(name)
        except KeyError as exc:
            _fail(f"pytest-ckpts: {exc.args[0]}")
        except pytest.UsageError as exc:  # no manifest: this test fails, not the whole run
            _fail(str(exc))
        if self.settings.mode is Mode.SKIP:
            reason = f"checkpoint '{name}': downloads disabled ({self.mode_source})"
            self.stats.record(name, "skipped", reason=reason)
            _skip(reason)
        return spec

    @contextmanager
    def _policy(self, name: str) -> Iterator[None]:
        """The run's policy for what the store raises: skip, or fail (docs/modes.md "Run modes").

        Not available by policy or hub down (``auto``): skip naming why. A mismatch, a bad
        tensor index or a local cache failure: fail, in every mode. Hub down under
        ``require``: fail.
        """
        __tracebackhide__ = True
        try:
            yield
        except (CheckpointsError, OSError) as exc:
            verdict = policy(exc, self.settings.mode)
            if verdict is None:
                raise
            if verdict == "skip":
                reason = _named(name, exc)
                self.stats.record(name, "skipped", reason=reason)
                _skip(reason)
            reason = _reason(exc)
            self.stats.record(name, "failed", reason=reason)
            if isinstance(exc, CheckpointDownloadError):
                text = f"{plugin_text(exc)}\n(--ckpts=require turns hub failures into errors)"
                _fail(text, reason)
            _fail(plugin_text(exc), reason)

    def library_outcome(self, exc: BaseException) -> None:
        """A library call in a ``requires_checkpoints`` test raised ``exc``: skip it the
        way :func:`policy` says (docs/modes.md "Run modes"); return to let it fail as raised."""
        __tracebackhide__ = True
        if policy(exc, self.call_mode()) == "skip":
            raise pytest.skip.Exception(_line(exc), _use_item_location=True) from None

    def resolve_for_test(self, name: str, item: pytest.Item | None) -> Checkpoint:
        """Resolve ``name`` applying the run's policy: return, ``skip`` or ``fail``."""
        __tracebackhide__ = True
        spec = self._test_spec(name)
        self._check_unverified(name, spec)
        with _properties.on_outcome(item, spec), self._policy(name):
            if self.prefetcher is not None:
                ckpt = self.prefetcher.result(name, self.store)
            else:
                ckpt = self.store.resolve(spec)
        stale = self.store.stale_reasons.get(name) if ckpt.source == "stale" else None
        if ckpt.source == "stale":
            self.stats.record(name, "stale", reason=self.store.stale_reasons.get(name))
        _properties.record(
            item, name, ckpt.source, sha256=ckpt.sha256, commit=ckpt.revision, reason=stale
        )
        if item is not None:
            item.stash.setdefault(USED_KEY, {})[name] = ckpt.sha256
        return ckpt

    def _read_tensors(self, spec: CheckpointSpec, tensor_names: list[str]) -> Partial:
        from .partial import PartialReader

        got = PartialReader(self.store).read(spec, tensor_names)
        self.stats.record(
            spec.name,
            got.source,
            nbytes=got.nbytes,
            seconds=got.seconds if got.nbytes else 0.0,  # as for files: time spent fetching
            reason=got.reason,
            sha256=spec.sha256,
            commit=got.commit,
            size=got.size,
        )
        return got

    def resolve_tensors_for_test(
        self, name: str, tensor_names: list[str], item: pytest.Item | None
    ) -> dict[str, Any]:
        """Verified tensors of ``name`` (partial read) under the run's policy, as
        :meth:`resolve_for_test` does for whole files: return, ``skip`` or ``fail``."""
        __tracebackhide__ = True
        spec = self._test_spec(name)
        with _properties.on_outcome(item, spec), self._policy(name):
            got = self._read_tensors(spec, tensor_names)
        _properties.record(
            item, name, got.source, sha256=spec.sha256, commit=got.commit, reason=got.reason
        )
        if item is not None and spec.sha256 is not None:
            item.stash.setdefault(USED_KEY, {})[name] = spec.sha256
        return got.tensors

    def start_prefetch(self, names: list[str]) -> None:
        """Fetch ``names`` in the background, N at a time (``--ckpts-prefetch``)."""
        if (
            self.manifest is None
            or not names
            or self.settings.prefetch <= 0
            or not self.settings.downloads
        ):
            return
        from .prefetch import Prefetcher

        specs = [self.manifest.entries[n] for n in names if n in self.manifest]
        self.prefetcher = Prefetcher(self.store, specs, workers=self.settings.prefetch)

    def end_run(self) -> None:
        """The process that started the run removes the run's shared record."""
        if self._store is not None and self._store.run_state is not None:
            self._store.run_state.remove()

    def stop_prefetch(self) -> None:
        if self.prefetcher is not None:
            self.prefetcher.close(self.store.observer)
            self.prefetcher = None

    @property
    def manifest_label(self) -> str:
        if self.manifest is None:
            return "(no manifest)"
        try:
            return str(self.manifest.path.relative_to(self.config.rootpath))
        except ValueError:
            return str(self.manifest.path)


SESSION_KEY = pytest.StashKey[CkptsSession]()


def get_session(config: pytest.Config) -> CkptsSession:
    """The run's session object (created in ``pytest_configure``)."""
    return config.stash[SESSION_KEY]


def _same(a: Path, b: Path) -> bool:
    return a == b or a.resolve() == b.resolve()


def _skip(reason: str) -> NoReturn:
    """Skip pointing at the test, not at this plugin (``-rs`` groups by location)."""
    __tracebackhide__ = True
    outcome = pytest.skip.Exception(reason, _use_item_location=True)
    outcome.ckpts_reason = reason  # type: ignore[attr-defined]  # for junit properties
    raise outcome


def _fail(message: str, reason: str | None = None) -> NoReturn:
    """Fail with ``message`` alone: raised while handling the store's error, a plain
    ``pytest.fail`` would print that error again under "During handling of the above
    exception". ``reason``: the one line junit properties record (a field, not parsed)."""
    __tracebackhide__ = True
    outcome = pytest.fail.Exception(message, pytrace=False)
    outcome.ckpts_reason = reason  # type: ignore[attr-defined]
    raise outcome from None


def _named(name: str, exc: BaseException) -> str:
    """The skip reason: the error's line in pytest's words, naming the checkpoint first."""
    reason = _line(exc)
    prefix = f"checkpoint '{name}'"
    return reason if reason.startswith(prefix) else f"{prefix}: {reason}"


def _line(exc: BaseException) -> str:
    """One line for a skip reason: the summary and the fixes as ``--ckpts*`` options."""
    if isinstance(exc, CheckpointsError):
        return exc.one_line(plugin_words)
    return str(exc) or type(exc).__name__


def _reason(exc: BaseException) -> str:
    """Why a checkpoint failed, for the summary and the report: the summary alone."""
    if isinstance(exc, CheckpointsError):
        return exc.summary or type(exc).__name__
    return str(exc) or type(exc).__name__
