"""Upload retries against the real MLflow server: counted at the server, no env side effects.

Our retry policy (docs/uploads.md, "Retries") is the only one: every request the server
sees is one of our attempts, whatever mlflow's own ``MLFLOW_HTTP_REQUEST_MAX_RETRIES``
says, and nothing in ``os.environ`` changes, not even while an upload is in flight.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

import mlflow
import pytest

from pytest_ckpts import errors
from pytest_ckpts.errors import CheckpointsError
from pytest_ckpts.testing.mlflow import ServerTracking
from pytest_ckpts.uploads import (
    ArtifactUploader,
    UploadArgumentError,
    UploadError,
    _scratch,
)
from tests.helpers import logged

RUNS_GET = "/api/2.0/mlflow/runs/get"


@pytest.fixture
def mlflow_retries_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """mlflow's own HTTP retries switched on by the user, without backoff.

    Had the uploader left them on, each of our attempts would be 4 requests at the
    server (and without the zero backoff, minutes of waiting).
    """
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")


def no_sleep(_: float) -> None:
    pass


def tree(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``root``: its bytes and modification time."""
    return {
        p.relative_to(root).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def env() -> dict[str, str]:
    return dict(os.environ)


def test_error_types_keep_their_builtin_bases() -> None:
    assert UploadError is errors.UploadError
    assert UploadArgumentError is errors.UploadArgumentError
    assert issubclass(UploadError, CheckpointsError)
    assert issubclass(UploadError, RuntimeError)
    assert issubclass(UploadArgumentError, CheckpointsError)
    assert issubclass(UploadArgumentError, ValueError)
    with pytest.raises(UploadArgumentError, match="unknown stage 'train'"):
        ArtifactUploader(stage="train")
    with pytest.raises(ValueError, match=">= 0"):
        ArtifactUploader(max_retries=-1)


def test_env_is_untouched_while_an_upload_is_in_flight(
    mlflow_server: ServerTracking, ckpt_dir: Path
) -> None:
    """Another thread reading os.environ during the upload sees exactly what was there."""
    mlflow_server.faults.fail_next(1, status=503)
    mlflow_server.faults.delay(0.3, method="PUT")  # every PUT: a window to look in
    run_id = mlflow_server.client.create_run(mlflow_server.experiment_id).info.run_id
    uploader = ArtifactUploader(run_id, stage="training", sleep=no_sleep)
    before = env()
    outcome: list[object] = []
    thread = threading.Thread(
        target=lambda: outcome.append(uploader.upload_checkpoint(ckpt_dir)), daemon=True
    )
    thread.start()
    looks = 0
    while thread.is_alive():
        assert env() == before
        looks += 1
        time.sleep(0.005)
    thread.join()
    assert outcome == [True]
    assert uploader.attempts == 2
    assert looks > 10  # it really looked while the upload ran
    assert env() == before


@pytest.mark.usefixtures("mlflow_retries_on")
@pytest.mark.parametrize("status", [500, 503, 429])
def test_server_sees_exactly_our_attempts(
    mlflow_server: ServerTracking, ckpt_dir: Path, status: int
) -> None:
    mlflow_server.faults.fail_next(20, status=status)
    before = env()
    with mlflow.start_run():
        uploader = ArtifactUploader(stage="training", max_retries=2, sleep=no_sleep)
        with pytest.raises(UploadError, match=rf"after 3 attempts \(last: HTTP {status}\)"):
            uploader.upload_checkpoint(ckpt_dir)
    assert uploader.attempts == 3
    assert logged(mlflow_server, "PUT", "/mlflow-artifacts/", 3) == 3  # not 3 x 4
    assert env() == before


@pytest.mark.usefixtures("mlflow_retries_on")
def test_run_lookup_is_retried_by_us_alone(mlflow_server: ServerTracking, ckpt_dir: Path) -> None:
    """The ``runs/get`` before the PUT fails twice: 3 lookups, 1 PUT, at the server."""
    mlflow_server.faults.fail_next(2, status=503, method="GET", path_contains=RUNS_GET)
    run_id = mlflow_server.client.create_run(mlflow_server.experiment_id).info.run_id
    uploader = ArtifactUploader(run_id, stage="hpo", sleep=no_sleep)
    assert uploader.upload_checkpoint(ckpt_dir, trial_number=1)
    assert uploader.attempts == 3
    assert logged(mlflow_server, "GET", RUNS_GET, 3) == 3
    assert logged(mlflow_server, "PUT", "/mlflow-artifacts/", 1) == 1
    mlflow_server.assert_archive_first(run_id, "hpo", ckpt_dir)


def test_the_artifact_uri_is_looked_up_once_per_upload(
    mlflow_server: ServerTracking, ckpt_dir: Path
) -> None:
    mlflow_server.faults.fail_next(2, status=503)
    run_id = mlflow_server.client.create_run(mlflow_server.experiment_id).info.run_id
    uploader = ArtifactUploader(run_id, stage="training", sleep=no_sleep)
    assert uploader.upload_checkpoint(ckpt_dir)
    assert logged(mlflow_server, "GET", RUNS_GET, 1) == 1
    assert logged(mlflow_server, "PUT", "/mlflow-artifacts/", 3) == 3


def test_unknown_run_is_not_retried(mlflow_server: ServerTracking, ckpt_dir: Path) -> None:
    uploader = ArtifactUploader("f" * 32, stage="training", sleep=no_sleep)
    with pytest.raises(UploadError, match=f"checkpoint.tar.gz to run {'f' * 32}"):
        uploader.upload_checkpoint(ckpt_dir)
    assert uploader.attempts == 1
    assert logged(mlflow_server, "GET", RUNS_GET, 1) == 1
    assert mlflow_server.faults.count("PUT") == 0


@pytest.mark.parametrize("failure", ["refused", "exhausted", "dead server"])
def test_a_failed_upload_leaves_local_files_untouched(
    mlflow_server: ServerTracking, ckpt_dir: Path, failure: str
) -> None:
    before_tree, before_env = tree(ckpt_dir), env()
    tracking_uri = None
    if failure == "refused":
        mlflow_server.faults.fail_next(1, status=403)
    elif failure == "exhausted":
        mlflow_server.faults.fail_next(20, status=500)
    else:
        import socket

        with socket.socket() as s:  # a port on 127.0.0.1 where nothing listens
            s.bind(("127.0.0.1", 0))
            tracking_uri = f"http://127.0.0.1:{s.getsockname()[1]}"
    run_id = mlflow_server.client.create_run(mlflow_server.experiment_id).info.run_id
    uploader = ArtifactUploader(
        run_id, stage="training", tracking_uri=tracking_uri, max_retries=1, sleep=no_sleep
    )
    with pytest.raises(UploadError):
        uploader.upload_checkpoint(ckpt_dir)
    assert tree(ckpt_dir) == before_tree  # same files, same bytes, not even touched
    assert env() == before_env
    assert mlflow_server.list_artifacts(run_id) == []


def upload_temp_dirs() -> set[str]:
    """What uploads left in the temp dir: scratch dirs and their locks, any old layout."""
    left = {n for n in os.listdir(tempfile.gettempdir()) if n.startswith("pytest-ckpts-upload")}
    root = _scratch.scratch_root() if left else None
    if root is not None and root.name in left:
        left.discard(root.name)
        left |= {f"{root.name}/{n}" for n in os.listdir(root)}
    return left


@pytest.mark.parametrize("status", [503, 429])
def test_transient_failures_retry_then_upload_once(
    mlflow_server: ServerTracking, ckpt_dir: Path, status: int
) -> None:
    mlflow_server.faults.fail_next(2, status=status)
    delays: list[float] = []
    with mlflow.start_run() as run:
        uploader = ArtifactUploader(stage="training", sleep=delays.append)
        assert uploader.upload_checkpoint(ckpt_dir) is True
    assert uploader.attempts == 3
    assert logged(mlflow_server, "PUT", "/mlflow-artifacts/", 3) == 3
    puts = [(m, s) for m, p, s in mlflow_server.faults.requests if "/mlflow-artifacts/" in p]
    assert puts == [("PUT", status), ("PUT", status), ("PUT", 200)]  # counted at the server
    assert len(delays) == 2
    assert 0 <= delays[0] <= 2.0  # full jitter over base_delay * 2**attempt
    assert 0 <= delays[1] <= 4.0
    assert mlflow_server.list_artifacts(run.info.run_id) == ["checkpoint.tar.gz"]  # once
    mlflow_server.assert_archive_first(run.info.run_id, "training", ckpt_dir)


def test_client_error_is_not_retried(
    mlflow_server: ServerTracking, ckpt_dir: Path, private_tmp: Path
) -> None:
    mlflow_server.faults.fail_next(1, status=403)
    with mlflow.start_run() as run:
        uploader = ArtifactUploader(stage="training", sleep=no_sleep)
        with pytest.raises(UploadError, match="HTTP 403") as info:
            uploader.upload_checkpoint(ckpt_dir)
    message = str(info.value)
    assert "checkpoint.tar.gz" in message
    assert run.info.run_id in message
    assert "not retried" in message
    assert uploader.attempts == 1
    assert logged(mlflow_server, "PUT", "/mlflow-artifacts/", 1) == 1
    assert mlflow_server.list_artifacts(run.info.run_id) == []
    assert upload_temp_dirs() == set()


def test_retries_are_bounded(mlflow_server: ServerTracking, ckpt_dir: Path) -> None:
    mlflow_server.faults.fail_next(10, status=500)
    delays: list[float] = []
    with mlflow.start_run():
        uploader = ArtifactUploader(stage="training", sleep=delays.append)
        with pytest.raises(UploadError, match=r"after 6 attempts \(last: HTTP 500\)"):
            uploader.upload_checkpoint(ckpt_dir)
    assert logged(mlflow_server, "PUT", "/mlflow-artifacts/", 6) == 6  # 1 + max_retries=5
    assert len(delays) == 5
    assert all(0 <= d <= 2.0 * 2**i for i, d in enumerate(delays))


def test_connection_errors_are_retried(ckpt_dir: Path) -> None:
    import socket

    with socket.socket() as s:  # a port on 127.0.0.1 where nothing listens
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    uploader = ArtifactUploader(
        run_id="0" * 32, stage="training", tracking_uri=dead, max_retries=2, sleep=no_sleep
    )
    with pytest.raises(UploadError, match="after 3 attempts"):
        uploader.upload_checkpoint(ckpt_dir)
    assert uploader.attempts == 3
