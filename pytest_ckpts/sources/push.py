"""Fill a mirror from the cache and check what it holds (``pytest-ckpts mirror push|verify``).

Push uploads verified cached files (the caller resolves them first, fetching what is
missing) and skips objects already present with the right size. Writes are atomic: a
temp name then a rename on folders; on object stores the object appears whole when its
upload completes (S3 and GCS never show a partial object). Verify reads each object
back and hashes it, or with ``quick`` checks presence and size only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import MirrorKind, MirrorUnavailable
from .backends import Backend
from .fetch import MirrorSet, hash_stream
from .template import Mirror, redact_url

if TYPE_CHECKING:
    from ..manifest import CheckpointSpec

__all__ = ["Outcome", "push_one", "verify_one"]


@dataclass
class Outcome:
    """One entry's result, in the shape of ``--json`` rows."""

    name: str
    status: str  # push: uploaded|present|skipped|failed; verify: ok|present|missing|mismatch|skipped|failed
    sha256: str | None = None
    size: int | None = None
    url: str | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def push_one(
    mirrors: MirrorSet, mirror: Mirror, spec: CheckpointSpec, local: Path, size: int
) -> Outcome:
    """Upload ``local`` (the verified file of ``spec``) unless the mirror has it whole."""
    url = mirror.url(spec)
    result = Outcome(spec.name, "present", spec.sha256, size, redact_url(url))

    def present(backend: Backend) -> int | None:
        return backend.size(url)

    def put(backend: Backend) -> None:
        backend.put(local, url)

    try:
        if mirrors.attempt(mirror, present) != size:
            mirrors.attempt(mirror, put)
            result.status = "uploaded"
    except MirrorUnavailable as exc:
        result.status, result.error = "failed", exc.text
    return result


def verify_one(mirrors: MirrorSet, mirror: Mirror, spec: CheckpointSpec, *, quick: bool) -> Outcome:
    """Read ``spec``'s object back and hash it (``quick``: presence and size only)."""
    url = mirror.url(spec)
    result = Outcome(spec.name, "ok", spec.sha256, None, redact_url(url))

    def size(backend: Backend) -> int | None:
        return backend.size(url)

    def digest(backend: Backend) -> tuple[str, int]:
        with backend.stream(url) as chunks:
            return hash_stream(chunks)

    try:
        result.size = mirrors.attempt(mirror, size)
        if result.size is None:
            result.status, result.error = "missing", "not on the mirror"
        elif quick:
            if spec.size is not None and result.size != spec.size:
                result.status = "mismatch"
                result.error = f"size {result.size}, the manifest says {spec.size}"
            else:
                result.status = "present"
        else:
            actual, result.size = mirrors.attempt(mirror, digest)
            if actual != spec.sha256:
                result.status, result.error = "mismatch", f"actual sha256 {actual}"
    except MirrorUnavailable as exc:
        status = "missing" if exc.kind is MirrorKind.MISSING else "failed"
        result.status, result.error = status, exc.text
    return result
