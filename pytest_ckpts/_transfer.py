"""File-system side of a download: temp file, chunks, blob, snapshot link, progress bar.

Every ``OSError`` becomes one :class:`~pytest_ckpts.errors.CacheError` line that names
the checkpoint, the path and the fix (disk full: the bytes needed; read-only: a writable
cache dir). A local failure is never a skip.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import CacheError, Fix
from .manifest import CheckpointSpec

__all__ = [
    "blocked_dir_error",
    "etag_of",
    "link_snapshot",
    "make_dir",
    "open_for_write",
    "progress_bar",
    "write_chunk",
]


def etag_of(response: Any) -> str | None:
    raw = response.headers.get("X-Linked-Etag") or response.headers.get("ETag")
    if not raw:
        return None
    value = str(raw).strip()
    value = value.removeprefix("W/").strip('"')
    return value or None


def make_dir(path: Path, spec: CheckpointSpec) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise (blocked_dir_error(path, spec) or _cache_error(spec, path, exc, None)) from None


def blocked_dir_error(path: Path, spec: CheckpointSpec) -> CacheError | None:
    """The one line for a directory that cannot be made because something in the way is
    not a directory (a dangling symlink: a volume not mounted), naming that thing."""
    for p in (path, *path.parents):
        if p.is_symlink() and not p.exists():
            why = f"{p} is a dangling symlink (to {os.readlink(p)}); create its target or remove it"
        elif p.exists() and not p.is_dir():
            why = f"{p} exists but is not a directory; remove it"
        elif p.is_dir():
            return None
        else:
            continue
        return CacheError(
            f"pytest-ckpts: cannot use the cache for checkpoint '{spec.name}': {why}.",
            entry=spec.name,
            cause=why,
            fixes=(Fix.set("cache_dir"),),
        )
    return None


def _cache_error(spec: CheckpointSpec, path: Path, exc: OSError, need: int | None) -> CacheError:
    import errno

    if exc.errno == errno.ENOSPC:
        import shutil

        where = path.parent
        try:
            free = f", {shutil.disk_usage(where).free} bytes free"
        except OSError:
            free = ""
        size = f" ({need} bytes needed{free})" if need else ""
        why = f"the disk is full{size}"
        fixes: tuple[Fix, ...] = (Fix.say("free space"), Fix.set("cache_dir", why="elsewhere"))
        path = where  # name the cache directory, not the temp file that was removed
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        why = (
            "the cache is read-only; a read-only cache can serve what it holds, but "
            "downloading needs a writable one"
        )
        fixes = (Fix.set("cache_dir", why="(a writable directory)"),)
    else:
        why = f"{type(exc).__name__}: {exc.strerror or exc}"
        fixes = ()
    return CacheError(
        f"pytest-ckpts: cannot write checkpoint '{spec.name}' to {path}: {why}"
        + ("." if fixes else ""),
        entry=spec.name,
        cause=why,
        fixes=fixes,
    )


@contextmanager
def open_for_write(path: Path, mode: str, spec: CheckpointSpec) -> Iterator[Any]:
    try:
        f = open(path, mode)  # noqa: SIM115 - closed below
    except OSError as exc:
        raise _cache_error(spec, path, exc, None) from None
    try:
        yield f
    finally:
        f.close()


def write_chunk(f: Any, chunk: bytes, path: Path, spec: CheckpointSpec, response: Any) -> None:
    try:
        f.write(chunk)
    except OSError as exc:
        length = response.headers.get("Content-Length")
        raise _cache_error(
            spec, path, exc, int(length) if length and length.isdigit() else None
        ) from None


def link_snapshot(link: Path, blob: Path, spec: CheckpointSpec) -> None:
    """Point the snapshot path at the blob, relative as huggingface_hub does (copy if no symlinks)."""
    make_dir(link.parent, spec)
    target = os.path.relpath(blob, link.parent)
    try:  # no link yet (a cold cache): one symlink, itself atomic; no temp name, no rename
        os.symlink(target, link)
        return
    except OSError:
        pass  # a link to replace, or no symlinks here: the temp name and rename below
    tmp = link.with_name(f".{link.name}.{os.getpid()}.link")
    try:
        tmp.unlink(missing_ok=True)
        try:
            os.symlink(target, tmp)
        except OSError:
            import shutil

            shutil.copyfile(blob, tmp)
        os.replace(tmp, link)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _cache_error(spec, link, exc, None) from None


@contextmanager
def progress_bar(
    show: bool, spec: CheckpointSpec, response: Any, initial: int
) -> Iterator[Callable[[int], None]]:
    if not show:
        yield lambda n: None
        return
    from huggingface_hub.utils import tqdm  # type: ignore[attr-defined]

    length = response.headers.get("Content-Length")
    total = int(length) + initial if length and length.isdigit() else None
    with tqdm(  # type: ignore[no-untyped-call]
        total=total, initial=initial, unit="B", unit_scale=True, desc=spec.name
    ) as bar:
        yield bar.update
