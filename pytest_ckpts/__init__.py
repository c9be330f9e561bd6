"""pytest-ckpts: verified, cached model checkpoints for pytest suites.

The public library API. Everything here is cheap to import: torch, safetensors and
mlflow are only imported by the functions that need them.
"""

from __future__ import annotations

from .api import fetch_tensors, get_checkpoint, resolve_checkpoint
from .checkpoint import Checkpoint
from .errors import (
    CacheError,
    CheckpointDownloadError,
    CheckpointsError,
    CheckpointSkipped,
    CheckpointsWarning,
    ChecksumMismatchError,
    ManifestError,
    TensorIndexError,
    UnsafeCheckpointError,
)
from .integrity import calculate_sha256, verify_checksum
from .manifest import CheckpointSpec, Manifest, load_manifest

__all__ = [
    "CacheError",
    "Checkpoint",
    "CheckpointDownloadError",
    "CheckpointSkipped",
    "CheckpointSpec",
    "CheckpointsError",
    "CheckpointsWarning",
    "ChecksumMismatchError",
    "Manifest",
    "ManifestError",
    "TensorIndexError",
    "UnsafeCheckpointError",
    "calculate_sha256",
    "fetch_tensors",
    "get_checkpoint",
    "load_manifest",
    "resolve_checkpoint",
    "verify_checksum",
]
