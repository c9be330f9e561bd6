"""MLflow fixtures (docs/uploads.md "Fixtures"), registered by the plugin in every pytest run.

This module is imported whenever pytest runs with pytest-ckpts installed, so it must
stay cheap: mlflow (2-3 s to import) and the engine in ``pytest_ckpts.testing.mlflow``
are imported only inside fixture bodies, i.e. only by a test that uses a fixture.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .testing.mlflow import MlflowServer, MlflowTracking, ServerTracking, TemplateStore

__all__ = ["mlflow_server", "mlflow_tracking"]


@pytest.fixture(scope="session")
def _ckpts_mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> TemplateStore:
    """The migrated template DB, built once per run and shared by the xdist workers."""
    from importlib.metadata import version

    from ._extras import require

    require("mlflow", "the MLflow fixtures")  # the ImportError names the extra
    from .testing.mlflow import TemplateStore

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by every worker of this run
    return TemplateStore(root / f"ckpts-mlflow-template-{version('mlflow')}")


@pytest.fixture
def mlflow_tracking(
    tmp_path: Path, _ckpts_mlflow_template: TemplateStore
) -> Iterator[MlflowTracking]:
    """A real sqlite-backed MLflow tracking store for this test, artifacts in ``tmp_path``.

    Set-up copies a migrated template DB (~10 ms instead of ~2 s of migrations). During
    the test ``MLFLOW_TRACKING_URI`` and mlflow's tracking URI point at the store; the
    env, tracking/registry URI, active experiment and active runs are restored
    afterwards, and nothing lands in ``./mlruns``. Helpers: ``tracking_uri``,
    ``client``, ``artifact_root``, ``list_artifacts(run_id)``,
    ``download_artifact(run_id, path, dst)``,
    ``assert_archive_first(run_id, stage, source_dir=None)``::

        import mlflow
        from pytest_ckpts.uploads import upload_training_artifacts

        def test_training_upload(mlflow_tracking, tmp_path):
            ckpt = tmp_path / "ckpt"
            ckpt.mkdir()
            (ckpt / "weights.pt").write_bytes(b"w" * 64)
            with mlflow.start_run() as run:
                upload_training_artifacts(ckpt)
            mlflow_tracking.assert_archive_first(run.info.run_id, "training", ckpt)
    """
    from .testing.mlflow import MlflowTracking, mlflow_state

    db, artifacts = _ckpts_mlflow_template.copy_to(tmp_path / "mlflow")
    tracking = MlflowTracking(tracking_uri=f"sqlite:///{db}", artifact_root=artifacts)
    with mlflow_state(tracking.tracking_uri, str(artifacts)):
        yield tracking


@pytest.fixture(scope="session")
def _ckpts_mlflow_server(
    tmp_path_factory: pytest.TempPathFactory, _ckpts_mlflow_template: TemplateStore
) -> Iterator[MlflowServer]:
    """The process's one MLflow server, started on first use, stopped at session end."""
    from .testing.mlflow import MlflowServer

    server = MlflowServer(tmp_path_factory.mktemp("ckpts-mlflow-server"), _ckpts_mlflow_template)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def mlflow_server(
    request: pytest.FixtureRequest, _ckpts_mlflow_server: MlflowServer
) -> Iterator[ServerTracking]:
    """A real MLflow tracking server over HTTP on 127.0.0.1, with artifact proxying.

    Artifacts go through the server (``mlflow-artifacts:/`` URIs), as with ``mlflow
    server --serve-artifacts``. Each test gets a fresh experiment, active for the
    test, an empty request log and no faults; mlflow points at the server only for
    the duration of the test. The same helpers as ``mlflow_tracking``, plus
    ``faults`` (``fail_next(n, status)``, ``delay(seconds)``, ``requests``,
    ``count(method, path_contains)``) and ``experiment_id``::

        def test_upload_survives_two_503s(mlflow_server, tmp_path):
            ckpt = tmp_path / "ckpt"
            ckpt.mkdir()
            (ckpt / "weights.pt").write_bytes(b"w" * 64)
            mlflow_server.faults.fail_next(2, status=503)
            with mlflow.start_run() as run:
                uploader = ArtifactUploader(stage="training", sleep=lambda s: None)
                assert uploader.upload_checkpoint(ckpt)
            assert mlflow_server.faults.count("PUT", "/mlflow-artifacts/") == 3
            mlflow_server.assert_archive_first(run.info.run_id, "training", ckpt)

    One server per test process (MLflow keeps server state in module globals).
    """
    from .testing.mlflow import mlflow_state

    server = _ckpts_mlflow_server
    with server.serving():
        handle = server.new_test(request.node.name)
        with mlflow_state(server.tracking_uri, None, experiment_id=handle.experiment_id):
            server.faults.clear()
            try:
                yield handle
            finally:
                server.faults.clear()
