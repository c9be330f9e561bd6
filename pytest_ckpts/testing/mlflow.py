"""Real MLflow tracking stores and servers for tests (the engine behind the fixtures).

``mlflow_tracking`` gives each test a real sqlite-backed store. Creating one runs
~40 schema migrations (1.4-2.4 s here); copying an already migrated template file
takes milliseconds, so the template is built once per session and copied per test.
``mlflow_server`` runs the real MLflow FastAPI app under uvicorn in a thread, with
artifact proxying, behind a small ASGI layer that counts requests and injects faults.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .._extras import require
from ..archive import verify_archive
from ..uploads import STAGE_ARTIFACT_PATHS

__all__ = [
    "MlflowServer",
    "MlflowTracking",
    "ServerFaults",
    "TemplateStore",
    "mlflow_state",
]

#: mlflow's internal name for the server's default artifact root; the sqlite store uses
#: it instead of ./mlruns when set, which is how no test leaves ./mlruns behind.
ARTIFACT_ROOT_ENV = "_MLFLOW_SERVER_ARTIFACT_ROOT"
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors", ".bin", ".h5", ".pkl")


def _import_mlflow() -> Any:
    return require("mlflow", "the MLflow fixtures")


class TemplateStore:
    """A migrated sqlite tracking DB, built once, copied for every test."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.db = directory / "template.db"
        if not self.db.exists():
            _import_mlflow()
            from mlflow.store.tracking import sqlalchemy_store

            artifacts = directory / "template-artifacts"
            store_cls: Any = sqlalchemy_store.SqlAlchemyStore
            store = store_cls(f"sqlite:///{self.db}", str(artifacts))
            store.engine.dispose()

    def copy_to(self, directory: Path, *, proxied: bool = False) -> tuple[Path, Path]:
        """A fresh store in ``directory``: (db path, artifact root).

        ``proxied``: the default experiment stores artifacts through a server
        (``mlflow-artifacts:/0``) instead of directly in the artifact root.
        """
        directory.mkdir(parents=True, exist_ok=True)
        db = directory / "mlflow.db"
        artifacts = directory / "artifacts"
        artifacts.mkdir(exist_ok=True)
        shutil.copyfile(self.db, db)
        # The default experiment remembers where the template put its artifacts.
        with contextlib.closing(sqlite3.connect(db)) as conn:
            conn.execute(
                "UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                ("mlflow-artifacts:/0" if proxied else artifacts.joinpath("0").as_uri(),),
            )
            conn.commit()
        return db, artifacts


@contextlib.contextmanager
def mlflow_state(tracking_uri: str, artifact_root: str | None) -> Iterator[None]:
    """Point mlflow at ``tracking_uri`` for a block; restore everything after.

    Restores the env vars, the tracking URI set with ``mlflow.set_tracking_uri``, the
    active experiment, and ends runs the block left active.
    """
    mlflow = _import_mlflow()
    from mlflow.tracking import fluent
    from mlflow.tracking._tracking_service import utils as tracking_utils

    names = (
        "MLFLOW_TRACKING_URI",
        ARTIFACT_ROOT_ENV,
        "MLFLOW_RUN_ID",
        "MLFLOW_EXPERIMENT_ID",
        "MLFLOW_EXPERIMENT_NAME",
    )
    saved_env = {n: os.environ.get(n) for n in names}
    saved_uri = getattr(tracking_utils, "_tracking_uri", None)
    saved_experiment = getattr(fluent, "_active_experiment_id", None)
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    if artifact_root is not None:
        os.environ[ARTIFACT_ROOT_ENV] = artifact_root
    for n in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        os.environ.pop(n, None)
    mlflow.set_tracking_uri(tracking_uri)
    try:
        yield
    finally:
        while mlflow.active_run() is not None:
            mlflow.end_run()
        for n, v in saved_env.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v
        tracking_utils._tracking_uri = saved_uri
        fluent._active_experiment_id = saved_experiment


@dataclass
class MlflowTracking:
    """What the ``mlflow_tracking`` and ``mlflow_server`` fixtures hand to a test."""

    tracking_uri: str
    artifact_root: Path
    _client: Any = None

    @property
    def client(self) -> Any:
        """An ``MlflowClient`` bound to this store."""
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def list_artifacts(self, run_id: str, path: str | None = None) -> list[str]:
        """Every artifact file of the run, recursively, as posix paths."""
        out: list[str] = []
        for info in self.client.list_artifacts(run_id, path):
            if info.is_dir:
                out.extend(self.list_artifacts(run_id, info.path))
            else:
                out.append(info.path)
        return sorted(out)

    def download_artifact(self, run_id: str, path: str, dst: str | os.PathLike[str]) -> Path:
        """Download one artifact into directory ``dst``; return the local file."""
        Path(dst).mkdir(parents=True, exist_ok=True)
        return Path(self.client.download_artifacts(run_id, path, str(dst)))

    def assert_archive_first(
        self,
        run_id: str,
        stage: str,
        source_dir: str | os.PathLike[str] | None = None,
        *,
        artifact_path: str | None = None,
    ) -> dict[str, Any]:
        """Assert the run holds exactly one checkpoint archive, at the stage's path.

        No loose checkpoint files may sit beside it. The archive must verify against
        its ``MANIFEST.json``, and with ``source_dir`` that manifest must describe
        exactly the files in it. Returns the manifest.
        """
        __tracebackhide__ = True
        expected = artifact_path or STAGE_ARTIFACT_PATHS[stage]
        artifacts = self.list_artifacts(run_id)
        archives = [a for a in artifacts if a.endswith(".tar.gz")]
        loose = [a for a in artifacts if PurePosixPath(a).suffix in _CHECKPOINT_SUFFIXES]
        problems = []
        if archives != [expected]:
            problems.append(f"expected exactly one archive at {expected!r}, found {archives}")
        if loose:
            problems.append(f"loose checkpoint files uploaded next to the archive: {loose}")
        if problems:
            raise AssertionError(
                f"run {run_id} ({stage}) is not archive-first:\n  " + "\n  ".join(problems)
            )
        with tempfile.TemporaryDirectory(prefix="pytest-ckpts-verify-") as tmp:
            local = self.download_artifact(run_id, expected, tmp)
            manifest = verify_archive(local)
        if manifest.get("stage") != stage:
            raise AssertionError(
                f"archive manifest says stage {manifest.get('stage')!r}, not {stage!r}"
            )
        if source_dir is not None:
            from ..integrity import calculate_sha256

            src = Path(source_dir)
            actual = {
                p.relative_to(src).as_posix(): (p.stat().st_size, calculate_sha256(p))
                for p in sorted(src.rglob("*"))
                if p.is_file()
            }
            listed = {f["path"]: (f["size"], f["sha256"]) for f in manifest["files"]}
            if actual != listed:
                missing = sorted(set(actual) - set(listed))
                extra = sorted(set(listed) - set(actual))
                changed = sorted(k for k in set(actual) & set(listed) if actual[k] != listed[k])
                raise AssertionError(
                    f"archive {expected} does not match {src}: missing {missing}, "
                    f"extra {extra}, different {changed}"
                )
        return manifest


# --------------------------------------------------------------------------- server


@dataclass
class _Fault:
    remaining: int | None
    status: int = 500
    seconds: float = 0.0
    method: str | None = "PUT"
    path_contains: str = "/mlflow-artifacts/"


@dataclass
class ServerFaults:
    """Fault injection and request log in front of the real MLflow app."""

    requests: list[tuple[str, str, int]] = field(default_factory=list)
    _faults: list[tuple[str, _Fault]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def fail_next(
        self,
        n: int,
        status: int = 503,
        *,
        method: str | None = "PUT",
        path_contains: str = "/mlflow-artifacts/",
    ) -> None:
        """Answer the next ``n`` matching requests (default: artifact uploads) with ``status``."""
        with self._lock:
            self._faults.append(("fail", _Fault(n, status, 0.0, method, path_contains)))

    def delay(
        self,
        seconds: float,
        *,
        n: int | None = None,
        method: str | None = None,
        path_contains: str = "/mlflow-artifacts/",
    ) -> None:
        """Hold matching requests for ``seconds`` before the app sees them."""
        with self._lock:
            self._faults.append(("delay", _Fault(n, 0, seconds, method, path_contains)))

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
            self.requests.clear()

    def count(self, method: str | None = None, path_contains: str = "") -> int:
        return sum(
            1 for m, p, _ in self.requests if (method is None or m == method) and path_contains in p
        )

    def take(self, kind: str, method: str, path: str) -> _Fault | None:
        with self._lock:
            for k, f in self._faults:
                if (
                    k == kind
                    and (f.method is None or f.method == method)
                    and f.path_contains in path
                    and (f.remaining is None or f.remaining > 0)
                ):
                    if f.remaining is not None:
                        f.remaining -= 1
                    return f
        return None


class _FaultMiddleware:
    """ASGI middleware: log every HTTP request, apply delays and injected failures."""

    def __init__(self, app: Any, faults: ServerFaults) -> None:
        self.app = app
        self.faults = faults

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        import asyncio

        method, path = scope["method"], scope["path"]
        delay = self.faults.take("delay", method, path)
        if delay is not None:
            await asyncio.sleep(delay.seconds)
        fail = self.faults.take("fail", method, path)
        if fail is not None:
            while True:  # drain the upload body so the client sees the answer cleanly
                message = await receive()
                if not message.get("more_body"):
                    break
            body = b'{"error_code": "INJECTED_FAULT", "message": "injected by pytest-ckpts"}'
            await send(
                {
                    "type": "http.response.start",
                    "status": fail.status,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            self.faults.requests.append((method, path, fail.status))
            return
        status_box: list[int] = []

        async def send_wrapper(message: Any) -> None:
            if message["type"] == "http.response.start":
                status_box.append(message["status"])
            await send(message)

        await self.app(scope, receive, send_wrapper)
        self.faults.requests.append((method, path, status_box[0] if status_box else 0))


class MlflowServer:
    """The real MLflow tracking server (uvicorn in a daemon thread) on 127.0.0.1.

    One per process: MLflow's server handlers keep their stores in module globals.
    """

    def __init__(self, directory: Path, template: TemplateStore) -> None:
        self.directory = directory
        self.faults = ServerFaults()
        db, self.artifacts = template.copy_to(directory, proxied=True)
        self.backend_uri = f"sqlite:///{db}"
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.tracking: MlflowTracking | None = None  # helpers bound to the server, once started

    @property
    def tracking_uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MlflowServer:
        import importlib

        server_mod: Any = importlib.import_module("mlflow.server")
        # What `mlflow server --serve-artifacts` puts in the environment of its workers.
        os.environ[server_mod.BACKEND_STORE_URI_ENV_VAR] = self.backend_uri
        os.environ[server_mod.ARTIFACT_ROOT_ENV_VAR] = "mlflow-artifacts:/"
        os.environ[server_mod.SERVE_ARTIFACTS_ENV_VAR] = "true"
        os.environ[server_mod.ARTIFACTS_DESTINATION_ENV_VAR] = str(self.artifacts)
        import uvicorn

        with warnings.catch_warnings():
            # mlflow's app mounts Flask through a starlette shim that starlette now
            # deprecates; not the user's problem, and fatal under -W error.
            warnings.simplefilter("ignore")
            from mlflow.server import handlers
            from mlflow.server.fastapi_app import app

        # Build the server's stores now, while the environment says where they are.
        handlers._get_tracking_store()
        config = uvicorn.Config(
            _FaultMiddleware(app, self.faults),
            host="127.0.0.1",
            port=0,
            log_level="warning",
            lifespan="off",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("pytest-ckpts: the MLflow test server did not start")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        self.tracking = MlflowTracking(tracking_uri=self.tracking_uri, artifact_root=self.artifacts)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
