"""A stand-in Hugging Face Hub on 127.0.0.1 that the real ``huggingface_hub`` client talks to.

Why a server and not a mock: the behaviours that break checkpoint suites live in
the client (its cache layout, its HEAD-then-GET protocol, what it does with a reset
connection), so tests must run the real client over real HTTP. This server speaks
just enough of the hub's protocol for downloads (``resolve`` HEAD/GET with the
headers the real hub sends, ``Range``), the repo-info API, and uploads
(``preupload``, the LFS batch API, ``commit``), with request counters and fault
injection. It answers as a plain-HTTP hub: no Xet headers, so the client never
switches to its Xet transfer path.

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
import socket
import struct
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["FaultInjector", "HubStats", "LocalHub", "RequestRecord"]

_CHUNK = 1024 * 1024
_EMPTY_COMMIT = "0" * 40


# --------------------------------------------------------------------------- content


@dataclass(frozen=True)
class _Blob:
    """One file's content: in memory (``data``) or on disk (``path``)."""

    sha256: str
    size: int
    data: bytes | None = None
    path: Path | None = None

    @classmethod
    def of(cls, content: bytes | str | os.PathLike[str]) -> _Blob:
        if isinstance(content, bytes):
            return cls(hashlib.sha256(content).hexdigest(), len(content), data=content)
        path = Path(content)
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                digest.update(chunk)
        return cls(digest.hexdigest(), path.stat().st_size, path=path)

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
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, dict[str, _Blob]] = field(default_factory=dict)


# --------------------------------------------------------------------------- stats & faults


@dataclass(frozen=True)
class RequestRecord:
    """One request as the hub saw it."""

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

    def add(self, record: RequestRecord) -> int:
        with self._lock:
            self._records.append(record)
            return len(self._records) - 1

    def add_bytes(self, index: int, n: int) -> None:
        with self._lock:
            if index < len(self._records):  # not reset meanwhile
                r = self._records[index]
                self._records[index] = RequestRecord(
                    r.method, r.path, r.status, r.bytes_sent + n, r.range, r.body
                )

    @property
    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._records)

    @property
    def request_count(self) -> int:
        return len(self.requests)

    @property
    def bytes_served(self) -> int:
        return sum(r.bytes_sent for r in self.requests)

    @property
    def bodies_served(self) -> int:
        """File-content GET responses (full or ranged) sent, complete or not."""
        return sum(1 for r in self.requests if r.body)

    def count(self, method: str | None = None, path_contains: str | None = None) -> int:
        return sum(
            1
            for r in self.requests
            if (method is None or r.method == method)
            and (path_contains is None or path_contains in r.path)
        )

    def reset(self) -> None:
        with self._lock:
            self._records.clear()


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
    """Make the hub misbehave on purpose: errors, delays, dropped connections, bad bytes."""

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
        """Answer the next ``n`` matching requests with ``status``."""
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
        """Send headers and ``after_bytes`` of the body, then drop the connection.

        ``reset=True`` aborts with a TCP RST, as a crashed server or a broken network
        does (the client raises); ``reset=False`` closes cleanly, which
        huggingface_hub answers by resuming with a ``Range`` request.
        """
        self._add(_Fault("drop", n, "GET", path_contains, after_bytes=after_bytes, reset=reset))

    def corrupt_next(self, n: int = 1, *, path_contains: str | None = None) -> None:
        """Flip one byte of the next ``n`` file bodies (length unchanged)."""
        self._add(_Fault("corrupt", n, "GET", path_contains))

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def _add(self, fault: _Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def take(self, kind: str, method: str, path: str) -> _Fault | None:
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

    With ``token`` set, every request must carry ``Authorization: Bearer <token>``.
    """

    def __init__(self, *, token: str | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.token = token
        self.host = host
        self.port = port
        self.stats = HubStats()
        self.faults = FaultInjector()
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._upload_dir: Path | None = None
        self._lfs: dict[str, _Blob] = {}
        # LFS upload/verify links are "pre-signed" like the real hub's storage URLs:
        # the client sends them without its token.
        self._lfs_signature = os.urandom(16).hex()

    # -- lifecycle
    @property
    def endpoint(self) -> str:
        if self._server is None:
            raise RuntimeError(
                "LocalHub is not started; call start() or use it as a context manager"
            )
        return f"http://{self.host}:{self._server.server_address[1]}"

    def start(self) -> LocalHub:
        if self._server is not None:
            return self
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        server = ThreadingHTTPServer((self.host, self.port), Handler)
        server.daemon_threads = True
        self._server = server
        self._upload_dir = Path(tempfile.mkdtemp(prefix="pytest-ckpts-hub-"))
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._upload_dir is not None:
            shutil.rmtree(self._upload_dir, ignore_errors=True)
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
        with self._lock:
            repo = self._repos.setdefault((repo_type, repo_id), _Repo())
            repo.private = private

    def add_file(
        self,
        repo_id: str,
        path_in_repo: str,
        data: bytes | str | os.PathLike[str],
        *,
        repo_type: str = "model",
        revision: str = "main",
        message: str = "add file",
    ) -> str:
        """Commit one file; returns the new 40-hex commit sha."""
        return self.add_files(
            repo_id, {path_in_repo: data}, repo_type=repo_type, revision=revision, message=message
        )

    def add_files(
        self,
        repo_id: str,
        files: Mapping[str, bytes | str | os.PathLike[str]],
        *,
        repo_type: str = "model",
        revision: str = "main",
        message: str = "add files",
    ) -> str:
        """Commit several files at once; returns the new 40-hex commit sha.

        Commit shas are deterministic (parent + sorted paths and content hashes; not
        the message), so a manifest can pin a commit that every fresh hub with the
        same files serves.
        """
        blobs = {path.strip("/"): _Blob.of(content) for path, content in files.items()}
        return self._commit(repo_id, repo_type, revision, blobs, message)

    def _commit(
        self, repo_id: str, repo_type: str, revision: str, blobs: Mapping[str, _Blob], message: str
    ) -> str:
        with self._lock:
            repo = self._repos.setdefault((repo_type, repo_id), _Repo())
            parent = repo.branches.get(revision, _EMPTY_COMMIT)
            tree = dict(repo.commits.get(parent, {}))
            tree.update(blobs)
            # The message is not hashed: the same files give the same commit whoever
            # serves them (the demo's conftest, `python -m pytest_ckpts.testing.hub`).
            digest = hashlib.sha1(f"{parent}\n".encode())
            for path in sorted(tree):
                digest.update(f"{path}\0{tree[path].sha256}\n".encode())
            commit = digest.hexdigest()
            repo.commits[commit] = tree
            repo.branches[revision] = commit
            return commit

    def commit_sha(self, repo_id: str, revision: str = "main", *, repo_type: str = "model") -> str:
        with self._lock:
            repo = self._repos[(repo_type, repo_id)]
            return repo.branches.get(revision, revision)

    def file_bytes(
        self, repo_id: str, path_in_repo: str, revision: str = "main", *, repo_type: str = "model"
    ) -> bytes:
        blob = self._lookup(repo_type, repo_id, revision, path_in_repo)
        if not isinstance(blob, _Blob):
            raise KeyError(f"{repo_id}@{revision}:{path_in_repo}: {blob}")
        return b"".join(blob.read())

    def _lookup(self, repo_type: str, repo_id: str, revision: str, path: str) -> _Blob | str:
        """The blob, or the X-Error-Code explaining why there is none."""
        with self._lock:
            repo = self._repos.get((repo_type, repo_id))
            if repo is None:
                return "RepoNotFound"
            commit = repo.branches.get(revision, revision)
            tree = repo.commits.get(commit)
            if tree is None:
                return "RevisionNotFound"
            blob = tree.get(path)
            return blob if blob is not None else "EntryNotFound"


# --------------------------------------------------------------------------- HTTP


_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}


class _Handler(BaseHTTPRequestHandler):
    hub: LocalHub
    protocol_version = "HTTP/1.1"
    server_version = "pytest-ckpts-local-hub"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # -- plumbing
    def _record(self, status: int, sent: int = 0, *, body: bool = False) -> int:
        return self.hub.stats.add(
            RequestRecord(
                method=self.command,
                path=self.path,
                status=status,
                bytes_sent=sent,
                range=self.headers.get("Range"),
                body=body,
            )
        )

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
        self._record(status, len(payload) if self.command != "HEAD" else 0)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _json(self, status: int, obj: object) -> None:
        self._send(status, json.dumps(obj).encode())

    def _error(self, status: int, code: str, message: str) -> None:
        self._send(
            status,
            json.dumps({"error": message}).encode(),
            headers={"X-Error-Code": code, "X-Error-Message": message},
        )

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _authorized(self, private: bool = False) -> bool:
        token = self.hub.token
        if token is None and not private:
            return True
        header = self.headers.get("Authorization", "")
        return token is not None and header == f"Bearer {token}"

    def _pre(self) -> bool:
        """Apply delay and fail faults; return False when the request was answered."""
        delay = self.hub.faults.take("delay", self.command, self.path)
        if delay is not None:
            time.sleep(delay.seconds)
        fail = self.hub.faults.take("fail", self.command, self.path)
        if fail is not None:
            if self.command in ("POST", "PUT"):
                self._body()
            self._error(fail.status, "InjectedFault", f"injected failure {fail.status}")
            return False
        presigned = urllib.parse.urlsplit(self.path).query == f"sig={self.hub._lfs_signature}"
        if not presigned and not self._authorized():
            if self.command in ("POST", "PUT"):
                self._body()
            self._error(401, "RepoNotFound", "Invalid credentials in Authorization header")
            return False
        return True

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        try:
            if not self._pre():
                return
            path = urllib.parse.urlsplit(self.path).path
            route = self._route(path)
            if route is None:
                if self.command in ("POST", "PUT"):
                    self._body()
                self._error(404, "NotFound", f"no route for {self.command} {path}")
                return
            route()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _route(self, path: str) -> Any:
        parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")]
        method = self.command
        if parts[:1] == ["api"]:
            return self._api_route(parts[1:], method)
        if len(parts) >= 2 and parts[-1] == "batch" and ".git" in path:
            return lambda: self._lfs_batch(path)
        signed = urllib.parse.urlsplit(self.path).query == f"sig={self.hub._lfs_signature}"
        if parts[:1] == ["lfs-upload"] and method == "PUT" and signed:
            return lambda: self._lfs_put(parts[1])
        if parts[:1] == ["lfs-verify"] and method == "POST" and signed:
            return lambda: self._lfs_verify(parts[1])
        # [datasets/]org/name/resolve/<revision>/<path...>
        repo_type = "model"
        if parts and parts[0] in ("datasets", "spaces"):
            repo_type = _TYPES[parts[0]]
            parts = parts[1:]
        if "resolve" in parts and method in ("GET", "HEAD"):
            i = parts.index("resolve")
            repo_id = "/".join(parts[:i])
            if len(parts) < i + 3:
                return None
            revision, file_path = parts[i + 1], "/".join(parts[i + 2 :])
            return lambda: self._resolve(repo_type, repo_id, revision, file_path)
        return None

    # -- downloads
    def _resolve(self, repo_type: str, repo_id: str, revision: str, file_path: str) -> None:
        repo = self.hub._repos.get((repo_type, repo_id))
        if repo is not None and repo.private and not self._authorized(private=True):
            self._error(401, "RepoNotFound", "Repository not found or not authorized")
            return
        found = self.hub._lookup(repo_type, repo_id, revision, file_path)
        if isinstance(found, str):
            self._error(404, found, f"{found}: {repo_id}@{revision}:{file_path}")
            return
        blob = found
        commit = self.hub.commit_sha(repo_id, revision, repo_type=repo_type)
        start, end, status = 0, blob.size, 200
        rng = self.headers.get("Range")
        if rng:
            m = re.match(r"bytes=(\d*)-(\d*)$", rng.strip())
            if m is None or (not m.group(1) and not m.group(2)):
                self._error(416, "RangeNotSatisfiable", f"bad range {rng}")
                return
            if m.group(1):
                start = int(m.group(1))
                end = min(blob.size, int(m.group(2)) + 1) if m.group(2) else blob.size
            else:
                start = max(0, blob.size - int(m.group(2)))
            if start >= blob.size and blob.size:
                self._error(416, "RangeNotSatisfiable", f"range {rng} beyond {blob.size}")
                return
            status = 206
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{blob.sha256}"')
        self.send_header("X-Linked-Etag", f'"{blob.sha256}"')
        self.send_header("X-Linked-Size", str(blob.size))
        self.send_header("X-Repo-Commit", commit)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{blob.size}")
        if self.command == "HEAD":
            self._record(status)
            self.end_headers()
            return
        record = self._record(status, 0, body=True)
        self.end_headers()
        drop = self.hub.faults.take("drop", self.command, self.path)
        corrupt = self.hub.faults.take("corrupt", self.command, self.path)
        sent = 0
        for chunk in blob.read(start, end):
            if drop is not None and sent + len(chunk) > drop.after_bytes:
                part = chunk[: max(0, drop.after_bytes - sent)]
                self.hub.stats.add_bytes(record, len(part))
                self.wfile.write(part)
                self.wfile.flush()
                if drop.reset:
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    self.connection.close()
                else:
                    self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            if corrupt is not None and chunk:
                chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
                corrupt = None
            self.hub.stats.add_bytes(record, len(chunk))
            self.wfile.write(chunk)
            sent += len(chunk)

    # -- API
    def _api_route(self, parts: list[str], method: str) -> Any:
        if parts[:2] == ["repos", "create"] and method == "POST":
            return self._create_repo
        if not parts or parts[0] not in _TYPES:
            return None
        repo_type = _TYPES[parts[0]]
        rest = parts[1:]
        for verb in ("revision", "preupload", "commit", "tree"):
            if verb in rest:
                i = rest.index(verb)
                repo_id = "/".join(rest[:i])
                revision = "/".join(rest[i + 1 :]) or "main"
                if verb == "revision" and method == "GET":
                    return lambda: self._repo_info(repo_type, repo_id, revision)
                if verb == "preupload" and method == "POST":
                    return lambda: self._preupload(repo_type, repo_id)
                if verb == "commit" and method == "POST":
                    return lambda: self._commit(repo_type, repo_id, revision)
                if verb == "tree" and method == "GET":
                    return lambda: self._tree(repo_type, repo_id, revision)
                return None
        if method == "GET" and len(rest) >= 1:
            return lambda: self._repo_info(repo_type, "/".join(rest), "main")
        return None

    def _repo_info(self, repo_type: str, repo_id: str, revision: str) -> None:
        repo = self.hub._repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not self._authorized(private=True)):
            self._error(404 if repo is None else 401, "RepoNotFound", f"{repo_id} not found")
            return
        commit = repo.branches.get(revision, revision)
        tree = repo.commits.get(commit)
        if tree is None:
            self._error(404, "RevisionNotFound", f"revision {revision} not found")
            return
        self._json(
            200,
            {
                "id": repo_id,
                "modelId": repo_id,
                "sha": commit,
                "private": repo.private,
                "siblings": [
                    {
                        "rfilename": p,
                        "size": b.size,
                        "lfs": {"sha256": b.sha256, "size": b.size, "pointerSize": 134},
                    }
                    for p, b in sorted(tree.items())
                ],
            },
        )

    def _tree(self, repo_type: str, repo_id: str, revision: str) -> None:
        """The recursive file listing (``list_repo_files``/``list_repo_tree``)."""
        repo = self.hub._repos.get((repo_type, repo_id))
        tree = None if repo is None else repo.commits.get(repo.branches.get(revision, revision))
        if tree is None:
            self._error(404, "RepoNotFound" if repo is None else "RevisionNotFound", "not found")
            return
        entries: list[dict[str, Any]] = []
        dirs = sorted(
            {"/".join(p.split("/")[:i]) for p in tree for i in range(1, p.count("/") + 1)}
        )
        entries += [{"type": "directory", "path": d, "oid": "0" * 40, "size": 0} for d in dirs]
        for path, blob in sorted(tree.items()):
            entries.append(
                {
                    "type": "file",
                    "path": path,
                    "size": blob.size,
                    "oid": blob.sha256[:40],
                    "lfs": {"oid": blob.sha256, "size": blob.size, "pointerSize": 134},
                }
            )
        self._json(200, entries)

    def _create_repo(self) -> None:
        body = json.loads(self._body() or b"{}")
        name = body.get("name", "")
        org = body.get("organization")
        repo_id = f"{org}/{name}" if org else name
        repo_type = body.get("type") or "model"
        if (repo_type, repo_id) in self.hub._repos:
            self._error(409, "RepoExists", "You already created this repo")
            return
        self.hub.create_repo(repo_id, repo_type=repo_type, private=bool(body.get("private")))
        self._json(200, {"url": f"{self.hub.endpoint}/{repo_id}", "name": repo_id})

    def _preupload(self, repo_type: str, repo_id: str) -> None:
        body = json.loads(self._body() or b"{}")
        if (repo_type, repo_id) not in self.hub._repos:
            self._error(404, "RepoNotFound", f"{repo_id} not found")
            return
        files = [
            {"path": f["path"], "uploadMode": "lfs", "shouldIgnore": False}
            for f in body.get("files", [])
        ]
        self._json(200, {"files": files})

    def _lfs_batch(self, path: str) -> None:
        body = json.loads(self._body() or b"{}")
        sig = f"sig={self.hub._lfs_signature}"
        objects = []
        for obj in body.get("objects", []):
            oid, size = obj["oid"], obj["size"]
            entry: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if oid not in self.hub._lfs:
                entry["actions"] = {
                    "upload": {"href": f"{self.hub.endpoint}/lfs-upload/{oid}?{sig}"},
                    "verify": {"href": f"{self.hub.endpoint}/lfs-verify/{oid}?{sig}"},
                }
            objects.append(entry)
        self._send(
            200,
            json.dumps({"transfer": "basic", "objects": objects}).encode(),
            content_type="application/vnd.git-lfs+json",
        )

    def _lfs_put(self, oid: str) -> None:
        assert self.hub._upload_dir is not None
        length = int(self.headers.get("Content-Length") or 0)
        target = self.hub._upload_dir / oid
        digest = hashlib.sha256()
        with target.open("wb") as f:
            remaining = length
            while remaining > 0:
                chunk = self.rfile.read(min(_CHUNK, remaining))
                if not chunk:
                    break
                digest.update(chunk)
                f.write(chunk)
                remaining -= len(chunk)
        if digest.hexdigest() != oid:
            target.unlink()
            self._error(400, "BadOid", "uploaded content does not match its oid")
            return
        with self.hub._lock:
            self.hub._lfs[oid] = _Blob(oid, target.stat().st_size, path=target)
        self._send(200, b"")

    def _lfs_verify(self, oid: str) -> None:
        self._body()
        if oid not in self.hub._lfs:
            self._error(404, "NotFound", f"object {oid} was not uploaded")
            return
        self._json(200, {"oid": oid})

    def _commit(self, repo_type: str, repo_id: str, revision: str) -> None:
        raw = self._body()
        if (repo_type, repo_id) not in self.hub._repos:
            self._error(404, "RepoNotFound", f"{repo_id} not found")
            return
        message, blobs = "commit", {}
        for line in raw.decode("utf-8").splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item.get("key"), item.get("value", {})
            if key == "header":
                message = value.get("summary") or message
            elif key == "file":
                content = base64.b64decode(value["content"])
                blobs[value["path"]] = _Blob.of(content)
            elif key == "lfsFile":
                blob = self.hub._lfs.get(value["oid"])
                if blob is None:
                    self._error(400, "MissingLfsObject", f"LFS object {value['oid']} missing")
                    return
                blobs[value["path"]] = blob
        commit = self.hub._commit(repo_id, repo_type, revision, blobs, message)
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        self._json(
            200,
            {
                "success": True,
                "commitOid": commit,
                "commitUrl": f"{self.hub.endpoint}/{prefix}{repo_id}/commit/{commit}",
            },
        )


# --------------------------------------------------------------------------- CLI


def _parse_repo(value: str) -> tuple[str, Path]:
    repo, sep, directory = value.partition("=")
    if not sep or not repo or not directory:
        raise argparse.ArgumentTypeError(f"expected ORG/NAME=DIR, got {value!r}")
    return repo, Path(directory)


def main(argv: list[str] | None = None) -> int:
    """Serve directories as hub repos until interrupted (for demos and manual checks)."""
    parser = argparse.ArgumentParser(
        prog="python -m pytest_ckpts.testing.hub",
        description="Serve local directories as Hugging Face Hub repos on 127.0.0.1.",
    )
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    parser.add_argument(
        "--repo", type=_parse_repo, action="append", default=[], metavar="ORG/NAME=DIR"
    )
    parser.add_argument("--token", default=None, help="require this bearer token")
    args = parser.parse_args(argv)
    hub = LocalHub(token=args.token, port=args.port).start()
    for repo_id, directory in args.repo:
        files = {
            p.relative_to(directory).as_posix(): p
            for p in sorted(directory.rglob("*"))
            if p.is_file() and not fnmatch.fnmatch(p.name, ".*")
        }
        commit = hub.add_files(repo_id, files, message="serve directory")
        print(f"{repo_id}: {len(files)} files at commit {commit}", flush=True)
    print(f"endpoint: {hub.endpoint}", flush=True)
    print(f"export HF_ENDPOINT={hub.endpoint}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        hub.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
