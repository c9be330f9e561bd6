"""Hook specifications: let conftest code observe what the plugin does.

Implement any of these in a ``conftest.py`` (or a plugin) to log, time or audit
checkpoint use. They are called in the process that did the work (an xdist worker
under ``-n``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .checkpoint import Checkpoint


def pytest_ckpts_resolved(config: pytest.Config, checkpoint: Checkpoint) -> None:
    """A checkpoint is ready for a test (``checkpoint.source`` is "cached", "downloaded" or "stale")."""


def pytest_ckpts_downloaded(
    config: pytest.Config, name: str, path: Path, nbytes: int, seconds: float
) -> None:
    """A checkpoint file finished downloading from the hub."""


def pytest_ckpts_verified(
    config: pytest.Config, name: str, path: Path, sha256: str, ok: bool, seconds: float
) -> None:
    """A checkpoint file was hashed; ``ok`` is False on a checksum mismatch."""
