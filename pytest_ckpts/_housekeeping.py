"""Cache housekeeping: ``cache info`` (sizes) and ``cache prune`` (what the manifest no
longer names, abandoned partial files, records of crashed runs). A mixin of
:class:`~pytest_ckpts.cache.Cache`, kept apart so the cache class is paths and stamps.
No network.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, cast

from ._stamps import LOG_NAME, stamp_log
from .errors import CacheError
from .manifest import Manifest, is_pinned

if TYPE_CHECKING:
    from .cache import Cache

__all__ = ["CacheHousekeeping"]

logger = logging.getLogger("pytest_ckpts")


class CacheHousekeeping:
    """Base of ``Cache``: sizes and pruning (docs/how-to/manage-checkpoints.md)."""

    def info(self, manifest: Manifest) -> _c.CacheInfo:
        """Sizes per repo folder and which manifest entries are cached."""
        cache = cast("Cache", self)
        result = _c.CacheInfo(root=cache.root)
        for repo in cache.repo_dirs():
            size = 0
            for f in _c._walk_files(repo / "blobs"):
                if f.name.endswith(_c.INCOMPLETE):
                    result.incomplete.append(f)
                elif f.is_file():
                    size += f.stat().st_size
            result.repos[repo.name] = size
        for spec in manifest.entries.values():
            (result.cached if cache.cached_path(spec) else result.missing).append(spec.name)
        for f in _c._walk_files(cache.root / _c.META_DIR / "tensors"):
            result.tensor_files += 1
            result.tensor_bytes += f.stat().st_size
        return result

    def prune(self, manifest: Manifest, *, dry_run: bool = False) -> _c.PruneResult:
        """Remove what the manifest no longer names, and downloads nobody is finishing.

        Kept: the snapshot files (and blobs) each entry resolves to now. An
        ``.incomplete`` file is removed only when the lock of the download that owns it
        can be taken at once: a download in flight in another process keeps its lock.
        """
        cache = cast("Cache", self)
        keep_links: set[Path] = set()
        keep_blobs: set[Path] = set()
        for spec in manifest.entries.values():
            path = cache.cached_path(spec)
            if path is not None:
                keep_links.add(path.absolute())
                keep_blobs.add(path.resolve())
        result = _c.PruneResult()
        for repo in cache.repo_dirs():
            forgotten: list[str] = []
            for f in sorted(_c._walk_files(repo / "snapshots")):
                if f.absolute() not in keep_links:
                    result.removed_links += 1
                    if not dry_run:
                        f.unlink()
            for blob in sorted(_c._walk_files(repo / "blobs")):
                if blob.name.endswith(_c.INCOMPLETE):
                    if cache._abandoned(repo, blob):
                        result.removed_incomplete.append(blob)
                        result.freed += blob.stat().st_size
                        if not dry_run:
                            blob.unlink(missing_ok=True)
                    continue
                if blob.resolve() not in keep_blobs:
                    result.freed += blob.stat().st_size
                    result.removed_blobs.append(blob)
                    if not dry_run:
                        blob.unlink()
                        forgotten.append(blob.name)
            if forgotten:
                stamp_log(cache.stamps_root() / repo.name / LOG_NAME).forget(forgotten)
            if not dry_run:
                _c._remove_empty_dirs(repo / "snapshots")
                _c._drop_dangling_refs(repo)
                if not any(_c._walk_files(repo / "blobs")) and not any(
                    _c._walk_files(repo / "snapshots")
                ):
                    import shutil

                    shutil.rmtree(repo)
        cache._prune_pieces(manifest, result, dry_run=dry_run)
        if not dry_run:
            cache.cleanup_runs()  # records of runs that crashed before removing theirs
        return result

    def _prune_pieces(self, manifest: Manifest, result: _c.PruneResult, *, dry_run: bool) -> None:
        """Pieces of partial reads survive only for entries with a tensor index.

        A pinned entry keeps the pieces of its commit; a branch keeps those of every
        commit it was read at (they are verified against the index on every read).
        """
        cache = cast("Cache", self)
        keep: list[Path] = []
        for spec in manifest.entries.values():
            if getattr(spec, "tensor_index", None) is None:
                continue
            commits = [spec.revision] if is_pinned(spec.revision) else cache.piece_commits(spec)
            for commit in commits:
                try:
                    keep.append(cache.pieces_dir(spec, commit).absolute())
                except CacheError:
                    continue
        root = cache.root / _c.META_DIR / "tensors"
        for f in sorted(_c._walk_files(root)):
            if not any(f.absolute().is_relative_to(k) for k in keep):
                result.removed_tensors.append(f)
                result.freed += f.stat().st_size
                if not dry_run:
                    f.unlink(missing_ok=True)
        if not dry_run:
            _c._remove_empty_dirs(root)

    def _abandoned(self, repo: Path, incomplete: Path) -> bool:
        """No process holds the lock that guards ``incomplete``."""
        cache = cast("Cache", self)
        from filelock import FileLock, Timeout

        name = incomplete.name[: -len(_c.INCOMPLETE)]
        if name.startswith("."):  # ours: .<lock key>.<commit>.incomplete
            lock = cache.root / _c.META_DIR / "locks" / f"{name[1:].split('.')[0]}.lock"
        else:  # huggingface_hub's own: <etag>.incomplete, locked in <cache>/.locks/
            lock = cache.hub / ".locks" / repo.name / f"{name}.lock"
        if not lock.exists():
            return True
        try:
            with FileLock(str(lock), timeout=0):
                return True
        except Timeout:
            return False
        except OSError:
            return False

    def cleanup_runs(self, *, older_than: float = 24 * 3600.0) -> None:
        """Remove run-state files of runs that ended long ago (crashed runs leave them)."""
        cache = cast("Cache", self)
        now = time.time()
        for f in _c._iter_dir(cache.runs_dir()):
            try:
                if now - f.stat().st_mtime > older_than:
                    f.unlink()
            except OSError:
                pass


# Last, so either module can be imported first (cache.py imports this one for its base).
from . import cache as _c  # noqa: E402
