"""``get_checkpoint()`` and friends: the library API (README "Library API").

Inside a pytest run the plugin registers a resolver here, so a test that calls
``get_checkpoint()`` directly shares the run's store (one probe, one lock, one
summary) and settings. Outside pytest the environment decides (``Settings.from_env``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .checkpoint import Checkpoint
from .errors import CheckpointSkipped
from .settings import Mode, Settings

__all__ = ["fetch_tensors", "get_checkpoint", "resolve_checkpoint", "use_resolver"]

Resolver = Callable[[str, bool], Checkpoint]

# Resolvers handed in by a running pytest session (innermost last), so a test that
# calls ``get_checkpoint()`` shares the run's store, mode and --ckpts-strict. The
# library never imports the plugin; the plugin registers itself here.
_RESOLVERS: list[Resolver] = []


def use_resolver(resolver: Resolver) -> Callable[[], None]:
    """Route library calls through ``resolver`` until the returned function is called."""
    _RESOLVERS.append(resolver)

    def undo() -> None:
        if resolver in _RESOLVERS:
            _RESOLVERS.remove(resolver)

    return undo


def resolve_checkpoint(name: str, force_download: bool = False) -> Checkpoint:
    """Like :func:`get_checkpoint` but returns the full :class:`Checkpoint`."""
    if _RESOLVERS:
        return _RESOLVERS[-1](name, force_download)
    from .manifest import load_manifest
    from .store import Store

    settings = Settings.from_env()
    if settings.mode is Mode.SKIP:
        raise CheckpointSkipped(
            f"Checkpoint download skipped ({settings.source('mode')}). "
            f"Cannot load checkpoint: {name}"
        )
    manifest = load_manifest(settings.manifest)
    spec = manifest.get(name)
    store = Store(
        manifest,
        cache_dir=settings.cache_dir,
        offline=settings.mode is Mode.OFFLINE,
        retry_budget=settings.retry_budget,
        trust_endpoint=settings.trust_manifest_endpoint,
    )
    return store.resolve(spec, force_download=force_download)


def fetch_tensors(name: str, tensor_names: Sequence[str]) -> dict[str, Any]:
    """Verified tensors of the ``.safetensors`` checkpoint ``name``, without the whole file.

    Reads the header and only the named tensors by HTTP ``Range`` (or from the cache),
    each checked against the entry's tensor index (``pytest-ckpts lock --tensors NAME``);
    returns name -> ``torch.Tensor`` in the order asked. Raises ``TensorIndexError``
    (no, stale or edited index; unknown tensor), ``ChecksumMismatchError`` (bytes that
    do not match the index), ``CheckpointSkipped`` and ``CheckpointDownloadError`` as
    :func:`get_checkpoint` does. README "Reading a few tensors of a huge checkpoint".
    """
    names = [tensor_names] if isinstance(tensor_names, str) else list(tensor_names)
    if _RESOLVERS:  # inside a pytest run: the run's session (store, mode, summary)
        session = getattr(_RESOLVERS[-1], "__self__", None)
        read = getattr(session, "resolve_tensors_for_library", None)
        if read is not None:
            tensors: dict[str, Any] = read(name, names)
            return tensors
    from .manifest import load_manifest
    from .partial import PartialReader
    from .store import Store

    settings = Settings.from_env()
    if settings.mode is Mode.SKIP:
        raise CheckpointSkipped(
            f"Checkpoint download skipped ({settings.source('mode')}). "
            f"Cannot load checkpoint: {name}"
        )
    manifest = load_manifest(settings.manifest)
    store = Store(
        manifest,
        cache_dir=settings.cache_dir,
        offline=settings.mode is Mode.OFFLINE,
        retry_budget=settings.retry_budget,
        trust_endpoint=settings.trust_manifest_endpoint,
    )
    return PartialReader(store).read(manifest.get(name), names).tensors


def get_checkpoint(name: str, force_download: bool = False) -> Path:
    """Return the local path of checkpoint ``name``, downloading and verifying it.

    Raises ``CheckpointSkipped`` when downloads are disabled
    (``SKIP_CHECKPOINT_DOWNLOAD=true`` or mode ``skip``, or ``offline`` with nothing
    cached), ``KeyError`` for an unknown name (with suggestions),
    ``ChecksumMismatchError`` and ``CheckpointDownloadError``.
    """
    return resolve_checkpoint(name, force_download=force_download).path
