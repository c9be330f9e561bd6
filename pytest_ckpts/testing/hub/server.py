"""The local hub's server object: lifecycle, content, faults and the request log.

``LocalHub`` is what tests hold. The HTTP handlers in ``routes.py`` reach it only
through the small interface marked "for the handlers" below (content, log, faults,
token, endpoint, connection tracking and the stop signal), never its private state.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Mapping
from http.server import ThreadingHTTPServer
from types import TracebackType

from ..faults import FaultPlan, RequestLog
from .content import Blob, Content, HubContent, check_repo_type, clean_path
from .routes import ROUTE_KINDS, HubHandler

__all__ = ["FaultInjector", "HubStats", "LocalHub"]


class HubStats(RequestLog):
    """The hub's request log and counters (``hub.stats``); see ``RequestLog``."""


class FaultInjector(FaultPlan):
    """The hub's fault plan (``hub.faults``); a fault scoped by nothing hits every request."""

    def __init__(self) -> None:
        super().__init__(routes=ROUTE_KINDS, default_route=None)


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

    #: TCP_NODELAY on accepted sockets and each response's headers and first body
    #: bytes in one write. Without them a kept-alive connection waits out the client's
    #: delayed ACK (~40 ms) on every answer; benchmarks/bench_hub.py turns this off
    #: (in a subclass) to measure that baseline.
    low_latency: bool = True

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
        self.content = HubContent(upload_dir)
        # LFS upload/verify links are "pre-signed" like the real hub's storage URLs:
        # the client sends them without its token.
        self.lfs_signature = os.urandom(16).hex()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._last_port: int | None = None
        self._accepted = 0

    # -- lifecycle
    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT``; pass it as ``endpoint=`` to every client call.

        After ``stop()`` it still names the port the hub listened on, which now
        refuses connections: a "hub is down" endpoint.
        """
        if self._last_port is None:
            raise RuntimeError(
                "LocalHub is not started; call start() or use it as a context manager"
            )
        return f"http://{self.host}:{self._last_port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def connections_accepted(self) -> int:
        """TCP connections accepted since the hub was made: shows whether clients keep alive."""
        with self._lock:
            return self._accepted

    def start(self) -> LocalHub:
        if self._server is not None:
            return self

        class Handler(HubHandler):
            pass

        Handler.hub = self
        server = ThreadingHTTPServer((self.host, self.port), Handler)
        server.daemon_threads = True
        self._stopping.clear()
        self._server = server
        self._last_port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"LocalHub:{self._last_port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening, cut open (keep-alive, blackholed) connections, delete uploads.

        Repos added with ``add_file`` survive a later ``start()``; LFS content that
        arrived over HTTP does not (it lived in the hub's temp dir).
        """
        self._stopping.set()  # wakes delayed, slowed and blackholed requests
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
        self.content.discard_uploads()

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
        self.content.create_repo(repo_id, repo_type, private)

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
        check_repo_type(repo_type)
        blobs = {
            clean_path(path): Blob.of(clean_path(path), content, lfs=lfs)
            for path, content in files.items()
        }
        return self.content.commit(repo_id, repo_type, revision, blobs, message=message)

    def commit_sha(self, repo_id: str, revision: str = "main", *, repo_type: str = "model") -> str:
        """The commit a branch (or commit sha) names; ``KeyError`` if there is none."""
        commit = self.content.commit_sha(repo_id, revision, repo_type)
        if commit is None:
            raise KeyError(f"{repo_type} repo {repo_id!r} has no revision {revision!r}")
        return commit

    def file_bytes(
        self, repo_id: str, path_in_repo: str, revision: str = "main", *, repo_type: str = "model"
    ) -> bytes:
        """The content a download of this file returns (without faults)."""
        blob, _, code = self.content.lookup(repo_type, repo_id, revision, path_in_repo)
        if blob is None:
            raise KeyError(f"{repo_id}@{revision}:{path_in_repo}: {code}")
        return b"".join(blob.read())

    # -- faults (shortcuts for hub.faults.<same name>)
    def throttle(
        self,
        n: int = 1,
        retry_after: int | None = 1,
        *,
        http_date: bool = False,
        route: str | None = None,
        path_contains: str | None = None,
    ) -> None:
        """``429`` with ``Retry-After`` for the next ``n`` requests (of ``route`` kind)."""
        self.faults.throttle(
            n, retry_after, http_date=http_date, route=route, path_contains=path_contains
        )

    def blackhole(self, on: bool = True) -> None:
        """Accept connections and never answer until ``blackhole(False)`` or ``stop()``."""
        self.faults.blackhole(on)

    @staticmethod
    def dead_endpoint(host: str = "127.0.0.1") -> str:
        """An ``http://`` URL on a port nobody listens on: connections are refused.

        The port was free a moment ago (the OS picked it) and is closed now; another
        process could take it later, so use it right away.
        """
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        return f"http://{host}:{port}"

    # -- for the handlers
    def track(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.add(conn)
            self._accepted += 1

    def untrack(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.discard(conn)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def wait_stopping(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True (at once) when the hub is stopping."""
        return self._stopping.wait(seconds)
