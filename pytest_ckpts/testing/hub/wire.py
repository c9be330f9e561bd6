"""HTTP plumbing of the local hub's handler: answers, bodies, pacing, auth, aborts.

Responses leave in as few writes as possible (headers with the first body bytes)
on sockets with TCP_NODELAY: a kept-alive connection otherwise waits out the
client's delayed ACK (~40 ms) before each small answer.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any

from ..faults import RequestRecord, Ticket

if TYPE_CHECKING:
    from .server import LocalHub


class WireHandler(BaseHTTPRequestHandler):
    """One client connection: what every route needs to read a request and answer it."""

    hub: LocalHub
    _headers_buffer: list[bytes]
    protocol_version = "HTTP/1.1"
    server_version = "pytest-ckpts-local-hub"
    _raw: bytes | None = None  # the request body once read
    _responded = False
    _route_kind = "other"
    _rate: float | None = None  # body bytes/s of this response (a `slow` fault)
    _paced = 0
    _pace_start = 0.0
    _deferred = False  # headers are buffered until the first body bytes

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        if self.hub.low_latency:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.hub.track(self.connection)

    def finish(self) -> None:
        self.hub.untrack(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def _reset_request_state(self) -> None:
        self._raw = None
        self._responded = False
        self._route_kind = "other"
        self._rate = None
        self._paced = 0
        self._deferred = False

    # -- log
    def _record(self, status: int, *, body: bool = False) -> Ticket:
        return self.hub.stats.add(
            RequestRecord(
                method=self.command,
                path=self.path,
                status=status,
                range=self.headers.get("Range"),
                body=body,
                route=self._route_kind,
            )
        )

    # -- writing
    def send_response(self, code: int, message: str | None = None) -> None:
        self._responded = True
        super().send_response(code, message)

    def _end_headers(self) -> None:
        """End the headers; with ``low_latency`` they leave with the first body bytes."""
        if self.hub.low_latency:
            self._headers_buffer.append(b"\r\n")
            self._deferred = True
        else:
            self.end_headers()

    def _flush_headers(self) -> None:
        if self._deferred:
            self._deferred = False
            self.flush_headers()

    def _put(self, ticket: Ticket, data: bytes) -> None:
        self.hub.stats.add_bytes(ticket, len(data))
        try:
            if self._deferred:
                self._deferred = False
                head = b"".join(self._headers_buffer)
                self._headers_buffer = []
                self.wfile.write(head + data)
            else:
                self.wfile.write(data)
        except OSError:
            self.hub.stats.add_bytes(ticket, -len(data))
            raise

    def _write(self, ticket: Ticket, data: bytes) -> None:
        """Send body bytes, counted first, at the response's pace if it has one."""
        rate = self._rate
        if rate is None:
            self._put(ticket, data)
            return
        if not self._paced:
            self._pace_start = time.monotonic()
        step = max(1, int(rate / 50))  # ~20 ms slices
        for i in range(0, len(data), step):
            piece = data[i : i + step]
            self._put(ticket, piece)
            self._paced += len(piece)
            wait = self._pace_start + self._paced / rate - time.monotonic()
            if wait > 0 and self.hub.wait_stopping(wait):
                raise ConnectionAbortedError("LocalHub stopped")

    def _send(
        self,
        status: int,
        payload: bytes = b"",
        *,
        headers: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        reason: str | None = None,
    ) -> None:
        self.send_response(status, reason)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        ticket = self._record(status)
        self._end_headers()
        if self.command != "HEAD" and payload:
            self._write(ticket, payload)
        self._flush_headers()

    def _json(self, status: int, obj: object, content_type: str = "application/json") -> None:
        self._send(status, json.dumps(obj).encode(), content_type=content_type)

    def _error(
        self,
        status: int,
        code: str | None,
        message: str,
        headers: Mapping[str, str] | None = None,
        body: Mapping[str, object] | None = None,
        *,
        reason: str | None = None,
    ) -> None:
        """The Hub's error form: ``{"error": message, ...body}``, ``X-Error-Code``/``-Message``."""
        extra = dict(headers or {})
        if code is not None:
            extra["X-Error-Code"] = code
        extra["X-Error-Message"] = message
        payload = {"error": message, **(body or {})}
        self._send(status, json.dumps(payload).encode(), headers=extra, reason=reason)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The standard library's own answers (an unsupported method, a malformed request)
        in the Hub's JSON error form, not its HTML page."""
        text = message or self.responses.get(code, ("Error",))[0]
        payload = json.dumps({"error": text}).encode()
        self.send_response(code)
        self.send_header("Connection", "close")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("X-Error-Message", text)
        self.end_headers()
        if getattr(self, "command", None) != "HEAD":
            self.wfile.write(payload)

    def _abort(self, *, reset: bool) -> None:
        self._flush_headers()
        if reset:  # RST, as a crashed server or a broken network produces
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        else:
            self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True

    # -- reading
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

    # -- auth
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
