"""The checkpoint cache on disk: paths, verification stamps, info and prune. No network.

Files live in a huggingface_hub cache (``<repo_type>s--<owner>--<name>/{blobs,snapshots,
refs}``), so ``hf_hub_download(..., local_files_only=True)``, ``try_to_load_from_cache``,
``scan_cache_dir`` and ``hf cache ls`` read what we stored; ours alone lives in ``.ckpts/``
beside it, never inside it (huggingface_hub's scan reports any foreign entry as corrupt)::

    <root>/hub/models--acme--ckpts/snapshots/<commit>/<hf_path> -> ../../blobs/<etag>
    <root>/hub/models--acme--ckpts/refs/<branch>              the commit a branch last resolved to
    <root>/.ckpts/stamps/<repo folder>/stamps.jsonl         what we knew when we last hashed each blob
    <root>/.ckpts/locks/<key>.lock                            one download per file, any process
    <root>/.ckpts/tensors/<repo folder>/<commit>/<hf_path>/<sha256>.bin
                                                              verified pieces of partial reads

``<root>`` is the manifest's ``cache_dir`` (or ``--ckpts-cache-dir``): it is laid out like
``HF_HOME``, and ``<root>/hub`` is what ``hf cache ls --cache-dir`` reads. Without a
``cache_dir`` the cache is huggingface_hub's own: ``<root>`` is ``HF_HOME`` and the hub
cache ``HF_HUB_CACHE`` (``Cache.hub_dir``) when that is set elsewhere. A cache written by
earlier versions of pytest-ckpts kept the repo folders in ``<root>`` itself: :meth:`Cache.ready`
moves them into ``hub/`` once, under a lock (a read-only one is read where it is).

Every path built from manifest or server text goes through :func:`contained`: a revision
such as ``../../x`` can never name a file outside the cache.

A *stamp* records (size, mtime, ctime, inode, sha256) after a successful hash. A later
resolve trusts the file when ``stat`` still agrees: microseconds instead of a re-hash.
A rewrite that restores mtime still changes ctime (only the kernel sets it), and a copy
into place gets a new inode or ctime. A cache restored by a CI cache action therefore
re-hashes every file once and is stamped again (docs/how-to/ci.md "The recipe (GitHub Actions)" gives the cost).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ._housekeeping import CacheHousekeeping
from ._stamps import LOG_NAME, Stamp, StampLog, blob_name, stamp_log_for
from .errors import CacheError
from .integrity import atomic_write_text
from .manifest import CheckpointSpec, Manifest, is_pinned
from .settings import hf_cache_dirs

__all__ = ["Cache", "CacheInfo", "PruneResult", "Stamp", "contained", "repo_folder_name"]

logger = logging.getLogger("pytest_ckpts")

META_DIR = ".ckpts"
HUB_DIR = "hub"  # huggingface_hub's cache inside a cache_dir, as in HF_HOME
INCOMPLETE = ".incomplete"
#: what huggingface_hub keeps in its cache folder: moved from the old layout into ``hub/``
_REPO_PREFIXES = ("models--", "datasets--", "spaces--")
#: huggingface_hub's own lock folder: pytest-ckpts never writes it, so a cache_dir that has
#: one is shared with huggingface_hub's tools and is read in place, never moved
_HUB_ENTRIES = (".locks",)


_REPO_DIRS: dict[tuple[Path, Path | None, str, str], Path] = {}


@functools.lru_cache(maxsize=65536)
def _lock_key(repo_type: str, repo: str, hf_path: str) -> str:
    """The name of a file's lock (and partial download): asked ~4x per file resolved."""
    text = f"{repo_type}\0{repo}\0{hf_path}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def repo_folder_name(*, repo_id: str, repo_type: str) -> str:
    """huggingface_hub's ``file_download.repo_folder_name``, without importing the client.

    Importing ``huggingface_hub.file_download`` costs ~0.2 s; a warm run must not pay it
    in every xdist worker. ``tests/test_cache.py`` checks both agree.
    """
    return "--".join([f"{repo_type}s", *repo_id.split("/")])


def contained(root: Path, relative: str, *, what: str) -> Path:
    """``root / relative``, refusing anything that would leave ``root``.

    Manifest and server text (revisions, paths) becomes file names here; ``..``, absolute
    paths, backslashes and NUL are refused with a :class:`CacheError` naming ``what``.
    """
    parts = relative.split("/")
    if (
        not relative
        or relative.startswith("/")
        or "\\" in relative
        or "\0" in relative
        or any(p in ("", ".", "..") for p in parts)
    ):
        raise CacheError(
            f"pytest-ckpts: refusing {what} {relative!r}: it would not stay inside the cache "
            f"{root} (no '..', absolute paths, backslashes or empty parts). Fix the manifest."
        )
    return root.joinpath(*parts)


@dataclass
class CacheInfo:
    """What ``pytest-ckpts cache info`` prints."""

    root: Path
    repos: dict[str, int] = field(default_factory=dict)  # repo folder -> bytes of blobs
    cached: list[str] = field(default_factory=list)  # manifest names with a cached file
    missing: list[str] = field(default_factory=list)
    incomplete: list[Path] = field(default_factory=list)
    tensor_bytes: int = 0  # verified pieces kept by partial reads (docs/how-to/big-checkpoints.md "Reading a few tensors of a huge checkpoint")
    tensor_files: int = 0

    @property
    def total(self) -> int:
        return sum(self.repos.values())


@dataclass
class PruneResult:
    """What ``pytest-ckpts cache prune`` removed (or would remove)."""

    removed_blobs: list[Path] = field(default_factory=list)
    removed_links: int = 0
    removed_incomplete: list[Path] = field(default_factory=list)
    removed_tensors: list[Path] = field(default_factory=list)
    freed: int = 0


def _walk_files(root: Path) -> Iterator[Path]:
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            yield Path(dirpath) / f


@dataclass(frozen=True)
class Cache(CacheHousekeeping):
    """Paths and stamps under one cache root. Cheap to build; touches disk only when asked.

    ``root`` holds our state (``.ckpts/``); the huggingface_hub cache is ``hub_dir``, by
    default ``root/hub``.
    """

    root: Path
    hub_dir: Path | None = None

    @classmethod
    def in_force(cls, override: Path | None, manifest: Manifest) -> Cache:
        """The one decision of which cache a run, a command or a call uses: the override
        (``--ckpts-cache-dir``, ``--cache-dir``, ``PYTEST_CKPTS_CACHE_DIR``, ini), else the
        manifest's ``cache_dir``, else huggingface_hub's own (read now)."""
        return cls.locate(override or manifest.cache_dir)

    @classmethod
    def locate(cls, cache_dir: Path | None, env: Mapping[str, str] | None = None) -> Cache:
        """The cache of ``cache_dir`` (the manifest's or an override), else huggingface_hub's
        own (``HF_HUB_CACHE``, ``HF_HOME``, read now)."""
        home, hub = hf_cache_dirs(env)
        if cache_dir is not None and not _same_dir(cache_dir, hub or home / HUB_DIR):
            return cls(cache_dir)
        return cls(home, hub)  # a cache_dir naming huggingface_hub's cache is that cache

    @property
    def hub(self) -> Path:
        """huggingface_hub's cache folder: what ``hf cache ls --cache-dir`` and
        ``scan_cache_dir`` read, and ``HF_HUB_CACHE`` for other tools."""
        return self.hub_dir if self.hub_dir is not None else self.root / HUB_DIR

    def ready(self) -> Cache:
        """This cache, its old layout (repo folders in ``root``) moved into ``hub/`` first.

        Done once, under a lock, each move a rename (atomic, stamps stay valid); a repo
        folder also present in ``hub/`` is merged file by file. A cache that cannot be
        changed (read-only, a lock that cannot be made) is read where it is, and so is one
        huggingface_hub writes to as well (it has ``.locks/``): moving it would break the
        other tools using it. Costs one ``scandir`` of ``root`` when there is nothing to move.
        """
        if self.hub_dir is not None:
            return self._state_out_of_hub()
        old = _old_entries(self.root)
        if not old:
            return self
        if ".locks" in old:  # huggingface_hub itself writes here: other tools use this folder
            return Cache(self.root, self.root)
        from filelock import FileLock, Timeout

        lock_path = self.root / META_DIR / "locks" / "layout.lock"
        try:
            lock_path.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(lock_path), timeout=600):
                moved = _move_into(self.root, self.hub)
        except (OSError, Timeout) as exc:
            logger.debug("pytest-ckpts: reading the cache %s in place: %s", self.root, exc)
            return Cache(self.root, self.root)
        if moved:
            logger.info(
                "pytest-ckpts: moved %d folder(s) of the cache %s into %s (huggingface_hub's "
                "cache tools read that folder)",
                moved,
                self.root,
                self.hub,
            )
        return self

    def _state_out_of_hub(self) -> Cache:
        """State an earlier version kept inside huggingface_hub's cache (a ``cache_dir``
        naming it) moves beside it, once; where that cannot be done it stays."""
        inside, state = self.hub / META_DIR, self.root / META_DIR
        if self.hub != self.root and inside.is_dir() and not state.exists():
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                os.rename(inside, state)
            except OSError as exc:
                logger.debug("pytest-ckpts: cannot move %s to %s: %s", inside, state, exc)
        return self

    # ------------------------------------------------------------------ paths
    def repo_dir(self, spec: CheckpointSpec) -> Path:
        key = (self.root, self.hub_dir, spec.repo_type, spec.repo)
        found = _REPO_DIRS.get(key)  # built once per repo and process (called ~5x per file)
        if found is None:
            if len(_REPO_DIRS) > 10_000:
                _REPO_DIRS.clear()
            found = _REPO_DIRS[key] = self.hub / repo_folder_name(
                repo_id=spec.repo, repo_type=spec.repo_type
            )
        return found

    def snapshot(self, spec: CheckpointSpec, commit: str) -> Path:
        """Where the file of ``spec`` at ``commit`` lives (a link into ``blobs/``)."""
        snapshots = self.repo_dir(spec) / "snapshots"
        return contained(snapshots, f"{commit}/{spec.hf_path}", what="path")

    def ref_path(self, spec: CheckpointSpec) -> Path:
        return contained(self.repo_dir(spec) / "refs", spec.revision, what="revision")

    def blobs(self, spec: CheckpointSpec) -> Path:
        return self.repo_dir(spec) / "blobs"

    def lock_key(self, spec: CheckpointSpec) -> str:
        return _lock_key(spec.repo_type, spec.repo, spec.hf_path)

    def lock_path(self, spec: CheckpointSpec) -> Path:
        return self.root / META_DIR / "locks" / f"{self.lock_key(spec)}.lock"

    def incomplete_path(self, spec: CheckpointSpec, commit: str) -> Path:
        """A download in flight or stopped: beside its blob (same file system, so rename is
        atomic), named by file and commit so the next download, in any process, continues
        it (only the holder of the file's lock writes it)."""
        return contained(
            self.blobs(spec), f".{self.lock_key(spec)}.{commit}{INCOMPLETE}", what="commit"
        )

    def stamps_root(self) -> Path:
        """Where stamps live (the one line that places them; ``_stamps`` has the format)."""
        return self.root / META_DIR / "stamps"

    def stamps_dir(self, spec: CheckpointSpec) -> Path:
        folder = repo_folder_name(repo_id=spec.repo, repo_type=spec.repo_type)
        return self.stamps_root() / folder

    def stamp_path(self, spec: CheckpointSpec, blob: Path) -> Path:
        """The file that holds ``blob``'s stamp: its repo's stamp log (see ``_stamps``)."""
        return self.stamps_dir(spec) / LOG_NAME

    # ------------------------------------------------------------------ partial reads
    def tensors_root(self, spec: CheckpointSpec) -> Path:
        folder = repo_folder_name(repo_id=spec.repo, repo_type=spec.repo_type)
        return self.root / META_DIR / "tensors" / folder

    def pieces_dir(self, spec: CheckpointSpec, commit: str) -> Path:
        """Verified byte ranges of ``spec`` at ``commit``, each named by its sha256."""
        return contained(self.tensors_root(spec), f"{commit}/{spec.hf_path}", what="path")

    def piece_path(self, spec: CheckpointSpec, commit: str, sha256: str) -> Path:
        return contained(self.pieces_dir(spec, commit), f"{sha256}.bin", what="piece name")

    def piece_lock_path(self, spec: CheckpointSpec, commit: str, sha256: str) -> Path:
        """One fetch per piece, any process (the lock of the whole file is not taken)."""
        text = f"{self.lock_key(spec)}\0{commit}\0{sha256}"
        key = hashlib.sha256(text.encode()).hexdigest()[:24]
        return self.root / META_DIR / "locks" / f"tensor-{key}.lock"

    def piece_commits(self, spec: CheckpointSpec) -> list[str]:
        """Commits with pieces of ``spec`` cached, most recently written first."""
        found = []
        for d in _iter_dir(self.tensors_root(spec)):
            if is_pinned(d.name):
                try:
                    found.append((self.pieces_dir(spec, d.name).stat().st_mtime, d.name))
                except (OSError, CacheError):
                    continue
        return [commit for _, commit in sorted(found, reverse=True)]

    def runs_dir(self) -> Path:
        return self.root / META_DIR / "runs"

    # ------------------------------------------------------------------ refs
    def cached_commit(self, spec: CheckpointSpec) -> str | None:
        """The commit a branch pointed at when last resolved (no network)."""
        if is_pinned(spec.revision):
            return spec.revision
        try:
            commit = self.ref_path(spec).read_text().strip()
        except (OSError, CacheError):
            return None
        return commit if is_pinned(commit) else None

    def write_ref(self, spec: CheckpointSpec, commit: str) -> None:
        if is_pinned(spec.revision):
            return
        ref = self.ref_path(spec)
        try:
            if ref.read_text().strip() == commit:
                return
        except OSError:
            pass
        try:
            atomic_write_text(ref, commit)
        except OSError as exc:  # read-only cache: the file is verified all the same
            logger.debug("pytest-ckpts: cannot record ref %s: %s", ref, exc)

    def cached_path(self, spec: CheckpointSpec) -> Path | None:
        """The local file for ``spec`` if one is cached (unverified), else None."""
        commit = self.cached_commit(spec)
        if commit is None:
            return None
        path = self.snapshot(spec, commit)
        return path if path.exists() else None

    # ------------------------------------------------------------------ stamps
    def _stamp_log(self, spec: CheckpointSpec) -> StampLog:
        key = (os.fspath(self.root), spec.repo_type, spec.repo)  # no path built when known
        return stamp_log_for(key, lambda: self.stamps_dir(spec) / LOG_NAME)

    def read_stamp(self, spec: CheckpointSpec, blob: Path) -> Stamp | None:
        return self._stamp_log(spec).get(blob.name)

    def trusted_stamp(
        self, spec: CheckpointSpec, path: Path, st: os.stat_result | None = None
    ) -> Stamp | None:
        """The stamp vouching for ``path`` as the manifest's bytes, if stat still agrees.

        ``st``: ``os.stat(path)`` when the caller has it. No hashing, no realpath once
        this process has seen ``path`` lead to this inode.
        """
        try:
            st = st if st is not None else os.stat(path)
        except OSError:
            return None
        name = blob_name(path, st)
        stamp = self._stamp_log(spec).lookup(name, lambda s: s.agrees(st))
        if stamp is None:
            return None
        if spec.sha256 is not None and stamp.sha256 != spec.sha256:
            return None
        return stamp

    def write_stamp(self, spec: CheckpointSpec, blob: Path, stamp: Stamp) -> bool:
        """Store ``stamp``; False on a read-only cache (the caller keeps it in memory)."""
        return self._stamp_log(spec).append(blob.name, stamp)

    def revoke_stamp(self, spec: CheckpointSpec, blob: Path) -> None:
        """A mismatch was found: this file must be hashed again before it is trusted."""
        self._stamp_log(spec).forget([blob.name])

    def discard(self, spec: CheckpointSpec, path: Path) -> None:
        """Remove a bad copy (its snapshot link, blob and stamp)."""
        blob = path.resolve()
        self.revoke_stamp(spec, blob)
        for p in (path, blob):
            try:
                p.unlink()
            except FileNotFoundError:
                pass

    # ------------------------------------------------------------------ info / prune
    def repo_dirs(self) -> list[Path]:
        if not self.hub.is_dir():
            return []
        return sorted(
            p for p in self.hub.iterdir() if p.is_dir() and p.name.startswith(_REPO_PREFIXES)
        )


def _old_entries(root: Path) -> list[str]:
    """Names in ``root`` that belong in ``hub/`` (a cache in the layout before ``hub/``)."""
    try:
        with os.scandir(root) as entries:
            return [
                e.name
                for e in entries
                if e.name.startswith(_REPO_PREFIXES) or e.name in _HUB_ENTRIES
            ]
    except OSError:
        return []


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _move_into(root: Path, hub: Path) -> int:
    """Move the old layout's folders from ``root`` into ``hub``; how many were moved."""
    names = _old_entries(root)  # again, under the lock: another process may have done it
    if not names:
        return 0
    hub.mkdir(parents=True, exist_ok=True)
    for name in names:
        source, target = root / name, hub / name
        if not target.exists():
            os.rename(source, target)
        else:
            _merge(source, target)
    return len(names)


def _merge(source: Path, target: Path) -> None:
    """Move every file of ``source`` missing in ``target`` there, then drop ``source``."""
    import shutil

    for dirpath, _dirs, files in os.walk(source):
        here = Path(dirpath)
        dest = target / here.relative_to(source)
        dest.mkdir(parents=True, exist_ok=True)
        for f in files:
            if not os.path.lexists(dest / f):
                os.rename(here / f, dest / f)  # snapshot links are relative: still valid
    shutil.rmtree(source)


def _drop_dangling_refs(repo: Path) -> None:
    """Refs naming a commit with no snapshot left: huggingface_hub's scan calls them corrupt."""
    for ref in _walk_files(repo / "refs"):
        try:
            commit = ref.read_text().strip()
        except OSError:
            continue
        if not is_pinned(commit) or not (repo / "snapshots" / commit).is_dir():
            ref.unlink(missing_ok=True)


def _iter_dir(path: Path) -> Iterable[Path]:
    try:
        return list(path.iterdir())
    except OSError:
        return []


def _remove_empty_dirs(root: Path) -> None:
    if not root.is_dir():
        return
    for dirpath, _dirs, _files in sorted(os.walk(root), key=lambda t: -len(t[0])):
        path = Path(dirpath)
        if path != root and not any(path.iterdir()):
            path.rmdir()
