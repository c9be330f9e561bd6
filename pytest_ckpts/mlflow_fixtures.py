"""MLflow fixtures, registered by the plugin. mlflow is imported only when one is used."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .testing.mlflow import MlflowServer, MlflowTracking, TemplateStore

__all__ = ["mlflow_server", "mlflow_tracking"]


@pytest.fixture(scope="session")
def _ckpts_mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> TemplateStore:
    from .testing.mlflow import TemplateStore

    return TemplateStore(tmp_path_factory.mktemp("ckpts-mlflow-template"))


@pytest.fixture
def mlflow_tracking(
    tmp_path: Path, _ckpts_mlflow_template: TemplateStore
) -> Iterator[MlflowTracking]:
    """A real sqlite-backed MLflow tracking store for this test, artifacts in ``tmp_path``.

    ::

        def test_upload(mlflow_tracking, tmp_path):
            with mlflow.start_run() as run:
                upload_training_artifacts(ckpt_dir)
            mlflow_tracking.assert_archive_first(run.info.run_id, "training", ckpt_dir)

    The tracking URI, env, active run and experiment are restored afterwards, and
    nothing lands in ``./mlruns``.
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
    from .testing.mlflow import MlflowServer

    server = MlflowServer(tmp_path_factory.mktemp("ckpts-mlflow-server"), _ckpts_mlflow_template)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def mlflow_server(_ckpts_mlflow_server: MlflowServer) -> Iterator[MlflowServer]:
    """A real MLflow tracking server over HTTP (artifact proxying) on 127.0.0.1.

    ``mlflow_server.faults`` injects failures into artifact uploads and logs requests::

        def test_retry(mlflow_server):
            mlflow_server.faults.fail_next(2, status=503)
            ...
            assert mlflow_server.faults.count("PUT", "/mlflow-artifacts/") == 3

    One server per session (MLflow keeps server state in module globals); faults and
    the request log are reset for every test, and mlflow points at the server only
    for the duration of the test.
    """
    from .testing.mlflow import mlflow_state

    _ckpts_mlflow_server.faults.clear()
    with mlflow_state(_ckpts_mlflow_server.tracking_uri, None):
        yield _ckpts_mlflow_server
    _ckpts_mlflow_server.faults.clear()
