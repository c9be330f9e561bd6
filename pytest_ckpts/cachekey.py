"""``pytest-ckpts cache key``: a digest of what the cache will hold, for CI cache keys.

Two manifests that would fill the cache with the same bytes get the same key: the key
covers the endpoint and, per entry, repo, repo type, revision, path in repo, sha256 and
tensor index, and ignores entry order, comments, descriptions, local file names and
``cache_dir``. No network: a branch revision is keyed by its name (pin it with
``pytest-ckpts lock --pin`` for a key that changes exactly when the files do).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

from .manifest import CheckpointSpec, Manifest

__all__ = ["cache_key"]


def cache_key(manifest: Manifest, specs: Iterable[CheckpointSpec], endpoint: str) -> str:
    """Hex sha256 over a canonical JSON of what ``specs`` put in the cache."""
    del manifest  # the key depends on the entries, not on the file they came from
    rows = sorted(
        (
            spec.repo,
            spec.repo_type,
            spec.revision,
            spec.hf_path,
            spec.sha256 or "",
            getattr(spec, "tensor_index", None) or "",
        )
        for spec in specs
    )
    payload = json.dumps({"endpoint": endpoint.rstrip("/"), "entries": rows}, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()
