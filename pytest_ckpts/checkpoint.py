"""The ``Checkpoint`` handed to tests, the CLI and library callers."""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._loading import CheckpointTensors

__all__ = ["Checkpoint"]


@dataclass(frozen=True)
class Checkpoint:
    """A downloaded checkpoint whose bytes were verified (or hashed, when unverified).

    ``os.fspath(ckpt)`` gives the file path, so a ``Checkpoint`` can be passed
    wherever a path is expected.
    """

    name: str
    path: Path
    sha256: str
    size: int
    revision: str
    description: str = ""
    verified: bool = True
    source: str = "cached"  # "cached", "downloaded" or "stale"
    #: the mirror the bytes came from (redacted), None for the hub or the cache
    mirror: str | None = None

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def load(
        self,
        map_location: Any = "cpu",
        *,
        weights_only: bool = True,
        mmap: bool = True,
        safe_globals: Sequence[Any] | None = None,
    ) -> Any:
        """Load the file, memory-mapped: torch (``weights_only=True``) or safetensors.

        Mapping makes a load cost the object structure, not the file size: a tensor's
        bytes are read when it is touched, and xdist workers share the page cache.
        Writing to a loaded tensor never changes the file (the map is private).
        ``mmap=False`` reads everything into memory the process owns; a legacy
        (non-zip) torch file cannot be mapped and is read that way automatically.
        ``map_location`` works as in ``torch.load`` (also for ``.safetensors``): a
        CPU target copies nothing, another device copies each tensor once.

        ``weights_only=True`` refuses arbitrary pickled objects, which is what keeps a
        tampered checkpoint from running code on your machine. A refusal raises
        ``UnsafeCheckpointError`` naming the type; ``safe_globals=[mod.Class]``
        allow-lists such types while keeping the protection, and
        ``weights_only=False`` is for files you trust entirely. ``.safetensors``
        files hold no pickle, so those two arguments do not apply to them.
        """
        from ._loading import load_checkpoint

        return load_checkpoint(
            self.name,
            self.path,
            map_location,
            weights_only=weights_only,
            mmap=mmap,
            safe_globals=safe_globals,
        )

    def tensors(
        self, *, safe_globals: Sequence[Any] | None = None
    ) -> AbstractContextManager[CheckpointTensors]:
        """A lazy, read-only name → tensor mapping for checking a few tensors of a big file::

            with checkpoints["mp_20_vae"].tensors() as t:
                assert t["decoder.out.weight"].shape == (256, 512)

        Listing the keys reads no tensor data, and looking one up reads that tensor
        only (CPU tensors, memory-mapped). For a torch file the names are its
        top-level tensors or, when it has a ``state_dict`` entry (a training
        checkpoint), that entry's tensors; nested names are joined with ``.``. The
        torch file is read with ``weights_only=True`` (``safe_globals`` as in
        ``load()``); a legacy non-zip torch file cannot be mapped and is read whole.
        """
        from ._loading import open_tensors

        return open_tensors(self.name, self.path, safe_globals=safe_globals)
