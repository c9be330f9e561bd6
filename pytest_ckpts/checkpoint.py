"""The ``Checkpoint`` handed to tests, the CLI and library callers."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._extras import require

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
    source: str = "cached"  # "cached" or "downloaded"

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def load(self, map_location: Any = "cpu", *, weights_only: bool = True) -> Any:
        """Load the file with torch (``weights_only=True``) or safetensors.

        ``weights_only=True`` refuses arbitrary pickled objects, which is what keeps a
        tampered checkpoint from running code on your machine; pass
        ``weights_only=False`` only for files you trust.
        """
        if self.path.suffix == ".safetensors":
            st = require("safetensors.torch", "loading .safetensors checkpoints")
            device = map_location if isinstance(map_location, str) else str(map_location)
            return st.load_file(os.fspath(self.path), device=device)
        torch = require("torch", "Checkpoint.load()")
        return torch.load(
            os.fspath(self.path), map_location=map_location, weights_only=weights_only
        )
