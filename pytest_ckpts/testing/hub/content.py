"""What the local hub serves: repos, commits and files, stored the way the hub stores them.

Files are LFS or regular as on the hub: LFS (the hub's default ``.gitattributes``
patterns, binary content, or 10 MiB and more) announce the content's sha256 as their
etag, so the client names its cache blob after it; small text files are regular git
blobs whose etag is the git blob id.

Content given as bytes stays in memory; content given as a path is streamed from disk
(a 256 MiB checkpoint is never held in memory). Everything here is guarded by one
lock, so the HTTP handlers (one thread per connection) only use the public methods of
:class:`HubContent` and never the dicts behind them.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from ...errors import CommitRejected
from .refs import CommitMeta, RefsMixin

__all__ = ["Blob", "Content", "HubContent", "Repo", "lfs_pointer", "wants_lfs"]

CHUNK = 1024 * 1024
EMPTY_COMMIT = "0" * 40
SAMPLE_SIZE = 512  # what the client sends to `preupload` to decide regular vs LFS
_LFS_THRESHOLD = 10 * 1024 * 1024  # the hub stores files this large in LFS whatever their name
# The hub's default .gitattributes for new repos: these names always go to LFS.
_LFS_PATTERNS = (
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib",
    "*.lfs.*", "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot",
    "*.parquet", "*.pb", "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors",
    "*.tar.*", "*.tar", "*.tflite", "*.tgz", "*.wasm", "*.xz", "*.zip", "*.zst", "*tfevents*",
)  # fmt: skip
REPO_TYPES = ("model", "dataset", "space")

Content = bytes | str | os.PathLike[str]


def wants_lfs(path_in_repo: str, size: int, sample: bytes) -> bool:
    """Whether the hub would store this file in LFS (its ``preupload`` decision)."""
    name = path_in_repo.rsplit("/", 1)[-1]
    return (
        size >= _LFS_THRESHOLD
        or b"\0" in sample
        or path_in_repo.startswith("saved_model/")
        or "/saved_model/" in path_in_repo
        or any(fnmatch.fnmatchcase(name, pattern) for pattern in _LFS_PATTERNS)
    )


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    )


def check_repo_type(repo_type: str) -> None:
    if repo_type not in REPO_TYPES:
        raise ValueError(f"repo_type must be one of {sorted(REPO_TYPES)}, not {repo_type!r}")


def clean_path(path: str) -> str:
    cleaned = path.strip("/")
    if not cleaned or any(part in ("", ".", "..") for part in cleaned.split("/")):
        raise ValueError(f"invalid path in repo: {path!r}")
    return cleaned


@dataclass(frozen=True)
class Blob:
    """One file as a commit holds it: content (in memory or on disk) and how git stores it."""

    sha256: str
    size: int
    lfs: bool
    git_oid: str  # the git blob id: of the content, or of the LFS pointer for LFS files
    data: bytes | None = None
    path: Path | None = None

    @classmethod
    def of(cls, path_in_repo: str, content: Content, *, lfs: bool | None = None) -> Blob:
        if isinstance(content, bytes):
            sha = hashlib.sha256(content).hexdigest()
            if lfs is None:
                lfs = wants_lfs(path_in_repo, len(content), content[:SAMPLE_SIZE])
            oid = git_blob_id(lfs_pointer(sha, len(content)) if lfs else content)
            return cls(sha, len(content), lfs, oid, data=content)
        path = Path(content)
        size = path.stat().st_size
        digest = hashlib.sha256()
        with path.open("rb") as f:
            sample = f.read(SAMPLE_SIZE)
            if lfs is None:
                lfs = wants_lfs(path_in_repo, size, sample)
            git = None if lfs else hashlib.sha1(b"blob %d\0" % size)
            f.seek(0)
            for chunk in iter(lambda: f.read(CHUNK), b""):
                digest.update(chunk)
                if git is not None:
                    git.update(chunk)
        sha = digest.hexdigest()
        oid = git.hexdigest() if git is not None else git_blob_id(lfs_pointer(sha, size))
        return cls(sha, size, lfs, oid, path=path)

    @property
    def etag(self) -> str:
        """What the hub announces: the sha256 for LFS files, the git blob id otherwise."""
        return self.sha256 if self.lfs else self.git_oid

    def as_lfs(self) -> Blob:
        if self.lfs:
            return self
        return replace(self, lfs=True, git_oid=git_blob_id(lfs_pointer(self.sha256, self.size)))

    def available(self) -> bool:
        return self.data is not None or (self.path is not None and self.path.is_file())

    def read(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The bytes ``[start, end)`` in chunks of at most 1 MiB."""
        end = self.size if end is None else end
        if self.data is not None:
            for offset in range(start, end, CHUNK):
                yield self.data[offset : min(end, offset + CHUNK)]
            return
        assert self.path is not None
        with self.path.open("rb") as f:
            f.seek(start)
            remaining = end - start
            while remaining > 0:
                chunk = f.read(min(CHUNK, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
                yield chunk


@dataclass
class Repo:
    private: bool = False
    branches: dict[str, str] = field(default_factory=lambda: {"main": EMPTY_COMMIT})
    commits: dict[str, dict[str, Blob]] = field(default_factory=lambda: {EMPTY_COMMIT: {}})
    tags: dict[str, str] = field(default_factory=dict)
    #: parent, title, date of each commit (``list_repo_commits``)
    log: dict[str, CommitMeta] = field(
        default_factory=lambda: {EMPTY_COMMIT: CommitMeta(None, "initial commit", date=time.time())}
    )

    def resolve(self, revision: str) -> str | None:
        """The commit a branch, a tag or a commit sha names, or None."""
        commit = self.branches.get(revision) or self.tags.get(revision) or revision
        return commit if commit in self.commits else None


class Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


class HubContent(RefsMixin):
    """Every repo of one hub plus the LFS content uploaded to it, behind one lock.

    LFS content uploaded over HTTP is spilled to a temp dir (inside ``upload_dir``
    when given) that :meth:`discard_uploads` removes.
    """

    def __init__(self, upload_dir: str | os.PathLike[str] | None = None) -> None:
        self._repos: dict[tuple[str, str], Repo] = {}
        self._lfs: dict[str, Blob] = {}  # sha256 -> content uploaded over the LFS API
        self._lock = threading.RLock()
        self._upload_parent = None if upload_dir is None else Path(upload_dir)
        self._upload_dir: Path | None = None
        self._upload_cleanup: Callable[[], object] | None = None

    # -- repos and commits
    def create_repo(self, repo_id: str, repo_type: str, private: bool) -> None:
        check_repo_type(repo_type)
        with self._lock:
            self._repos.setdefault((repo_type, repo_id), Repo()).private = private

    def create_new_repo(self, repo_id: str, repo_type: str, private: bool) -> bool:
        """Create the repo unless it exists (then False): ``HfApi.create_repo``'s 409."""
        with self._lock:
            if (repo_type, repo_id) in self._repos:
                return False
            self.create_repo(repo_id, repo_type, private)
            return True

    def commit(
        self,
        repo_id: str,
        repo_type: str,
        revision: str,
        blobs: Mapping[str, Blob],
        deleted: Callable[[str], bool] | None = None,
        message: str = "",
        description: str = "",
    ) -> str:
        """Commit on top of ``revision`` (a new name starts an empty branch); the new sha.

        The message is not hashed: the same files give the same commit whoever serves
        them (the demo's conftest, ``python -m pytest_ckpts.testing.hub``). Regular
        (non-LFS) files are marked so LFS-only trees keep their shas.
        """
        check_repo_type(repo_type)
        with self._lock:
            repo = self._repos.setdefault((repo_type, repo_id), Repo())
            parent = repo.branches.get(revision, EMPTY_COMMIT)
            tree = {p: b for p, b in repo.commits[parent].items() if not (deleted and deleted(p))}
            tree.update(blobs)
            digest = hashlib.sha1(f"{parent}\n".encode())
            for path in sorted(tree):
                mark = "" if tree[path].lfs else "\0regular"
                digest.update(f"{path}\0{tree[path].sha256}{mark}\n".encode())
            commit = digest.hexdigest()
            repo.commits[commit] = tree
            if commit not in repo.log:  # the same files on the same parent: the same commit
                repo.log[commit] = CommitMeta(parent, message, description, time.time())
            repo.branches[revision] = commit
            return commit

    def commit_on_head(
        self,
        repo_id: str,
        repo_type: str,
        revision: str,
        parent: str | None,
        blobs: Mapping[str, Blob],
        deleted_files: set[str],
        deleted_dirs: list[str],
        message: str = "",
        description: str = "",
    ) -> str:
        """An HTTP commit: checks the branch exists, ``parentCommit`` and deleted paths.

        Raises :class:`CommitRejected` with the hub's status for each refusal.
        """
        with self._lock:
            repo = self._repos.get((repo_type, repo_id))
            head = None if repo is None else repo.branches.get(revision)
            if repo is None or head is None:
                raise CommitRejected(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            if parent is not None and parent != head:
                raise CommitRejected(
                    412, None, "A commit has happened since. Please refresh and try again."
                )
            missing = sorted(p for p in deleted_files if p not in repo.commits[head])
            if missing:
                raise CommitRejected(
                    404, "EntryNotFound", f"A file with this name doesn't exist: {missing[0]}"
                )

            def deleted(path: str) -> bool:
                return path in deleted_files or any(path.startswith(d) for d in deleted_dirs)

            return self.commit(repo_id, repo_type, revision, blobs, deleted, message, description)

    # -- lookups
    def repo(self, repo_type: str, repo_id: str) -> Repo | None:
        with self._lock:
            return self._repos.get((repo_type, repo_id))

    def commit_sha(self, repo_id: str, revision: str, repo_type: str) -> str | None:
        with self._lock:
            repo = self._repos.get((repo_type, repo_id))
            return None if repo is None else repo.resolve(revision)

    def lookup(
        self, repo_type: str, repo_id: str, revision: str, path: str
    ) -> tuple[Blob | None, str | None, str]:
        """``(blob, commit, "")``, or the X-Error-Code saying why there is no blob."""
        with self._lock:
            repo = self._repos.get((repo_type, repo_id))
            if repo is None:
                return None, None, "RepoNotFound"
            commit = repo.resolve(revision)
            if commit is None:
                return None, None, "RevisionNotFound"
            blob = repo.commits[commit].get(path)
            return blob, commit, "" if blob is not None else "EntryNotFound"

    def tree(self, repo_type: str, repo_id: str, revision: str) -> tuple[str, dict[str, Blob]]:
        """``(commit, {path: blob})`` of a revision; ``KeyError`` if it does not exist."""
        with self._lock:
            repo = self._repos[(repo_type, repo_id)]
            commit = repo.resolve(revision)
            if commit is None:
                raise KeyError(revision)
            return commit, dict(repo.commits[commit])

    # -- LFS uploads
    def known_lfs(self, oid: str) -> Blob | None:
        """Content with this sha256 the hub already has (uploaded, or in any repo)."""
        with self._lock:
            if oid in self._lfs:
                return self._lfs[oid]
            for repo in self._repos.values():
                for tree in repo.commits.values():
                    for blob in tree.values():
                        if blob.sha256 == oid and blob.available():
                            return blob
        return None

    def receive_lfs(self, oid: str, stream: Readable, length: int) -> bool:
        """Store ``length`` uploaded bytes as LFS object ``oid``; False if they don't hash to it."""
        target = self._spill_dir() / oid
        digest = hashlib.sha256()
        partial = target.with_suffix(f".{threading.get_ident()}.part")
        with partial.open("wb") as f:
            remaining = length
            while remaining > 0:
                chunk = stream.read(min(CHUNK, remaining))
                if not chunk:
                    break
                digest.update(chunk)
                f.write(chunk)
                remaining -= len(chunk)
        if digest.hexdigest() != oid:
            partial.unlink()
            return False
        partial.replace(target)
        size = target.stat().st_size
        blob = Blob(oid, size, True, git_blob_id(lfs_pointer(oid, size)), path=target)
        with self._lock:
            self._lfs[oid] = blob
        return True

    def _spill_dir(self) -> Path:
        """The temp dir for LFS uploads, made on first use."""
        with self._lock:
            if self._upload_dir is None:
                if self._upload_parent is not None:  # the local_hub fixture names one in tmp_path
                    self._upload_parent.mkdir(parents=True, exist_ok=True)
                self._upload_dir = Path(
                    tempfile.mkdtemp(prefix="pytest-ckpts-hub-", dir=self._upload_parent)
                )
                # also removed if the hub is never stopped
                self._upload_cleanup = weakref.finalize(
                    self, shutil.rmtree, str(self._upload_dir), ignore_errors=True
                )
            return self._upload_dir

    def discard_uploads(self) -> None:
        """Delete the spilled LFS uploads (``LocalHub.stop``); their files then answer 404."""
        with self._lock:
            cleanup, self._upload_cleanup = self._upload_cleanup, None
            self._upload_dir = None
        if cleanup is not None:
            cleanup()
