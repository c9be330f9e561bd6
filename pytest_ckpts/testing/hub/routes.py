"""The local hub's request handling: routing, faults by route kind, and downloads.

Every request gets a *route kind* before anything else happens, so faults and the
request log can name what a request was for:

``revision``  ``GET /api/{models,datasets,spaces}/{repo}[/revision/{rev}]`` (the probe)
``head``      ``HEAD /[datasets/]{repo}/resolve/{rev}/{path}`` (the client's metadata call)
``file``      ``GET /[datasets/]{repo}/resolve/{rev}/{path}`` (file bodies)
``tree``      ``GET /api/.../tree/...``
``refs``      ``/api/.../{refs,branch,tag,commits}/...``: list refs, create/delete branches and
              tags, list commits
``upload``    repo creation and deletion, preupload, the LFS batch/upload/verify calls, commits
``api``       the client's telemetry and README checks, unknown ``/api`` paths
``other``     anything else
"""

from __future__ import annotations

import re
import socket
import urllib.parse
from functools import partial

from ..faults import Fault, FaultKind
from .api import TYPES, ApiHandler, Handler
from .content import Blob

__all__ = ["ROUTE_KINDS", "HubHandler"]

ROUTE_KINDS = ("revision", "head", "file", "tree", "refs", "upload", "api", "other")
_EMPTY_AGENT_REGISTRY: dict[str, object] = {"standardEnvVars": [], "harnesses": {}}
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_INVERT = bytes(255 - i for i in range(256))


class HubHandler(ApiHandler):
    """Routes a request, applies the fault plan, answers."""

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        self._reset_request_state()
        try:
            split = urllib.parse.urlsplit(self.path)
            query = urllib.parse.parse_qs(split.query)
            kind, handler, signed = self._route(split.path, query)
            self._route_kind = kind
            if self.hub.faults.blackholed:
                self._swallow()
                return
            if self._injected():
                return
            if not signed and self._denied():
                return
            if handler is None:
                self._drain()
                self._error(404, None, f"no route for {self.command} {split.path}")
                return
            handler()
        except OSError:
            self.close_connection = True
        except Exception as exc:  # a malformed request must not look like a dead hub
            self.close_connection = True
            if not self._responded:
                status = 400 if isinstance(exc, (ValueError, KeyError, TypeError)) else 500
                self._error(status, None, f"LocalHub could not handle the request: {exc!r}")
        finally:
            try:
                self._flush_headers()
            except OSError:
                self.close_connection = True

    def _injected(self) -> bool:
        """Apply hold, delay, slow and fail faults; True when the request is dealt with."""
        faults, args = self.hub.faults, (self.command, self.path, self._route_kind)
        hold = faults.take(FaultKind.HOLD, *args)
        if hold is not None and hold.gate is not None:
            hold.gate.arrive()
            while not hold.gate.wait_released(0.05):
                if self.hub.wait_stopping(0):
                    self.close_connection = True
                    return True
        for kind in (FaultKind.DELAY, FaultKind.SLOW):
            fault = faults.take(kind, *args)
            if fault is None:
                continue
            if fault.seconds and self.hub.wait_stopping(fault.seconds):
                self.close_connection = True
                return True
            if fault.bytes_per_second is not None:
                self._rate = fault.bytes_per_second
        fail = faults.take(FaultKind.FAIL, *args)
        if fail is None:
            return False
        self._drain()
        retry_after = fail.retry_after_header()
        headers = {"Retry-After": retry_after} if retry_after is not None else None
        message, reason = f"injected failure {fail.status}", None
        if fail.echo_auth:  # a hostile hub: the credentials go back in every text it sends
            sent = self.headers.get("Authorization", "(none)")
            message, reason = f"{message}; you sent Authorization: {sent}", f"Denied {sent}"
        self._error(fail.status, "InjectedFault", message, headers, reason=reason)
        return True

    def _swallow(self) -> None:
        """Blackhole: log the request unanswered, hold it, then close without a word."""
        self._record(0)
        while self.hub.faults.blackholed and not self.hub.wait_stopping(0.05):
            pass
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _route(self, path: str, query: dict[str, list[str]]) -> tuple[str, Handler | None, bool]:
        """``(route kind, handler or None, needs no token)``; answers nothing itself."""
        parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")]
        method = self.command
        if parts == ["api", "agent-harnesses"] and method == "GET":
            # the client's telemetry (when not disabled) asks HF_ENDPOINT for this
            return "api", lambda: self._json(200, _EMPTY_AGENT_REGISTRY), True
        if parts[0] in ("lfs-upload", "lfs-verify") and len(parts) == 2:
            signed = query.get("sig") == [self.hub.lfs_signature]
            oid = parts[1]
            if signed and parts[0] == "lfs-upload" and method == "PUT":
                return "upload", lambda: self._lfs_put(oid), True
            if signed and parts[0] == "lfs-verify" and method == "POST":
                return "upload", lambda: self._lfs_verify(oid), True
            return "upload", None, signed
        if parts[0] == "api":
            kind, handler = self._api_route(parts[1:], method, query)
            return kind, handler, False
        repo_type = "model"
        if parts[0] in ("datasets", "spaces"):
            repo_type = TYPES[parts[0]]
            parts = parts[1:]
        if parts[-4:] == ["info", "lfs", "objects", "batch"] and method == "POST":
            repo_id = "/".join(parts[:-4]).removesuffix(".git")
            return "upload", lambda: self._lfs_batch(repo_type, repo_id), False
        # [datasets/]org/name/resolve/<revision>/<path...> (or name/resolve/...)
        for i in (2, 1):
            if len(parts) > i + 2 and parts[i] == "resolve" and method in ("GET", "HEAD"):
                repo_id, revision, file_path = "/".join(parts[:i]), parts[i + 1], parts[i + 2 :]
                kind = "head" if method == "HEAD" else "file"
                resolve = partial(self._resolve, repo_type, repo_id, revision, "/".join(file_path))
                return kind, resolve, False
        return "other", None, False

    # -- downloads
    def _resolve(self, repo_type: str, repo_id: str, revision: str, file_path: str) -> None:
        if self._repo(repo_type, repo_id) is None:
            return
        blob, commit, code = self.hub.content.lookup(repo_type, repo_id, revision, file_path)
        if blob is None or commit is None:
            extra = {"X-Repo-Commit": commit} if commit else None
            self._error(404, code, f"{code}: {repo_id}@{revision}:{file_path}", extra)
            return
        if not blob.available():
            self._error(404, "EntryNotFound", f"content of {file_path} is gone from disk")
            return
        rng = self.headers.get("Range")
        span = _byte_range(rng, blob.size)
        if span is None:
            assert rng is not None
            headers = {"Content-Range": f"bytes */{blob.size}"}
            self._error(416, None, f"range {rng} not satisfiable for {blob.size} bytes", headers)
            return
        start, end, partial = span
        status = 206 if partial else 200
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{blob.etag}"')
        if blob.lfs:
            self.send_header("X-Linked-Etag", f'"{blob.sha256}"')
            self.send_header("X-Linked-Size", str(blob.size))
        self.send_header("X-Repo-Commit", commit)
        if partial:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{blob.size}")
        if self.command == "HEAD":
            self._record(status)
            self._end_headers()
            return
        ticket = self._record(status, body=True)
        self._end_headers()
        self._stream(ticket, blob, start, end)

    def _stream(self, ticket: tuple[int, int], blob: Blob, start: int, end: int) -> None:
        faults, args = self.hub.faults, (self.command, self.path, self._route_kind)
        drop = faults.take(FaultKind.DROP, *args)
        corrupt = faults.take(FaultKind.CORRUPT, *args)
        tamper = faults.take(FaultKind.TAMPER, *args)
        cut = None if drop is None else min(drop.after_bytes, max(0, end - start - 1))
        sent = 0
        for chunk in blob.read(start, end):
            if tamper is not None:
                chunk = _tampered(chunk, start + sent, tamper)
            if cut is not None and sent + len(chunk) > cut:
                if cut > sent:
                    self._write(ticket, chunk[: cut - sent])
                self._abort(reset=drop is not None and drop.reset)
                return
            if corrupt is not None and chunk:
                chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
                corrupt = None
            self._write(ticket, chunk)
            sent += len(chunk)


def _byte_range(header: str | None, size: int) -> tuple[int, int, bool] | None:
    """``(start, end, partial)`` for a ``Range`` header, as the hub's storage answers it.

    No header, a malformed one or several ranges: the whole file (``200``). One
    satisfiable range: ``206``, clipped to the file. Unsatisfiable (starts at or after
    the end, or ``-0``): None, a ``416``.
    """
    m = None if header is None else _RANGE.fullmatch(header.strip())
    if m is None or (not m.group(1) and not m.group(2)):
        return 0, size, False
    first, last = m.group(1), m.group(2)
    if first:
        start = int(first)
        if last and int(last) < start:
            return 0, size, False  # an invalid range is ignored
        end = min(size, int(last) + 1) if last else size
    else:
        start, end = max(0, size - int(last)), size
    if start >= size or end <= start:
        return None
    return start, end, True


def _tampered(chunk: bytes, offset: int, fault: Fault) -> bytes:
    """``chunk`` (file bytes from ``offset``) with the fault's range inverted."""
    lo = max(offset, fault.start)
    hi = offset + len(chunk) if fault.end is None else min(offset + len(chunk), fault.end)
    if lo >= hi:
        return chunk
    a, b = lo - offset, hi - offset
    return chunk[:a] + chunk[a:b].translate(_INVERT) + chunk[b:]
