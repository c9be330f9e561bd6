"""Real servers for mirror tests: a static HTTP file server and an S3 server (moto).

``StaticServer`` serves a folder over HTTP on 127.0.0.1 (``http.server`` in a thread),
with a request log (method, path, headers) and faults: a status per request path, a
delay before the body. ``MotoS3`` starts moto's standalone S3-protocol server in a
subprocess on 127.0.0.1 (the protocol of AWS S3, MinIO and R2), driven through s3fs.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fill_folder(folder: Path, files: dict[str, bytes]) -> dict[str, str]:
    """Write each payload as ``folder/<sha256>`` (the default layout); name -> sha256."""
    folder.mkdir(parents=True, exist_ok=True)
    shas = {}
    for name, data in files.items():
        sha = hashlib.sha256(data).hexdigest()
        (folder / sha).write_bytes(data)
        shas[name] = sha
    return shas


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class StaticServer:
    """Serve ``root`` over HTTP on 127.0.0.1 with a request log and faults."""

    root: Path
    status: dict[str, int] = field(default_factory=dict)  # "/<name>" -> status to answer
    delay: float = 0.0  # seconds before each GET body
    requests: list[Request] = field(default_factory=list)
    _server: Any = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> StaticServer:
        owner = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=str(owner.root), **kwargs)

            def log_message(self, *args: Any) -> None:
                pass

            def _fault(self) -> bool:
                owner.requests.append(Request(self.command, self.path, dict(self.headers)))
                code = owner.status.get(self.path) or owner.status.get("*")
                if code:
                    self.send_response(code)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return True
                if owner.delay:
                    time.sleep(owner.delay)
                return False

            def do_GET(self) -> None:
                if not self._fault():
                    super().do_GET()

            def do_HEAD(self) -> None:
                if not self._fault():
                    super().do_HEAD()

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.handle_error = lambda *args: None  # a client that gave up: not news
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def gets(self) -> list[Request]:
        return [r for r in self.requests if r.method == "GET"]


@contextlib.contextmanager
def static_server(root: Path) -> Iterator[StaticServer]:
    server = StaticServer(root).start()
    try:
        yield server
    finally:
        server.stop()


class MotoS3:
    """moto's S3 server in a subprocess on 127.0.0.1 (``python -m moto.server``)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> MotoS3:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=1).close()
                return self
            except OSError:
                if self._proc.poll() is not None:
                    raise RuntimeError("moto server exited") from None
                time.sleep(0.1)
        raise RuntimeError("moto server did not start")

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(10)
            self._proc = None

    def env(self) -> dict[str, str]:
        """What a process needs to reach this server through the standard AWS chain."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def filesystem(self) -> Any:
        import s3fs

        return s3fs.S3FileSystem(
            key="testing",
            secret="testing",
            endpoint_url=self.endpoint,
            skip_instance_cache=True,
        )


def apply_env(env: dict[str, str], monkeypatch: Any) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
