"""``get_checkpoint()`` and friends: the library API (docs/how-to/writing-tests.md "The library API").

A call resolves its settings when it is made. Outside pytest the environment decides
(``Settings.from_env``). Inside a test of a run with the plugin, the run's command-line
options, then the environment as it is now, then ini, then defaults; the manifest from
the option, else the environment, else ini, else the first ``checkpoints/checkpoints.yaml``
walking up from the current directory (``Settings.from_pytest(discover=True)``). When
that gives the run's manifest, mode and cache directory, the call shares the run's
store (one probe, one lock, one summary and report); otherwise it behaves exactly as
outside pytest. A nested run without the plugin (``-p no:ckpts``) never reaches the
outer run: ``PYTEST_CURRENT_TEST`` names a test the outer run is not running.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .checkpoint import Checkpoint
from .errors import CheckpointSkipped
from .settings import Mode, Settings

if TYPE_CHECKING:
    from .manifest import Manifest
    from .store import Store

__all__ = ["Backend", "fetch_tensors", "get_checkpoint", "resolve_checkpoint", "use_backend"]


class Backend(Protocol):
    """What a running pytest session offers the library (``CkptsSession`` implements it)."""

    @property
    def config(self) -> Any:
        """The run's ``pytest.Config`` (its options and ini, read at call time)."""

    @property
    def current_test(self) -> str | None:
        """The node id of the test this process runs now, if any."""

    def shares(self, settings: Settings) -> bool:
        """Whether a call resolving to ``settings`` uses the run's store."""

    def resolve_for_library(self, name: str, force_download: bool = False) -> Checkpoint: ...

    def resolve_tensors_for_library(self, name: str, tensor_names: list[str]) -> dict[str, Any]: ...


# Backends handed in by running pytest sessions (innermost last). The library never
# imports the plugin; the plugin registers its session here.
_BACKENDS: list[Backend] = []


def use_backend(backend: Backend) -> Callable[[], None]:
    """Offer ``backend`` to library calls until the returned function is called."""
    _BACKENDS.append(backend)

    def undo() -> None:
        if backend in _BACKENDS:
            _BACKENDS.remove(backend)

    return undo


def _running() -> Backend | None:
    """The run whose test (or collection, or session hook) is making this call."""
    current = os.environ.get("PYTEST_CURRENT_TEST")
    nodeid = current.rsplit(" (", 1)[0] if current else None
    for backend in reversed(_BACKENDS):
        # no test phase under way, a run still collecting (its process may have inherited
        # the variable), or the test this run is running
        if nodeid is None or backend.current_test in (None, nodeid):
            return backend
    return None  # a nested run without the plugin: as outside pytest


def _route() -> tuple[Settings, Backend | None]:
    """The settings of this call, and the run to share when they are the run's."""
    run = _running()
    if run is None:
        return Settings.from_env(), None
    settings = Settings.from_pytest(run.config, discover=True)
    return settings, run if run.shares(settings) else None


def _standalone(name: str, settings: Settings) -> tuple[Manifest, Store]:
    """A call that shares no run: ``settings`` decide (docs/how-to/writing-tests.md "The library API")."""
    from .manifest import load_manifest
    from .store import Store

    if settings.mode is Mode.SKIP:
        raise CheckpointSkipped.disabled(name, settings.source("mode"))
    manifest = load_manifest(settings.manifest)
    return manifest, Store.from_settings(manifest, settings)


def resolve_checkpoint(name: str, force_download: bool = False) -> Checkpoint:
    """Like :func:`get_checkpoint` but returns the full :class:`Checkpoint`."""
    settings, run = _route()
    if run is not None:
        return run.resolve_for_library(name, force_download)
    manifest, store = _standalone(name, settings)
    return store.resolve(manifest.get(name), force_download=force_download)


def fetch_tensors(name: str, tensor_names: Sequence[str]) -> dict[str, Any]:
    """Verified tensors of the ``.safetensors`` checkpoint ``name``, without the whole file.

    Reads the header and only the named tensors by HTTP ``Range`` (or from the cache),
    each checked against the entry's tensor index (``pytest-ckpts lock --tensors NAME``);
    returns name -> ``torch.Tensor`` in the order asked. Raises ``TensorIndexError``
    (no, stale or edited index; unknown tensor), ``ChecksumMismatchError`` (bytes that
    do not match the index), ``CheckpointSkipped`` and ``CheckpointDownloadError`` as
    :func:`get_checkpoint` does. docs/how-to/big-checkpoints.md "Reading a few tensors of a huge checkpoint".
    """
    names = [tensor_names] if isinstance(tensor_names, str) else list(tensor_names)
    settings, run = _route()
    if run is not None:  # the run's session (store, mode, summary)
        return run.resolve_tensors_for_library(name, names)
    from .partial import PartialReader

    manifest, store = _standalone(name, settings)
    return PartialReader(store).read(manifest.get(name), names).tensors


def get_checkpoint(name: str, force_download: bool = False) -> Path:
    """Return the local path of checkpoint ``name``, downloading and verifying it.

    Raises ``CheckpointSkipped`` when downloads are disabled
    (``SKIP_CHECKPOINT_DOWNLOAD=true`` or mode ``skip``, or ``offline`` with nothing
    cached), ``KeyError`` for an unknown name (with suggestions),
    ``ChecksumMismatchError`` and ``CheckpointDownloadError``.
    """
    return resolve_checkpoint(name, force_download=force_download).path
