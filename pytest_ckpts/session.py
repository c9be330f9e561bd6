"""Per-run state shared by hooks and fixtures: one object, as syrupy does.

The ``CkptsSession`` lives in ``config.stash``; per-test data (resolved checkpoints,
their sha256 for baselines) lives in ``item.stash``. Under pytest-xdist each worker
has its own session; workers ship a small JSON-able ``Stats`` to the controller in
``workeroutput`` and only the controller prints.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .errors import CheckpointDownloadError, CheckpointSkipped, ChecksumMismatchError
from .manifest import DEFAULT_MANIFEST, ENV_MANIFEST, env_value
from .policy import Mode, Policy

if TYPE_CHECKING:
    from .checkpoint import Checkpoint
    from .manifest import CheckpointSpec, Manifest
    from .store import Store

__all__ = [
    "RESOLVED_KEY",
    "SESSION_KEY",
    "USED_KEY",
    "CheckpointsWarning",
    "CkptsSession",
    "Stats",
    "cache_dir",
    "get_session",
    "manifest_path",
    "used_checkpoint_shas",
]

#: name -> sha256 of every checkpoint a test item resolved (for baselines).
USED_KEY = pytest.StashKey[dict[str, str]]()
#: name -> Checkpoint resolved for a marked test at setup.
RESOLVED_KEY = pytest.StashKey[dict[str, "Checkpoint"]]()


class CheckpointsWarning(pytest.PytestWarning):
    """Something about the manifest deserves attention but does not stop the run."""


def used_checkpoint_shas(item: pytest.Item) -> dict[str, str]:
    """Return name -> sha256 of the checkpoints ``item`` used so far."""
    if USED_KEY not in item.stash:
        return {}
    used: dict[str, str] = item.stash[USED_KEY]
    return used.copy()


@dataclass
class Stats:
    """What happened to checkpoints in one process; mergeable across xdist workers."""

    downloaded: dict[str, list[float]] = field(default_factory=dict)  # name -> [bytes, seconds]
    cached: set[str] = field(default_factory=set)
    skipped: dict[str, str] = field(default_factory=dict)  # name -> reason
    errors: dict[str, str] = field(default_factory=dict)  # name -> first line of error
    hashed_bytes: int = 0
    hash_seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "downloaded": self.downloaded,
            "cached": sorted(self.cached),
            "skipped": self.skipped,
            "errors": self.errors,
            "hashed_bytes": self.hashed_bytes,
            "hash_seconds": self.hash_seconds,
        }

    def merge(self, data: Mapping[str, Any]) -> None:
        for name, pair in data.get("downloaded", {}).items():
            self.downloaded.setdefault(name, [float(pair[0]), float(pair[1])])
        self.cached.update(data.get("cached", []))
        for name, reason in data.get("skipped", {}).items():
            self.skipped.setdefault(name, reason)
        for name, err in data.get("errors", {}).items():
            self.errors.setdefault(name, err)
        self.hashed_bytes += int(data.get("hashed_bytes", 0))
        self.hash_seconds += float(data.get("hash_seconds", 0.0))

    @property
    def empty(self) -> bool:
        return not (self.downloaded or self.cached or self.skipped or self.errors)


class _HookObserver:
    """Store observer that records stats and calls the ``pytest_ckpts_*`` hooks."""

    def __init__(self, config: pytest.Config, stats: Stats) -> None:
        self._config = config
        self._stats = stats

    def on_download(self, spec: CheckpointSpec, path: Path, nbytes: int, seconds: float) -> None:
        self._stats.downloaded[spec.name] = [float(nbytes), seconds]
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
        if checkpoint.source == "cached" and spec.name not in self._stats.downloaded:
            self._stats.cached.add(spec.name)
        self._config.hook.pytest_ckpts_resolved(config=self._config, checkpoint=checkpoint)


@dataclass
class CkptsSession:
    """All cross-hook state of one pytest run for pytest-ckpts."""

    config: pytest.Config
    policy: Policy
    manifest: Manifest | None
    cache_dir: Path | None
    stats: Stats = field(default_factory=Stats)
    _store: Store | None = None
    _probes_done: dict[str, dict[str, Any]] | None = None
    _warned_unverified: bool = False

    @property
    def store(self) -> Store:
        """The run's store, created on first use (no disk or network before that)."""
        if self._store is None:
            from .store import Store

            assert self.manifest is not None
            self._store = Store(
                self.manifest,
                cache_dir=self.cache_dir,
                offline=self.policy.mode is Mode.OFFLINE,
                rehash=self.policy.rehash,
                observer=_HookObserver(self.config, self.stats),
            )
            workerinput = getattr(self.config, "workerinput", None)
            if workerinput and workerinput.get("ckpts_probes"):
                self._store.import_probes(workerinput["ckpts_probes"])
        return self._store

    def probes_for_workers(self) -> dict[str, dict[str, Any]]:
        """Branch revisions resolved once on the xdist controller (empty when not needed)."""
        if self._probes_done is None:
            self._probes_done = {}
            if self.manifest is not None and self.policy.downloads:
                self._probes_done = self.store.export_probes()
        return self._probes_done

    def spec(self, name: str) -> CheckpointSpec:
        if self.manifest is None:
            raise pytest.UsageError(
                f"pytest-ckpts: checkpoint '{name}' requested but no manifest was found. "
                "Create checkpoints/checkpoints.yaml or pass --ckpts-manifest."
            )
        return self.manifest.get(name)

    def resolve_for_test(self, name: str, item: pytest.Item | None) -> Checkpoint:
        """Resolve ``name`` applying the run's policy: return, ``skip`` or ``fail``."""
        __tracebackhide__ = True
        try:
            spec = self.spec(name)
        except KeyError as exc:
            pytest.fail(f"pytest-ckpts: {exc.args[0]}", pytrace=False)
        if self.policy.mode is Mode.SKIP:
            reason = f"checkpoint '{name}': downloads disabled ({self.policy.source})"
            self.stats.skipped.setdefault(name, reason)
            pytest.skip(reason)
        if spec.sha256 is None:
            if self.policy.strict:
                msg = (
                    f"pytest-ckpts: checkpoint '{name}' has no sha256 in {self.manifest_label} "
                    "and --ckpts-strict is on. Run `pytest-ckpts lock` to fill it in."
                )
                self.stats.errors.setdefault(name, "unverified (strict)")
                pytest.fail(msg, pytrace=False)
            if not self._warned_unverified and self.manifest is not None:
                self._warned_unverified = True
                names = ", ".join(self.manifest.unverified)
                warnings.warn(
                    CheckpointsWarning(
                        f"pytest-ckpts: unverified checkpoints (sha256 {'<to_be_calculated>'}) "
                        f"in {self.manifest_label}: {names}. Run `pytest-ckpts lock` to pin "
                        "their checksums; --ckpts-strict makes this an error."
                    ),
                    stacklevel=1,
                )
        try:
            ckpt = self.store.resolve(spec)
        except CheckpointSkipped as exc:
            reason = f"checkpoint '{name}': {_reason(exc)}"
            self.stats.skipped.setdefault(name, reason)
            pytest.skip(reason)
        except ChecksumMismatchError as exc:
            self.stats.errors.setdefault(name, "checksum mismatch")
            pytest.fail(str(exc), pytrace=False)
        except CheckpointDownloadError as exc:
            if self.policy.mode is Mode.REQUIRE:
                self.stats.errors.setdefault(name, _first_line(exc))
                pytest.fail(
                    f"{exc}\n(--ckpts=require turns hub failures into errors)", pytrace=False
                )
            reason = f"checkpoint '{name}': {_reason(exc)}"
            self.stats.skipped.setdefault(name, reason)
            pytest.skip(reason)
        if item is not None:
            item.stash.setdefault(USED_KEY, {})[name] = ckpt.sha256
        return ckpt

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


def _reason(exc: BaseException) -> str:
    return _first_line(exc).removeprefix("pytest-ckpts: ")


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


# --------------------------------------------------------------------------- settings


def manifest_path(config: pytest.Config) -> Path | None:
    """CLI > env > ini > <rootdir>/checkpoints/checkpoints.yaml (only if it exists).

    An explicitly configured path that does not exist is an error (raised by
    ``load_manifest``): a typo there must not silently turn the plugin off.
    """
    cli = config.getoption("ckpts_manifest")
    if cli:
        return Path(config.invocation_params.dir, os.path.expanduser(cli))
    env = env_value(ENV_MANIFEST)
    if env:
        return Path(os.path.expanduser(env)).absolute()
    ini = str(config.getini("ckpts_manifest") or "")
    if ini:
        base = config.inipath.parent if config.inipath else config.rootpath
        return base / os.path.expanduser(ini)
    default = config.rootpath / DEFAULT_MANIFEST
    return default if default.is_file() else None


def cache_dir(config: pytest.Config) -> Path | None:
    cli = config.getoption("ckpts_cache_dir")
    if cli:
        return Path(config.invocation_params.dir, os.path.expanduser(cli))
    env = env_value("PYTEST_CKPTS_CACHE_DIR")
    if env:
        return Path(os.path.expanduser(env)).absolute()
    ini = str(config.getini("ckpts_cache_dir") or "")
    if ini:
        return config.rootpath / os.path.expanduser(ini)
    return None
