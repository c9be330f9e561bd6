"""``get_checkpoint()`` and friends: the library API (docs/how-to/writing-tests.md "The library API").

Inside a pytest run the plugin registers a resolver here, so a test that calls
``get_checkpoint()`` directly shares the run's store (one probe, one lock, one
summary) and settings. Outside pytest the environment decides (``Settings.from_env``).
"""

from __future__ import annotations

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

    def resolve_for_library(self, name: str, force_download: bool = False) -> Checkpoint: ...

    def resolve_tensors_for_library(self, name: str, tensor_names: list[str]) -> dict[str, Any]: ...


# Backends handed in by running pytest sessions (innermost last), so a test that calls
# ``get_checkpoint()`` shares the run's store, mode and --ckpts-strict. The library never
# imports the plugin; the plugin registers its session here.
_BACKENDS: list[Backend] = []


def use_backend(backend: Backend) -> Callable[[], None]:
    """Route library calls through ``backend`` until the returned function is called."""
    _BACKENDS.append(backend)

    def undo() -> None:
        if backend in _BACKENDS:
            _BACKENDS.remove(backend)

    return undo


def _standalone(name: str) -> tuple[Manifest, Store]:
    """Outside pytest: the environment decides (docs/how-to/writing-tests.md "The library API")."""
    from .manifest import load_manifest
    from .store import Store

    settings = Settings.from_env()
    if settings.mode is Mode.SKIP:
        raise CheckpointSkipped(
            f"Checkpoint download skipped ({settings.source('mode')}). "
            f"Cannot load checkpoint: {name}"
        )
    manifest = load_manifest(settings.manifest)
    return manifest, Store.from_settings(manifest, settings)


def resolve_checkpoint(name: str, force_download: bool = False) -> Checkpoint:
    """Like :func:`get_checkpoint` but returns the full :class:`Checkpoint`."""
    if _BACKENDS:
        return _BACKENDS[-1].resolve_for_library(name, force_download)
    manifest, store = _standalone(name)
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
    if _BACKENDS:  # inside a pytest run: the run's session (store, mode, summary)
        return _BACKENDS[-1].resolve_tensors_for_library(name, names)
    from .partial import PartialReader

    manifest, store = _standalone(name)
    return PartialReader(store).read(manifest.get(name), names).tensors


def get_checkpoint(name: str, force_download: bool = False) -> Path:
    """Return the local path of checkpoint ``name``, downloading and verifying it.

    Raises ``CheckpointSkipped`` when downloads are disabled
    (``SKIP_CHECKPOINT_DOWNLOAD=true`` or mode ``skip``, or ``offline`` with nothing
    cached), ``KeyError`` for an unknown name (with suggestions),
    ``ChecksumMismatchError`` and ``CheckpointDownloadError``.
    """
    return resolve_checkpoint(name, force_download=force_download).path
