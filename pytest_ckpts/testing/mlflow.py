"""Real MLflow tracking stores and servers for tests (the engine behind the fixtures).

``mlflow_tracking`` gives each test a real sqlite-backed store. Creating one runs
~40 schema migrations (1.4-2.4 s here); copying an already migrated template file
takes milliseconds, so the template is built once (per session, shared by the
pytest-xdist workers of a run) and copied per test.

``mlflow_server`` runs the real MLflow FastAPI app (which mounts the Flask tracking
handlers) under uvicorn in a daemon thread, configured the way ``mlflow server
--serve-artifacts`` configures its workers, behind a small ASGI layer that logs
requests and injects faults. MLflow's server keeps its stores in module globals and
reads part of its configuration from ``os.environ`` per request, so: one server per
process, and its environment is present only while a test uses it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import sqlite3
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .._extras import require
from ..archive import verify_archive
from ..uploads import STAGE_ARTIFACT_PATHS
from .faults import FaultKind, FaultPlan, RequestLog, RequestRecord, Ticket

__all__ = [
    "ARTIFACT_ROOT_ENV",
    "MLFLOW_ROUTE_KINDS",
    "MlflowServer",
    "MlflowTracking",
    "ServerFaults",
    "ServerTracking",
    "TemplateStore",
    "mlflow_route_kind",
    "mlflow_state",
]

#: mlflow's internal name for the server's default artifact root. The client-side
#: sqlite store uses it instead of ``./mlruns`` when set: that is how no test leaves
#: ``./mlruns`` behind, whatever the cwd.
ARTIFACT_ROOT_ENV = "_MLFLOW_SERVER_ARTIFACT_ROOT"
#: Env vars a test may change through mlflow's fluent API; saved and restored.
_STATE_ENV = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_RUN_ID",
    "MLFLOW_EXPERIMENT_ID",
    "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    ARTIFACT_ROOT_ENV,
)
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors", ".bin", ".h5", ".pkl")


def _import_mlflow() -> Any:
    return require("mlflow", "the MLflow fixtures")


@contextlib.contextmanager
def _env_applied(values: Mapping[str, str | None]) -> Iterator[None]:
    """Set (or, for None, remove) env vars for a block, restoring the old values after."""
    saved = {name: os.environ.get(name) for name in values}
    try:
        for name, value in values.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


# --------------------------------------------------------------------------- template


class TemplateStore:
    """A migrated sqlite tracking DB, built once, copied for every test.

    Several processes (pytest-xdist workers) may share ``directory``: the first builds
    the template under a file lock, into a temp file renamed into place, and the
    others wait and reuse it.
    """

    def __init__(self, directory: Path, *, timeout: float = 300.0) -> None:
        self.directory = directory
        self.db = directory / "template.db"
        if self.db.exists():
            return
        from filelock import FileLock

        directory.mkdir(parents=True, exist_ok=True)
        with FileLock(str(directory / "template.lock"), timeout=timeout):
            if not self.db.exists():
                self._build()

    def _build(self) -> None:
        tmp = self.directory / f"template.{os.getpid()}.tmp.db"
        tmp.unlink(missing_ok=True)
        with warnings.catch_warnings():
            # SQLAlchemy deprecation noise from mlflow's mappers, raised once per process
            # when the store module is first imported: not the user's problem, and fatal
            # under -W error.
            warnings.simplefilter("ignore")
            _import_mlflow()
            from mlflow.store.tracking import sqlalchemy_store

            store_cls: Any = sqlalchemy_store.SqlAlchemyStore
            store = store_cls(f"sqlite:///{tmp}", str(self.directory / "template-artifacts"))
        store.engine.dispose()
        os.replace(tmp, self.db)

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


# --------------------------------------------------------------------------- state


@contextlib.contextmanager
def mlflow_state(
    tracking_uri: str,
    artifact_root: str | None,
    *,
    experiment_id: str | None = None,
) -> Iterator[None]:
    """Point mlflow at ``tracking_uri`` for a block; restore everything after.

    Restores the env vars a test may touch through mlflow (tracking/registry URI, run
    and experiment ids), the URIs set with ``mlflow.set_tracking_uri`` /
    ``set_registry_uri``, the active experiment, and ends runs the block left active.
    ``artifact_root`` is where a sqlite store puts new experiments' artifacts.
    """
    mlflow = _import_mlflow()
    from mlflow.tracking import fluent
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    saved_uri = tracking_utils._tracking_uri
    saved_registry = registry_utils._registry_uri
    saved_experiment = fluent._active_experiment_id
    values: dict[str, str | None] = dict.fromkeys(_STATE_ENV)
    values["MLFLOW_TRACKING_URI"] = tracking_uri
    values[ARTIFACT_ROOT_ENV] = (
        artifact_root if artifact_root is not None else os.environ.get(ARTIFACT_ROOT_ENV)
    )
    with _env_applied(values):
        tracking_utils.set_tracking_uri(tracking_uri)
        registry_utils._registry_uri = None
        fluent._active_experiment_id = None
        try:
            if experiment_id is not None:
                mlflow.set_experiment(experiment_id=experiment_id)
            yield
        finally:
            while mlflow.active_run() is not None:
                mlflow.end_run()
            # set_tracking_uri also resets mlflow's tracer, which caches the URI; it
            # edits MLFLOW_TRACKING_URI too, which _env_applied then puts back
            set_uri: Any = tracking_utils.set_tracking_uri  # typed str | Path; None = unset
            set_uri(saved_uri)
            registry_utils._registry_uri = saved_registry
            fluent._active_experiment_id = saved_experiment


# --------------------------------------------------------------------------- helpers


@dataclass
class MlflowTracking:
    """What the ``mlflow_tracking`` fixture hands to a test: a store and helpers."""

    tracking_uri: str
    artifact_root: Path
    _client: Any = field(default=None, repr=False)

    @property
    def client(self) -> Any:
        """An ``MlflowClient`` bound to this store."""
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def list_artifacts(self, run_id: str, path: str | None = None) -> list[str]:
        """Every artifact file of the run (recursively), as sorted posix paths."""
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

        No loose checkpoint files may sit beside it (files with checkpoint suffixes,
        or, with ``source_dir``, any of its files that live in a subdirectory). The
        archive must verify against its ``MANIFEST.json``, record ``stage``, and with
        ``source_dir`` that manifest must describe exactly its files. Returns the
        manifest.
        """
        __tracebackhide__ = True
        expected = artifact_path or STAGE_ARTIFACT_PATHS[stage]
        artifacts = self.list_artifacts(run_id)
        archives = [a for a in artifacts if a.endswith(".tar.gz")]
        nested: set[str] = set()
        src = Path(source_dir) if source_dir is not None else None
        if src is not None:
            nested = {p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()}
            nested = {n for n in nested if "/" in n}
        loose = [
            a
            for a in artifacts
            if a not in archives
            and (
                PurePosixPath(a).suffix in _CHECKPOINT_SUFFIXES
                or any(a == n or a.endswith("/" + n) for n in nested)
            )
        ]
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
                f"archive {expected} of run {run_id}: MANIFEST.json says stage "
                f"{manifest.get('stage')!r}, not {stage!r}"
            )
        if src is not None:
            from ..integrity import calculate_sha256

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
                    f"archive {expected} of run {run_id} does not match {src}: "
                    f"not in archive {missing}, only in archive {extra}, different {changed}"
                )
        return manifest


# --------------------------------------------------------------------------- faults


#: The route kinds the MLflow server's faults and request log tell apart.
MLFLOW_ROUTE_KINDS = ("artifact-upload", "artifact", "api", "other")


def mlflow_route_kind(method: str, path: str) -> str:
    """``artifact-upload`` (a PUT of artifact content), ``artifact`` (other artifact
    traffic: downloads, listings), ``api`` (the tracking REST API) or ``other``."""
    if "/mlflow-artifacts/" in path:
        return "artifact-upload" if method == "PUT" else "artifact"
    if path.startswith(("/api/", "/ajax-api/")):
        return "api"
    return "other"


class ServerFaults(FaultPlan):
    """Fault injection and a request log, in front of the real MLflow app.

    The fault plan of ``pytest_ckpts.testing.faults`` (the local hub's too): a
    fault given no ``method``, ``path_contains`` or ``route`` hits artifact uploads
    (``PUT`` under ``/mlflow-artifacts/``), where a client's retries are worth
    testing. ``hold``, ``delay``, ``slow`` (latency only), ``fail_next`` and ``throttle`` apply
    here; body and connection faults (drops, tampering, blackhole) are the hub's.

    ``requests`` lists ``(method, path, status)`` for every HTTP request the server
    answered, injected failures included, logged as their answers start (status 0:
    the app gave none); ``log`` has the full records (route kind, bytes sent).
    """

    def __init__(self) -> None:
        super().__init__(routes=MLFLOW_ROUTE_KINDS, default_route="artifact-upload")
        self.log = RequestLog()

    @property
    def requests(self) -> list[tuple[str, str, int]]:
        return [(r.method, r.path, r.status) for r in self.log.requests]

    def count(
        self,
        method: str | None = None,
        path_contains: str | None = None,
        *,
        route: str | None = None,
        status: int | None = None,
    ) -> int:
        """How many logged requests match ``method``, ``path_contains``, ``route``, ``status``."""
        return self.log.count(method, path_contains, route=route, status=status)

    def clear(self) -> None:
        """Forget injected faults and the request log (done between tests)."""
        super().clear()
        self.log.reset()


class _FaultMiddleware:
    """ASGI middleware: log every HTTP request, apply holds, delays and injected failures."""

    def __init__(self, app: Any, faults: ServerFaults) -> None:
        self.app = app
        self.faults = faults

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        import asyncio

        method, path = scope["method"], scope["path"]
        route = mlflow_route_kind(method, path)
        hold = self.faults.take(FaultKind.HOLD, method, path, route)
        if hold is not None and hold.gate is not None:
            hold.gate.arrive()
            while not hold.gate.released:
                await asyncio.sleep(0.01)
        for kind in (FaultKind.DELAY, FaultKind.SLOW):
            wait = self.faults.take(kind, method, path, route)
            if wait is not None and wait.seconds:
                await asyncio.sleep(wait.seconds)
        fail = self.faults.take(FaultKind.FAIL, method, path, route)
        if fail is not None:
            while True:  # drain the upload body so the client sees the answer cleanly
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body"):
                    break
            body = b'{"error_code": "INJECTED_FAULT", "message": "injected by pytest-ckpts"}'
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ]
            retry_after = fail.retry_after_header()
            if retry_after is not None:
                headers.append((b"retry-after", retry_after.encode()))
            self.faults.log.add(RequestRecord(method, path, fail.status, len(body), route=route))
            await send({"type": "http.response.start", "status": fail.status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        tickets: list[Ticket] = []

        async def send_wrapper(message: Any) -> None:
            # logged before the answer goes out, so a client that has it finds it counted
            if message["type"] == "http.response.start":
                record = RequestRecord(method, path, message["status"], route=route)
                tickets.append(self.faults.log.add(record))
            elif message["type"] == "http.response.body" and tickets:
                self.faults.log.add_bytes(tickets[0], len(message.get("body", b"")))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if not tickets:  # the app gave no answer at all
                self.faults.log.add(RequestRecord(method, path, 0, route=route))


# --------------------------------------------------------------------------- server


@dataclass
class ServerTracking(MlflowTracking):
    """What the ``mlflow_server`` fixture hands to a test.

    The ``mlflow_tracking`` helpers, going over HTTP, plus ``faults`` (injection and
    the request log), ``experiment_id`` (a fresh experiment, active for the test) and
    ``server``.
    """

    experiment_id: str = ""
    server: MlflowServer | None = field(default=None, repr=False)

    @property
    def faults(self) -> ServerFaults:
        assert self.server is not None
        return self.server.faults

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    @property
    def tracking(self) -> ServerTracking:
        """Itself (the helpers live here; kept for code written as ``.tracking.x``)."""
        return self


class MlflowServer:
    """The real MLflow tracking server (uvicorn in a daemon thread) on 127.0.0.1.

    One per process: MLflow's server handlers keep their stores in module globals.
    The server reads ``_MLFLOW_SERVER_*`` env vars per request; :meth:`serving` puts
    them in place for the duration of a test and takes them away after, so tests
    that don't use the server see a clean environment.
    """

    _started_in_process = False

    def __init__(self, directory: Path, template: TemplateStore) -> None:
        self.directory = directory
        self.faults = ServerFaults()
        db, self.artifacts = template.copy_to(directory, proxied=True)
        self.backend_uri = f"sqlite:///{db}"
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._counter = itertools.count(1)
        self.port = 0

    @property
    def tracking_uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def server_env(self) -> dict[str, str | None]:
        """What ``mlflow server --serve-artifacts`` puts in its workers' environment."""
        server_mod: Any = require("mlflow.server", "the MLflow server fixture")
        return {
            server_mod.BACKEND_STORE_URI_ENV_VAR: self.backend_uri,
            server_mod.ARTIFACT_ROOT_ENV_VAR: "mlflow-artifacts:/",
            server_mod.SERVE_ARTIFACTS_ENV_VAR: "true",
            server_mod.ARTIFACTS_DESTINATION_ENV_VAR: str(self.artifacts),
        }

    @contextlib.contextmanager
    def serving(self) -> Iterator[None]:
        """The server's environment, for the duration of a test that uses it."""
        with _env_applied(self.server_env()):
            yield

    def start(self) -> MlflowServer:
        """Build the server's stores, then serve on a free port; returns when it listens."""
        if MlflowServer._started_in_process:
            raise RuntimeError(
                "pytest-ckpts: one MLflow test server per process (MLflow keeps the "
                "server's stores in module globals); share the session's mlflow_server"
            )
        import uvicorn
        from mlflow.tracking._model_registry import utils as registry_utils
        from mlflow.tracking._tracking_service import utils as tracking_utils

        saved_uri = tracking_utils._tracking_uri
        saved_registry = registry_utils._registry_uri
        with (
            self.serving(),
            _env_applied(dict.fromkeys(("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"))),
        ):
            with warnings.catch_warnings():
                # mlflow's app mounts Flask through a starlette shim that starlette now
                # deprecates; not the user's problem, and fatal under -W error.
                warnings.simplefilter("ignore")
                from mlflow.server import handlers as _handlers
                from mlflow.server.fastapi_app import app
            handlers: Any = _handlers

            # Build the stores now, while the environment says where they are. Doing
            # so also points this process's mlflow at the backend DB: undone below.
            handlers._get_tracking_store()
            with contextlib.suppress(Exception):  # registry is optional for uploads
                handlers._get_model_registry_store()
            handlers._get_artifact_repo_mlflow_artifacts()
        tracking_utils._tracking_uri = saved_uri
        registry_utils._registry_uri = saved_registry
        MlflowServer._started_in_process = True

        config = uvicorn.Config(
            _FaultMiddleware(app, self.faults),
            host="127.0.0.1",
            port=0,
            log_level="warning",
            lifespan="off",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, name="pytest-ckpts-mlflow-server", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("pytest-ckpts: the MLflow test server did not start")
            time.sleep(0.005)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def new_test(self, name: str) -> ServerTracking:
        """A fresh experiment for one test (call inside :meth:`serving`); helpers bound to it.

        Runs of different tests never share an experiment, so listing and searching
        in one test never sees another test's runs.
        """
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=self.tracking_uri)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:200]
        experiment_id = client.create_experiment(f"{next(self._counter):04d}-{safe}")
        return ServerTracking(
            tracking_uri=self.tracking_uri,
            artifact_root=self.artifacts,
            _client=client,
            experiment_id=str(experiment_id),
            server=self,
        )

    def stop(self) -> None:
        """Ask uvicorn to exit and wait for the thread (up to 10 s)."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
