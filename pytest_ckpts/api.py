"""``get_checkpoint()`` and friends: the library API, compatible with seed 004.

Inside a pytest run the plugin *activates* its session here, so a test that calls
``get_checkpoint()`` directly shares the run's store (one probe, one lock, one
summary) and policy. Outside pytest the environment decides the mode.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .checkpoint import Checkpoint
from .errors import CheckpointSkipped
from .manifest import env_value, load_manifest
from .policy import Mode, library_mode

if TYPE_CHECKING:
    from .session import CkptsSession

__all__ = ["activate", "deactivate", "get_checkpoint", "resolve_checkpoint"]

# The pytest session currently running in this process, if any. A list rather than
# a bare global so nested pytester runs stack and unwind correctly.
_ACTIVE: list[CkptsSession] = []


def activate(session: CkptsSession) -> None:
    _ACTIVE.append(session)


def deactivate(session: CkptsSession) -> None:
    if session in _ACTIVE:
        _ACTIVE.remove(session)


def resolve_checkpoint(name: str, force_download: bool = False) -> Checkpoint:
    """Like :func:`get_checkpoint` but returns the full :class:`Checkpoint`."""
    session = _ACTIVE[-1] if _ACTIVE else None
    if session is not None and session.manifest is not None:
        mode = session.policy.mode
        source = session.policy.source
    else:
        mode = library_mode()
        source = "SKIP_CHECKPOINT_DOWNLOAD=true" if mode is Mode.SKIP else "PYTEST_CKPTS_MODE"
    if mode is Mode.SKIP:
        raise CheckpointSkipped(
            f"Checkpoint download skipped ({source}). Cannot load checkpoint: {name}"
        )
    if session is not None and session.manifest is not None:
        store = session.store
        spec = session.manifest.get(name)
    else:
        from .store import Store

        manifest = load_manifest()
        spec = manifest.get(name)
        cache = env_value("PYTEST_CKPTS_CACHE_DIR")
        store = Store(
            manifest,
            cache_dir=Path(cache).expanduser().absolute() if cache else None,
            offline=mode is Mode.OFFLINE,
        )
    return store.resolve(spec, force_download=force_download)


def get_checkpoint(name: str, force_download: bool = False) -> Path:
    """Return the local path of checkpoint ``name``, downloading and verifying it.

    Raises ``CheckpointSkipped`` when downloads are disabled
    (``SKIP_CHECKPOINT_DOWNLOAD=true`` or mode ``skip``, or ``offline`` with nothing
    cached), ``KeyError`` for an unknown name (with suggestions),
    ``ChecksumMismatchError`` and ``CheckpointDownloadError``.
    """
    return resolve_checkpoint(name, force_download=force_download).path
