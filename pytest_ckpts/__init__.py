"""pytest-ckpts: verified, cached model checkpoints for pytest suites.

The public library API. Everything here is cheap to import: torch, safetensors and
mlflow are only imported by the functions that need them.
"""

from __future__ import annotations

from .errors import (
    CheckpointDownloadError,
    CheckpointsError,
    CheckpointSkipped,
    ChecksumMismatchError,
    ManifestError,
)
from .integrity import calculate_sha256, verify_checksum

__all__ = [
    "CheckpointDownloadError",
    "CheckpointSkipped",
    "CheckpointsError",
    "ChecksumMismatchError",
    "ManifestError",
    "calculate_sha256",
    "verify_checksum",
]
