"""A stand-in Hugging Face Hub on 127.0.0.1 that the real ``huggingface_hub`` client talks to.

Why a server and not a mock: the behaviours that break checkpoint suites live in
the client (its cache layout, its HEAD-then-GET protocol, what it does with a reset
connection), so tests must run the real client over real HTTP. This server speaks
enough of the hub's protocol for downloads (``resolve`` HEAD/GET with the headers
the real hub sends, ``Range``), the repo-info and tree APIs, and uploads
(``preupload``, the LFS batch API, ``commit``), with request counters and fault
injection. It answers as a plain-HTTP hub: no Xet headers, so the client never
switches to its Xet transfer path.

Files are stored the way the hub stores them: LFS (the hub's default
``.gitattributes`` patterns, binary content, or 10 MiB and more) announce the
content's sha256 as their etag, so the client names its cache blob after it;
small text files are regular git blobs whose etag is the git blob id.

Stdlib only; content given as bytes stays in memory, content given as a path is
streamed from disk (a 256 MiB checkpoint is never held in memory).
"""

from __future__ import annotations

import argparse
import base64
import fnmatch
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

__all__ = ["FaultInjector", "HubStats", "LocalHub", "RequestRecord"]

_CHUNK = 1024 * 1024
_EMPTY_COMMIT = "0" * 40
_SAMPLE_SIZE = 512  # what the client sends to `preupload` to decide regular vs LFS
_LFS_THRESHOLD = 10 * 1024 * 1024  # the hub stores files this large in LFS whatever their name
# The hub's default .gitattributes for new repos: these names always go to LFS.
_LFS_PATTERNS = (
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib",
    "*.lfs.*", "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot",
    "*.parquet", "*.pb", "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors",
    "*.tar.*", "*.tar", "*.tflite", "*.tgz", "*.wasm", "*.xz", "*.zip", "*.zst", "*tfevents*",
)  # fmt: skip
_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_EMPTY_AGENT_REGISTRY: dict[str, object] = {"standardEnvVars": [], "harnesses": {}}
_XET_MESSAGE = (
    "pytest-ckpts LocalHub has no Xet storage. huggingface_hub uploads LFS files through "
    "Xet whenever hf_xet is installed: set HF_HUB_DISABLE_XET=1 before importing "
    "huggingface_hub (or set huggingface_hub.constants.HF_HUB_DISABLE_XET = True) to "
    "upload over the LFS HTTP protocol."
)

Content = bytes | str | os.PathLike[str]


def _wants_lfs(path_in_repo: str, size: int, sample: bytes) -> bool:
    """Whether the hub would store this file in LFS (its ``preupload`` decision)."""
    name = path_in_repo.rsplit("/", 1)[-1]
    return (
        size >= _LFS_THRESHOLD
        or b"\0" in sample
        or path_in_repo.startswith("saved_model/")
        or "/saved_model/" in path_in_repo
        or any(fnmatch.fnmatchcase(name, pattern) for pattern in _LFS_PATTERNS)
    )


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    )


# --------------------------------------------------------------------------- content


@dataclass(frozen=True)
class _Blob:
    """One file as a commit holds it: content (in memory or on disk) and how git stores it."""

    sha256: str
    size: int
    lfs: bool
    git_oid: str  # the git blob id: of the content, or of the LFS pointer for LFS files
    data: bytes | None = None
    path: Path | None = None

    @classmethod
    def of(cls, path_in_repo: str, content: Content, *, lfs: bool | None = None) -> _Blob:
        if isinstance(content, bytes):
            sha = hashlib.sha256(content).hexdigest()
            if lfs is None:
                lfs = _wants_lfs(path_in_repo, len(content), content[:_SAMPLE_SIZE])
            oid = _git_blob_id(_lfs_pointer(sha, len(content)) if lfs else content)
            return cls(sha, len(content), lfs, oid, data=content)
        path = Path(content)
        size = path.stat().st_size
        digest = hashlib.sha256()
        with path.open("rb") as f:
            sample = f.read(_SAMPLE_SIZE)
            if lfs is None:
                lfs = _wants_lfs(path_in_repo, size, sample)
            git = None if lfs else hashlib.sha1(b"blob %d\0" % size)
            f.seek(0)
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                digest.update(chunk)
                if git is not None:
                    git.update(chunk)
        sha = digest.hexdigest()
        oid = git.hexdigest() if git is not None else _git_blob_id(_lfs_pointer(sha, size))
        return cls(sha, size, lfs, oid, path=path)

    @property
    def etag(self) -> str:
        """What the hub announces: the sha256 for LFS files, the git blob id otherwise."""
        return self.sha256 if self.lfs else self.git_oid

    def as_lfs(self) -> _Blob:
        if self.lfs:
            return self
        return replace(self, lfs=True, git_oid=_git_blob_id(_lfs_pointer(self.sha256, self.size)))

    def available(self) -> bool:
        return self.data is not None or (self.path is not None and self.path.is_file())

    def read(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        end = self.size if end is None else end
        if self.data is not None:
            for offset in range(start, end, _CHUNK):
                yield self.data[offset : min(end, offset + _CHUNK)]
            return
        assert self.path is not None
        with self.path.open("rb") as f:
            f.seek(start)
            remaining = end - start
            while remaining > 0:
                chunk = f.read(min(_CHUNK, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
                yield chunk


@dataclass
class _Repo:
    private: bool = False
    branches: dict[str, str] = field(default_factory=lambda: {"main": _EMPTY_COMMIT})
    commits: dict[str, dict[str, _Blob]] = field(default_factory=lambda: {_EMPTY_COMMIT: {}})

    def resolve(self, revision: str) -> str | None:
        """The commit a branch name or a commit sha names, or None."""
        commit = self.branches.get(revision, revision)
        return commit if commit in self.commits else None


# --------------------------------------------------------------------------- stats & faults


@dataclass(frozen=True)
class RequestRecord:
    """One request as the hub saw it (``bytes_sent``: body bytes written so far)."""

    method: str
    path: str
    status: int
    bytes_sent: int = 0
    range: str | None = None
    body: bool = False  # a file-content response (full or ranged) was started


class HubStats:
    """Thread-safe request and byte counters.

    A request is counted before its response goes out, and body bytes before they
    are written, so a client that has its answer always finds it counted.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[RequestRecord] = []
        self._generation = 0  # bumped by reset() so in-flight bodies stop counting

    def _add(self, record: RequestRecord) -> tuple[int, int]:
        with self._lock:
            self._records.append(record)
            return self._generation, len(self._records) - 1

    def _add_bytes(self, ticket: tuple[int, int], n: int) -> None:
        generation, index = ticket
        with self._lock:
            if generation == self._generation:
                r = self._records[index]
                self._records[index] = replace(r, bytes_sent=r.bytes_sent + n)

    @property
    def requests(self) -> list[RequestRecord]:
        """A snapshot of every request since the last reset, oldest first."""
        with self._lock:
            return list(self._records)

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self._records)

    @property
    def bytes_served(self) -> int:
        """Body bytes written to clients (file content and API answers)."""
        with self._lock:
            return sum(r.bytes_sent for r in self._records)

    @property
    def bodies_served(self) -> int:
        """File-content GET responses (full or ranged) sent, complete or not."""
        with self._lock:
            return sum(1 for r in self._records if r.body)

    def count(self, method: str | None = None, path_contains: str | None = None) -> int:
        """Requests with this method and/or whose raw path contains this text."""
        with self._lock:
            return sum(
                1
                for r in self._records
                if (method is None or r.method == method)
                and (path_contains is None or path_contains in r.path)
            )

    def reset(self) -> None:
        with self._lock:
            self._records.clear()
            self._generation += 1


@dataclass
class _Fault:
    kind: str  # "fail" | "delay" | "drop" | "corrupt"
    remaining: int | None  # None: every matching request
    method: str | None = None
    path_contains: str | None = None
    status: int = 500
    seconds: float = 0.0
    after_bytes: int = 0
    reset: bool = True

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method != method:
            return False
        if self.path_contains is not None and self.path_contains not in path:
            return False
        return self.remaining is None or self.remaining > 0


class FaultInjector:
    """Make the hub misbehave on purpose: errors, delays, dropped connections, bad bytes.

    Faults match on the HTTP method and on text in the raw request path (URL-quoted,
    as the client sent it), are consumed in the order they were added, and can be
    combined (a delay, then a drop).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []

    def fail_next(
        self,
        n: int,
        status: int = 500,
        *,
        method: str | None = None,
        path_contains: str | None = None,
    ) -> None:
        """Answer the next ``n`` matching requests with ``status`` and an error body."""
        self._add(_Fault("fail", n, method, path_contains, status=status))

    def delay(
        self, seconds: float, *, n: int | None = None, path_contains: str | None = None
    ) -> None:
        """Wait ``seconds`` before answering matching requests (all of them if ``n`` is None)."""
        self._add(_Fault("delay", n, None, path_contains, seconds=seconds))

    def drop_next(
        self,
        n: int = 1,
        *,
        after_bytes: int = 0,
        path_contains: str | None = None,
        reset: bool = True,
    ) -> None:
        """Send a file GET's headers and ``after_bytes`` of its body, then drop the connection.

        ``after_bytes`` is capped one byte short of the body, so the body is always
        incomplete. ``reset=True`` aborts with a TCP RST, as a crashed server or a
        broken network does (huggingface_hub raises ``httpx2.ReadError``);
        ``reset=False`` closes cleanly, which the client answers by asking again.
        """
        self._add(_Fault("drop", n, "GET", path_contains, after_bytes=after_bytes, reset=reset))

    def corrupt_next(self, n: int = 1, *, path_contains: str | None = None) -> None:
        """Flip the first byte of the next ``n`` file bodies (length and headers unchanged)."""
        self._add(_Fault("corrupt", n, "GET", path_contains))

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def _add(self, fault: _Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def _take(self, kind: str, method: str, path: str) -> _Fault | None:
        """Consume and return the first matching fault of ``kind``."""
        with self._lock:
            for fault in self._faults:
                if fault.kind == kind and fault.matches(method, path):
                    if fault.remaining is not None:
                        fault.remaining -= 1
                    return fault
        return None


# --------------------------------------------------------------------------- the hub


class LocalHub:
    """An in-process Hugging Face Hub stand-in serving HTTP on 127.0.0.1.

    ::

        with LocalHub() as hub:
            commit = hub.add_file("org/repo", "model.ckpt", b"weights")
            hf_hub_download("org/repo", "model.ckpt", endpoint=hub.endpoint, cache_dir=tmp)
            assert hub.stats.bodies_served == 1

    With ``token`` set, every request must carry ``Authorization: Bearer <token>``
    (uploads included); private repos need a bearer token even when it is not set.
    LFS content uploaded over HTTP is spilled to a temp dir the hub owns (inside
    ``upload_dir`` when given, so a test can keep it under ``tmp_path``), removed by
    ``stop()``.
    """

    def __init__(
        self,
        *,
        token: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        upload_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.token = token
        self.host = host
        self.port = port
        self.stats = HubStats()
        self.faults = FaultInjector()
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._upload_parent = None if upload_dir is None else Path(upload_dir)
        self._upload_dir: Path | None = None
        self._upload_cleanup: Callable[[], object] | None = None
        self._lfs: dict[str, _Blob] = {}  # sha256 -> content uploaded over the LFS API
        # LFS upload/verify links are "pre-signed" like the real hub's storage URLs:
        # the client sends them without its token.
        self._lfs_signature = os.urandom(16).hex()

    # -- lifecycle
    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT``; pass it as ``endpoint=`` to every client call."""
        if self._server is None:
            raise RuntimeError(
                "LocalHub is not started; call start() or use it as a context manager"
            )
        return f"http://{self.host}:{self._server.server_address[1]}"

    def start(self) -> LocalHub:
        if self._server is not None:
            return self

        class Handler(_Handler):
            pass

        Handler.hub = self
        server = ThreadingHTTPServer((self.host, self.port), Handler)
        server.daemon_threads = True
        self._stopping.clear()
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"LocalHub:{server.server_address[1]}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening, cut open (keep-alive) connections and delete uploaded content.

        Repos added with ``add_file`` survive a later ``start()``; LFS content that
        arrived over HTTP does not (it lived in the hub's temp dir).
        """
        self._stopping.set()  # wakes delayed requests
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        with self._lock:
            connections, self._connections = self._connections, set()
        for conn in connections:  # a pooled client connection must not outlive the hub
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._upload_cleanup is not None:
            self._upload_cleanup()
            self._upload_cleanup = None
            self._upload_dir = None

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- content
    def create_repo(self, repo_id: str, *, repo_type: str = "model", private: bool = False) -> None:
        """Create an empty repo (an empty ``main``), or change an existing one's visibility."""
        _check_repo_type(repo_type)
        with self._lock:
            repo = self._repos.setdefault((repo_type, repo_id), _Repo())
            repo.private = private

    def add_file(
        self,
        repo_id: str,
        path_in_repo: str,
        data: Content,
        *,
        repo_type: str = "model",
        revision: str = "main",
        message: str = "add file",
        lfs: bool | None = None,
    ) -> str:
        """Commit one file; returns the new 40-hex commit sha.

        ``data`` is the content (bytes) or the path of a file served from disk (it
        must not change while served). ``lfs=None`` stores the file as the hub would.
        """
        return self.add_files(
            repo_id,
            {path_in_repo: data},
            repo_type=repo_type,
            revision=revision,
            message=message,
            lfs=lfs,
        )

    def add_files(
        self,
        repo_id: str,
        files: Mapping[str, Content],
        *,
        repo_type: str = "model",
        revision: str = "main",
        message: str = "add files",
        lfs: bool | None = None,
    ) -> str:
        """Commit several files at once (creating the repo if needed); returns the commit sha.

        Commit shas are deterministic (parent + sorted paths and content hashes; not
        the message), so a manifest can pin a commit that every fresh hub given the
        same files serves. A new ``revision`` name starts an empty branch.
        """
        _check_repo_type(repo_type)
        blobs = {
            _clean_path(path): _Blob.of(_clean_path(path), content, lfs=lfs)
            for path, content in files.items()
        }
        return self._commit(repo_id, repo_type, revision, blobs)

    def _commit(
        self,
        repo_id: str,
        repo_type: str,
        revision: str,
        blobs: Mapping[str, _Blob],
        deleted: Callable[[str], bool] | None = None,
    ) -> str:
        with self._lock:
            repo = self._repos.setdefault((repo_type, repo_id), _Repo())
            parent = repo.branches.get(revision, _EMPTY_COMMIT)
            tree = {p: b for p, b in repo.commits[parent].items() if not (deleted and deleted(p))}
            tree.update(blobs)
            # The message is not hashed: the same files give the same commit whoever
            # serves them (the demo's conftest, `python -m pytest_ckpts.testing.hub`).
            # Regular (non-LFS) files are marked so LFS-only trees keep their shas.
            digest = hashlib.sha1(f"{parent}\n".encode())
            for path in sorted(tree):
                mark = "" if tree[path].lfs else "\0regular"
                digest.update(f"{path}\0{tree[path].sha256}{mark}\n".encode())
            commit = digest.hexdigest()
            repo.commits[commit] = tree
            repo.branches[revision] = commit
            return commit

    def commit_sha(self, repo_id: str, revision: str = "main", *, repo_type: str = "model") -> str:
        """The commit a branch (or commit sha) names; ``KeyError`` if there is none."""
        with self._lock:
            repo = self._repos.get((repo_type, repo_id))
            commit = None if repo is None else repo.resolve(revision)
        if commit is None:
            raise KeyError(f"{repo_type} repo {repo_id!r} has no revision {revision!r}")
        return commit

    def file_bytes(
        self, repo_id: str, path_in_repo: str, revision: str = "main", *, repo_type: str = "model"
    ) -> bytes:
        """The content a download of this file returns (without faults)."""
        blob, _, code = self._lookup(repo_type, repo_id, revision, path_in_repo)
        if blob is None:
            raise KeyError(f"{repo_id}@{revision}:{path_in_repo}: {code}")
        return b"".join(blob.read())

    def _lookup(
        self, repo_type: str, repo_id: str, revision: str, path: str
    ) -> tuple[_Blob | None, str | None, str]:
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

    def _tree(self, repo_type: str, repo_id: str, revision: str) -> tuple[str, dict[str, _Blob]]:
        with self._lock:
            repo = self._repos[(repo_type, repo_id)]
            commit = repo.resolve(revision)
            if commit is None:
                raise KeyError(revision)
            return commit, repo.commits[commit]

    def _spill_dir(self) -> Path:
        """The temp dir for LFS uploads, made on first use and removed by ``stop()``."""
        with self._lock:
            if self._upload_dir is None:
                self._upload_dir = Path(
                    tempfile.mkdtemp(prefix="pytest-ckpts-hub-", dir=self._upload_parent)
                )
                # also removed if the hub is never stopped
                self._upload_cleanup = weakref.finalize(
                    self, shutil.rmtree, str(self._upload_dir), ignore_errors=True
                )
            return self._upload_dir


def _check_repo_type(repo_type: str) -> None:
    if repo_type not in _PREFIX:
        raise ValueError(f"repo_type must be one of {sorted(_PREFIX)}, not {repo_type!r}")


def _clean_path(path: str) -> str:
    cleaned = path.strip("/")
    if not cleaned or any(part in ("", ".", "..") for part in cleaned.split("/")):
        raise ValueError(f"invalid path in repo: {path!r}")
    return cleaned


# --------------------------------------------------------------------------- HTTP


class _Handler(BaseHTTPRequestHandler):
    hub: LocalHub
    protocol_version = "HTTP/1.1"
    _raw: bytes | None = None  # the request body once read
    _responded = False
    server_version = "pytest-ckpts-local-hub"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        with self.hub._lock:
            self.hub._connections.add(self.connection)

    def finish(self) -> None:
        with self.hub._lock:
            self.hub._connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    # -- plumbing
    def _record(self, status: int, *, body: bool = False) -> tuple[int, int]:
        return self.hub.stats._add(
            RequestRecord(
                method=self.command,
                path=self.path,
                status=status,
                range=self.headers.get("Range"),
                body=body,
            )
        )

    def _write(self, ticket: tuple[int, int], data: bytes) -> None:
        self.hub.stats._add_bytes(ticket, len(data))
        try:
            self.wfile.write(data)
        except OSError:
            self.hub.stats._add_bytes(ticket, -len(data))
            raise

    def _send(
        self,
        status: int,
        payload: bytes = b"",
        *,
        headers: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        ticket = self._record(status)
        self.end_headers()
        if self.command != "HEAD" and payload:
            self._write(ticket, payload)

    def _json(self, status: int, obj: object, content_type: str = "application/json") -> None:
        self._send(status, json.dumps(obj).encode(), content_type=content_type)

    def _error(
        self, status: int, code: str | None, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        extra = dict(headers or {})
        if code is not None:
            extra["X-Error-Code"] = code
        extra["X-Error-Message"] = message
        self._send(status, json.dumps({"error": message}).encode(), headers=extra)

    def send_response(self, code: int, message: str | None = None) -> None:
        self._responded = True
        super().send_response(code, message)

    def _body(self) -> bytes:
        """The request body, read once (also to keep a kept-alive connection in step)."""
        if self._raw is None:
            self._raw = self._read_body()
        return self._raw

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _drain(self) -> None:
        if self.command in ("POST", "PUT"):
            self._body()

    def _bearer(self) -> str | None:
        header = self.headers.get("Authorization", "")
        return header[7:] if header.startswith("Bearer ") and len(header) > 7 else None

    def _denied(self, *, private: bool = False) -> bool:
        """Answer 401 as the hub does and return True when the request may not proceed.

        A wrong token is "Invalid credentials" (the client raises a plain
        ``HfHubHTTPError``); a missing one looks like a missing repo (the client
        raises ``RepositoryNotFoundError``). The token is never echoed.
        """
        self._drain()
        token = self._bearer()
        expected = self.hub.token
        if token is not None and expected is not None and token != expected:
            self._error(401, None, "Invalid credentials in Authorization header")
            return True
        if token is None and (expected is not None or private):
            self._error(
                401,
                "RepoNotFound",
                "Repository not found, or authentication required (no token was sent)",
            )
            return True
        return False

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        self._raw = None
        self._responded = False
        try:
            delay = self.hub.faults._take("delay", self.command, self.path)
            if delay is not None and self.hub._stopping.wait(delay.seconds):
                self.close_connection = True
                return
            fail = self.hub.faults._take("fail", self.command, self.path)
            if fail is not None:
                self._drain()
                self._error(fail.status, "InjectedFault", f"injected failure {fail.status}")
                return
            split = urllib.parse.urlsplit(self.path)
            query = urllib.parse.parse_qs(split.query)
            route = self._route(split.path, query)
            if route is None:
                self._drain()
                self._error(404, None, f"no route for {self.command} {split.path}")
                return
            route()
        except OSError:
            self.close_connection = True
        except Exception as exc:  # a malformed request must not look like a dead hub
            self.close_connection = True
            if not self._responded:
                status = 400 if isinstance(exc, (ValueError, KeyError, TypeError)) else 500
                self._error(status, None, f"LocalHub could not handle the request: {exc!r}")

    def _route(self, path: str, query: dict[str, list[str]]) -> Callable[[], None] | None:
        parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")]
        method = self.command
        if parts == ["api", "agent-harnesses"] and method == "GET":
            # the client's telemetry (when not disabled) asks HF_ENDPOINT for this
            return lambda: self._json(200, _EMPTY_AGENT_REGISTRY)
        signed = query.get("sig") == [self.hub._lfs_signature]
        if parts[0] in ("lfs-upload", "lfs-verify") and len(parts) == 2 and signed:
            if parts[0] == "lfs-upload" and method == "PUT":
                return lambda: self._lfs_put(parts[1])
            if parts[0] == "lfs-verify" and method == "POST":
                return lambda: self._lfs_verify(parts[1])
            return None
        if self._denied():
            return lambda: None
        if parts[0] == "api":
            return self._api_route(parts[1:], method, query)
        repo_type = "model"
        if parts[0] in ("datasets", "spaces"):
            repo_type = _TYPES[parts[0]]
            parts = parts[1:]
        if parts[-4:] == ["info", "lfs", "objects", "batch"] and method == "POST":
            repo_id = "/".join(parts[:-4]).removesuffix(".git")
            return lambda: self._lfs_batch(repo_type, repo_id)
        # [datasets/]org/name/resolve/<revision>/<path...> (or name/resolve/...)
        for i in (2, 1):
            if len(parts) > i + 2 and parts[i] == "resolve" and method in ("GET", "HEAD"):
                repo_id, revision, file_path = "/".join(parts[:i]), parts[i + 1], parts[i + 2 :]
                return lambda: self._resolve(repo_type, repo_id, revision, "/".join(file_path))
        return None

    def _repo(self, repo_type: str, repo_id: str) -> _Repo | None:
        """The repo, or None once a 404/401 went out (private repos need a token)."""
        with self.hub._lock:
            repo = self.hub._repos.get((repo_type, repo_id))
        if repo is None:
            self._error(404, "RepoNotFound", f"Repository {repo_id!r} ({repo_type}) not found")
            return None
        if repo.private and self._denied(private=True):
            return None
        return repo

    # -- downloads
    def _resolve(self, repo_type: str, repo_id: str, revision: str, file_path: str) -> None:
        if self._repo(repo_type, repo_id) is None:
            return
        blob, commit, code = self.hub._lookup(repo_type, repo_id, revision, file_path)
        if blob is None or commit is None:
            extra = {"X-Repo-Commit": commit} if commit else None
            self._error(404, code, f"{code}: {repo_id}@{revision}:{file_path}", extra)
            return
        if not blob.available():
            self._error(404, "EntryNotFound", f"content of {file_path} is gone from disk")
            return
        start, end, status = 0, blob.size, 200
        rng = self.headers.get("Range")
        if rng:
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
            if m is None or (not m.group(1) and not m.group(2)):
                self._error(416, None, f"bad range {rng}")
                return
            if m.group(1):
                start = int(m.group(1))
                end = min(blob.size, int(m.group(2)) + 1) if m.group(2) else blob.size
            else:
                start = max(0, blob.size - int(m.group(2)))
            if start >= blob.size or end <= start:
                self._error(
                    416,
                    None,
                    f"range {rng} beyond {blob.size}",
                    {"Content-Range": f"bytes */{blob.size}"},
                )
                return
            status = 206
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{blob.etag}"')
        if blob.lfs:
            self.send_header("X-Linked-Etag", f'"{blob.sha256}"')
            self.send_header("X-Linked-Size", str(blob.size))
        self.send_header("X-Repo-Commit", commit)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{blob.size}")
        if self.command == "HEAD":
            self._record(status)
            self.end_headers()
            return
        ticket = self._record(status, body=True)
        self.end_headers()
        self._stream(ticket, blob, start, end)

    def _stream(self, ticket: tuple[int, int], blob: _Blob, start: int, end: int) -> None:
        drop = self.hub.faults._take("drop", self.command, self.path)
        corrupt = self.hub.faults._take("corrupt", self.command, self.path)
        cut = None if drop is None else min(drop.after_bytes, max(0, end - start - 1))
        sent = 0
        for chunk in blob.read(start, end):
            if cut is not None and sent + len(chunk) > cut:
                self._write(ticket, chunk[: cut - sent])
                self._abort(reset=drop is not None and drop.reset)
                return
            if corrupt is not None and chunk:
                chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
                corrupt = None
            self._write(ticket, chunk)
            sent += len(chunk)

    def _abort(self, *, reset: bool) -> None:
        self.wfile.flush()
        if reset:  # RST, as a crashed server or a broken network produces
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        else:
            self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True

    # -- API
    def _api_route(
        self, parts: list[str], method: str, query: dict[str, list[str]]
    ) -> Callable[[], None] | None:
        if parts == ["repos", "create"] and method == "POST":
            return self._create_repo
        if parts == ["validate-yaml"] and method == "POST":  # README.md metadata check
            return lambda: self._json(200, {"errors": [], "warnings": []})
        if not parts or parts[0] not in _TYPES:
            return None
        repo_type, rest = _TYPES[parts[0]], parts[1:]
        if len(rest) in (1, 2) and method == "GET":
            return lambda: self._repo_info(repo_type, "/".join(rest), "main")
        for i in (2, 1):
            if len(rest) <= i:
                continue
            verb, repo_id, tail = rest[i], "/".join(rest[:i]), rest[i + 1 :]
            revision = tail[0] if tail else "main"
            if verb == "revision" and method == "GET" and len(tail) == 1:
                return lambda: self._repo_info(repo_type, repo_id, revision)
            if verb == "tree" and method == "GET":
                recursive = query.get("recursive", ["false"])[-1].lower() in ("1", "true")
                under = "/".join(tail[1:]).strip("/")
                return lambda: self._list_tree(repo_type, repo_id, revision, under, recursive)
            if verb == "preupload" and method == "POST" and len(tail) == 1:
                return lambda: self._preupload(repo_type, repo_id, revision)
            if verb == "commit" and method == "POST" and len(tail) == 1:
                return lambda: self._commit(repo_type, repo_id, revision, query)
            if verb in ("xet-write-token", "xet-read-token"):
                return lambda: self._error(404, None, _XET_MESSAGE)
        return None

    def _repo_info(self, repo_type: str, repo_id: str, revision: str) -> None:
        repo = self._repo(repo_type, repo_id)
        if repo is None:
            return
        try:
            commit, tree = self.hub._tree(repo_type, repo_id, revision)
        except KeyError:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return
        info: dict[str, Any] = {
            "id": repo_id,
            "sha": commit,
            "private": repo.private,
            "disabled": False,
            "gated": False,
            "tags": [],
            "siblings": [{"rfilename": p, "size": b.size} for p, b in sorted(tree.items())],
        }
        if repo_type == "model":
            info["modelId"] = repo_id
        self._json(200, info)

    def _list_tree(
        self, repo_type: str, repo_id: str, revision: str, under: str, recursive: bool
    ) -> None:
        """The file listing behind ``list_repo_files``/``list_repo_tree``."""
        if self._repo(repo_type, repo_id) is None:
            return
        try:
            _, tree = self.hub._tree(repo_type, repo_id, revision)
        except KeyError:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return
        prefix = f"{under}/" if under else ""
        paths = [p for p in tree if p.startswith(prefix)]
        if under and not paths:
            self._error(404, "EntryNotFound", f"{under} does not exist on {revision!r}")
            return
        dirs = {"/".join(p.split("/")[:i]) for p in paths for i in range(1, p.count("/") + 1)}
        depth = prefix.count("/")
        entries: list[dict[str, Any]] = []
        for d in sorted(x for x in dirs if x.startswith(prefix)):
            if recursive or d.count("/") == depth:
                entries.append({"type": "directory", "path": d, "oid": "0" * 40, "size": 0})
        for p in sorted(paths):
            if not recursive and p.count("/") != depth:
                continue
            blob = tree[p]
            entry: dict[str, Any] = {
                "type": "file",
                "path": p,
                "size": blob.size,
                "oid": blob.git_oid,
            }
            if blob.lfs:
                pointer = len(_lfs_pointer(blob.sha256, blob.size))
                entry["lfs"] = {"oid": blob.sha256, "size": blob.size, "pointerSize": pointer}
            entries.append(entry)
        self._json(200, entries)

    def _create_repo(self) -> None:
        body = json.loads(self._body() or b"{}")
        name, org = body.get("name") or "", body.get("organization")
        repo_id = f"{org}/{name}" if org else name
        repo_type = body.get("type") or "model"
        if not name or repo_type not in _PREFIX:
            self._error(400, None, "invalid repo name or type")
            return
        url = f"{self.hub.endpoint}/{_PREFIX[repo_type]}{repo_id}"
        with self.hub._lock:
            if (repo_type, repo_id) in self.hub._repos:
                self._error(409, None, "You already created this repo", {"X-Repo-Url": url})
                return
            private = body.get("visibility") == "private" or body.get("private") is True
            self.hub.create_repo(repo_id, repo_type=repo_type, private=private)
        self._json(200, {"url": url, "name": repo_id, "id": repo_id})

    def _preupload(self, repo_type: str, repo_id: str, revision: str) -> None:
        body = json.loads(self._body() or b"{}")
        if self._repo(repo_type, repo_id) is None:
            return
        try:
            _, tree = self.hub._tree(repo_type, repo_id, revision)
        except KeyError:
            tree = {}
        files = []
        for f in body.get("files", []):
            sample = base64.b64decode(f.get("sample") or "")
            lfs = _wants_lfs(f["path"], int(f.get("size") or 0), sample)
            entry: dict[str, Any] = {
                "path": f["path"],
                "uploadMode": "lfs" if lfs else "regular",
                "shouldIgnore": False,
            }
            current = tree.get(f["path"])
            if current is not None and current.lfs == lfs:
                # lets the client skip unchanged files, as the hub does
                entry["oid"] = current.sha256 if lfs else current.git_oid
            files.append(entry)
        self._json(200, {"files": files})

    def _lfs_batch(self, repo_type: str, repo_id: str) -> None:
        body = json.loads(self._body() or b"{}")
        if self._repo(repo_type, repo_id) is None:
            return
        sig = f"sig={self.hub._lfs_signature}"
        objects = []
        for obj in body.get("objects", []):
            oid, size = str(obj["oid"]), int(obj["size"])
            entry: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if self._known_lfs(oid) is None:
                entry["actions"] = {
                    "upload": {"href": f"{self.hub.endpoint}/lfs-upload/{oid}?{sig}"},
                    "verify": {"href": f"{self.hub.endpoint}/lfs-verify/{oid}?{sig}"},
                }
            objects.append(entry)
        self._json(200, {"transfer": "basic", "objects": objects}, "application/vnd.git-lfs+json")

    def _known_lfs(self, oid: str) -> _Blob | None:
        """Content with this sha256 the hub already has (uploaded, or in any repo)."""
        with self.hub._lock:
            if oid in self.hub._lfs:
                return self.hub._lfs[oid]
            for repo in self.hub._repos.values():
                for tree in repo.commits.values():
                    for blob in tree.values():
                        if blob.sha256 == oid and blob.available():
                            return blob
        return None

    def _lfs_put(self, oid: str) -> None:
        if not re.fullmatch(r"[0-9a-f]{64}", oid):
            self._body()
            self._error(400, None, "bad oid")
            return
        target = self.hub._spill_dir() / oid
        length = int(self.headers.get("Content-Length") or 0)
        digest = hashlib.sha256()
        partial = target.with_suffix(f".{threading.get_ident()}.part")
        with partial.open("wb") as f:
            remaining = length
            while remaining > 0:
                chunk = self.rfile.read(min(_CHUNK, remaining))
                if not chunk:
                    break
                digest.update(chunk)
                f.write(chunk)
                remaining -= len(chunk)
        if digest.hexdigest() != oid:
            partial.unlink()
            self._error(400, None, "uploaded content does not match its oid")
            return
        partial.replace(target)
        size = target.stat().st_size
        blob = _Blob(oid, size, True, _git_blob_id(_lfs_pointer(oid, size)), path=target)
        with self.hub._lock:
            self.hub._lfs[oid] = blob
        self._send(200, b"")

    def _lfs_verify(self, oid: str) -> None:
        body = json.loads(self._body() or b"{}")
        blob = self._known_lfs(oid)
        if blob is None or ("size" in body and int(body["size"]) != blob.size):
            self._error(404, None, f"object {oid} was not uploaded")
            return
        self._json(200, {"oid": oid, "size": blob.size})

    def _commit(
        self, repo_type: str, repo_id: str, revision: str, query: dict[str, list[str]]
    ) -> None:
        raw = self._body()
        repo = self._repo(repo_type, repo_id)
        if repo is None:
            return
        if query.get("create_pr", ["0"])[-1] not in ("0", "false", ""):
            self._error(400, None, "pytest-ckpts LocalHub does not support pull requests")
            return
        blobs: dict[str, _Blob] = {}
        deleted_files: set[str] = set()
        deleted_dirs: list[str] = []
        parent: str | None = None
        for line in raw.decode("utf-8").splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item.get("key"), item.get("value", {})
            if key == "header":
                parent = value.get("parentCommit")
            elif key == "file":
                path = _clean_path(value["path"])
                content = base64.b64decode(value["content"])
                blobs[path] = _Blob.of(path, content, lfs=False)
            elif key == "lfsFile":
                found = self._known_lfs(str(value["oid"]))
                if found is None:
                    self._error(400, None, f"LFS object {value['oid']} was not uploaded")
                    return
                blobs[_clean_path(value["path"])] = found.as_lfs()
            elif key == "deletedFile":
                deleted_files.add(_clean_path(value["path"]))
            elif key == "deletedFolder":
                deleted_dirs.append(_clean_path(value["path"]) + "/")
            else:
                self._error(400, None, f"pytest-ckpts LocalHub does not support {key!r} operations")
                return
        with self.hub._lock:
            head = repo.branches.get(revision)
            if head is None:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
                return
            if parent is not None and parent != head:
                self._error(412, None, "A commit has happened since. Please refresh and try again.")
                return
            tree = repo.commits[head]
            missing = sorted(p for p in deleted_files if p not in tree)
            if missing:
                self._error(
                    404, "EntryNotFound", f"A file with this name doesn't exist: {missing[0]}"
                )
                return

            def deleted(path: str) -> bool:
                return path in deleted_files or any(path.startswith(d) for d in deleted_dirs)

            commit = self.hub._commit(repo_id, repo_type, revision, blobs, deleted)
        self._json(
            200,
            {
                "success": True,
                "commitOid": commit,
                "commitUrl": f"{self.hub.endpoint}/{_PREFIX[repo_type]}{repo_id}/commit/{commit}",
                "hookOutput": "",
            },
        )


# --------------------------------------------------------------------------- CLI


def _parse_repo(value: str) -> tuple[str, str, Path]:
    repo, sep, directory = value.partition("=")
    repo_type = "model"
    for prefix, kind in (("datasets/", "dataset"), ("spaces/", "space")):
        if repo.startswith(prefix):
            repo, repo_type = repo.removeprefix(prefix), kind
    if not sep or not repo or not directory:
        raise argparse.ArgumentTypeError(f"expected [datasets/]ORG/NAME=DIR, got {value!r}")
    path = Path(directory)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{directory!r} is not a directory")
    return repo_type, repo, path


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Serve directories as hub repos until interrupted (for demos and manual checks)."""
    parser = argparse.ArgumentParser(
        prog="python -m pytest_ckpts.testing.hub",
        description="Serve local directories as Hugging Face Hub repos (one commit each).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    parser.add_argument(
        "--repo",
        type=_parse_repo,
        action="append",
        default=[],
        metavar="[datasets/]ORG/NAME=DIR",
        help="serve every file under DIR (dot-files skipped) as one commit on main",
    )
    parser.add_argument("--token", default=None, help="require this bearer token")
    args = parser.parse_args(argv)
    hub = LocalHub(token=args.token, host=args.host, port=args.port).start()
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` cleans up like Ctrl-C
    try:
        for repo_type, repo_id, directory in args.repo:
            files = {
                p.relative_to(directory).as_posix(): p
                for p in sorted(directory.rglob("*"))
                if p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(directory).parts)
            }
            commit = hub.add_files(repo_id, files, repo_type=repo_type)
            print(f"{repo_id}: {len(files)} files at commit {commit}", flush=True)
        print(f"endpoint: {hub.endpoint}", flush=True)
        print(f"export HF_ENDPOINT={hub.endpoint}", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        hub.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
