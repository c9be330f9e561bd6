"""Archive-first uploads against a real MLflow store and a real MLflow server (SPEC §6, §8)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
import pytest

from pytest_ckpts.archive import ArchiveError
from pytest_ckpts.testing.mlflow import MlflowServer, MlflowTracking
from pytest_ckpts.uploads import (
    ArtifactUploader,
    UploadError,
    get_mlflow_run_id,
    upload_benchmark_artifacts,
    upload_conversion_artifacts,
    upload_hpo_artifacts,
    upload_training_artifacts,
)


@pytest.fixture
def ckpt_dir(tmp_path: Path) -> Path:
    d = tmp_path / "checkpoint"
    (d / "model").mkdir(parents=True)
    (d / "model" / "weights.pt").write_bytes(os.urandom(50_000))
    (d / "config.json").write_text('{"lr": 0.001}')
    return d


def tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def no_sleep(_: float) -> None:
    pass


def test_get_mlflow_run_id(
    mlflow_tracking: MlflowTracking, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert get_mlflow_run_id() is None
    with mlflow.start_run() as run:
        monkeypatch.setenv("MLFLOW_RUN_ID", "from-env")
        assert get_mlflow_run_id() == run.info.run_id  # the active run wins
    monkeypatch.setenv("MLFLOW_RUN_ID", "from-env")  # (mlflow's end_run removes it)
    assert get_mlflow_run_id() == "from-env"
    monkeypatch.setenv("MLFLOW_RUN_ID", "")
    assert get_mlflow_run_id() is None  # empty = unset


@pytest.mark.parametrize("backend", ["store", "server"])
def test_stage_helpers_are_archive_first(
    request: pytest.FixtureRequest, backend: str, ckpt_dir: Path, tmp_path: Path
) -> None:
    if backend == "store":
        tracking: MlflowTracking = request.getfixturevalue("mlflow_tracking")
    else:
        server: MlflowServer = request.getfixturevalue("mlflow_server")
        assert server.tracking is not None
        tracking = server.tracking
    before = tree(ckpt_dir)
    metrics = tmp_path / "m.json"
    metrics.write_text(json.dumps({"loss": 0.1}))
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"onnx-bytes")
    bench = tmp_path / "bench.json"
    bench.write_text('{"latency_ms": 3}')
    runs = {}
    for stage in ("training", "hpo", "benchmark", "conversion"):
        with mlflow.start_run() as run:
            runs[stage] = run.info.run_id
            if stage == "training":
                assert upload_training_artifacts(ckpt_dir, metrics) == {
                    "checkpoint": True,
                    "metrics": True,
                }
            elif stage == "hpo":
                assert upload_hpo_artifacts(ckpt_dir, trial_number=3) is True
            elif stage == "benchmark":
                assert upload_benchmark_artifacts(bench, ckpt_dir) == {
                    "results": True,
                    "checkpoint": True,
                }
            else:
                assert upload_conversion_artifacts(onnx) is True
    if backend == "server":  # every upload went over the wire, through the proxy
        assert server.faults.count("PUT", "/mlflow-artifacts/") == 6
    manifest = tracking.assert_archive_first(runs["training"], "training", ckpt_dir)
    assert manifest["file_count"] == 2
    assert tracking.list_artifacts(runs["training"]) == ["checkpoint.tar.gz", "metrics.json"]
    hpo = tracking.assert_archive_first(runs["hpo"], "hpo", ckpt_dir)
    assert hpo["trial_number"] == 3
    tracking.assert_archive_first(runs["benchmark"], "benchmark", ckpt_dir)
    assert tracking.list_artifacts(runs["conversion"]) == ["conversion/model.onnx"]
    assert tree(ckpt_dir) == before  # the local checkpoint is only read


def test_skip_switch_and_disabled_stage_upload_nothing(
    mlflow_tracking: MlflowTracking,
    ckpt_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config_dir = tmp_path / "conf"
    config_dir.mkdir()
    (config_dir / "mlflow.yaml").write_text("stages:\n  hpo:\n    enabled: false\n")
    with mlflow.start_run() as run:
        assert upload_hpo_artifacts(ckpt_dir, 1, config_dir=config_dir) is False
        assert upload_training_artifacts(ckpt_dir, config_dir=config_dir) == {"checkpoint": True}
        monkeypatch.setenv("MLFLOW_SKIP_ARTIFACT_LOGGING", "true")
        assert upload_training_artifacts(ckpt_dir) == {"checkpoint": False}
        assert ArtifactUploader(stage="training").upload_checkpoint(ckpt_dir) is False
        with pytest.raises(UploadError, match="MLFLOW_SKIP_ARTIFACT_LOGGING"):
            ArtifactUploader(stage="training").upload_checkpoint(ckpt_dir, skip_if_disabled=False)
    assert mlflow_tracking.list_artifacts(run.info.run_id) == ["checkpoint.tar.gz"]
    messages = [
        r.getMessage() for r in caplog.records if "MLFLOW_SKIP_ARTIFACT_LOGGING" in r.getMessage()
    ]
    assert len(messages) <= 1  # said once, not once per call


def test_no_run_uploads_nothing(mlflow_tracking: MlflowTracking, ckpt_dir: Path) -> None:
    assert ArtifactUploader(stage="training").upload_checkpoint(ckpt_dir) is False


def test_artifact_path_gets_tar_gz_appended(
    mlflow_tracking: MlflowTracking, ckpt_dir: Path
) -> None:
    with mlflow.start_run() as run:
        ArtifactUploader(stage="training").upload_checkpoint(ckpt_dir, artifact_path="checkpoint")
        ArtifactUploader(stage="training").upload_checkpoint(ckpt_dir, artifact_path="nested/best")
    assert mlflow_tracking.list_artifacts(run.info.run_id) == [
        "checkpoint.tar.gz",
        "nested/best.tar.gz",
    ]


def test_transient_failures_retry_then_upload_once(
    mlflow_server: MlflowServer, ckpt_dir: Path
) -> None:
    mlflow_server.faults.fail_next(2, status=503)
    delays: list[float] = []
    with mlflow.start_run() as run:
        uploader = ArtifactUploader(stage="training", sleep=delays.append)
        assert uploader.upload_checkpoint(ckpt_dir) is True
    assert uploader.attempts == 3
    puts = [
        (m, s)
        for m, p, s in mlflow_server.faults.requests
        if m == "PUT" and "mlflow-artifacts" in p
    ]
    assert puts == [("PUT", 503), ("PUT", 503), ("PUT", 200)]
    assert len(delays) == 2
    assert 0 <= delays[0] <= 2.0
    assert 0 <= delays[1] <= 4.0
    assert mlflow_server.tracking is not None
    mlflow_server.tracking.assert_archive_first(run.info.run_id, "training", ckpt_dir)


def test_client_error_is_not_retried(mlflow_server: MlflowServer, ckpt_dir: Path) -> None:
    mlflow_server.faults.fail_next(1, status=403)
    with mlflow.start_run():
        uploader = ArtifactUploader(stage="training", sleep=no_sleep)
        with pytest.raises(UploadError, match="HTTP 403") as info:
            uploader.upload_checkpoint(ckpt_dir)
    assert "not retried" in str(info.value)
    assert uploader.attempts == 1
    assert mlflow_server.faults.count("PUT", "mlflow-artifacts") == 1


def test_retries_are_bounded(mlflow_server: MlflowServer, ckpt_dir: Path) -> None:
    mlflow_server.faults.fail_next(10, status=500)
    with mlflow.start_run():
        uploader = ArtifactUploader(stage="training", sleep=no_sleep)
        with pytest.raises(UploadError, match="after 6 attempts"):
            uploader.upload_checkpoint(ckpt_dir)
    assert mlflow_server.faults.count("PUT", "mlflow-artifacts") == 6


def test_archive_failure_raises_before_any_upload(
    mlflow_server: MlflowServer, ckpt_dir: Path
) -> None:
    os.mkfifo(ckpt_dir / "model" / "pipe")
    tmp_before = set(os.listdir(os.environ.get("TMPDIR", "/tmp")))
    with mlflow.start_run(), pytest.raises(ArchiveError, match="not a regular file"):
        ArtifactUploader(stage="training").upload_checkpoint(ckpt_dir)
    assert mlflow_server.faults.count("PUT") == 0
    leftovers = {
        n
        for n in set(os.listdir(os.environ.get("TMPDIR", "/tmp"))) - tmp_before
        if "pytest-ckpts-upload" in n
    }
    assert leftovers == set()


def test_deprecated_archive_upload_warns_and_works(
    mlflow_tracking: MlflowTracking, ckpt_dir: Path, tmp_path: Path
) -> None:
    from pytest_ckpts.archive import create_archive

    archive = create_archive(ckpt_dir, tmp_path / "ready.tar.gz", stage="hpo")
    with (
        mlflow.start_run() as run,
        pytest.warns(DeprecationWarning, match="upload_checkpoint_archive"),
    ):
        assert ArtifactUploader(stage="hpo").upload_checkpoint_archive(
            archive, manifest={"trial": 3}
        )
    assert mlflow_tracking.list_artifacts(run.info.run_id) == [
        "best_trial_checkpoint.tar.gz",
        "best_trial_checkpoint.tar.gz.manifest.json",
    ]


def test_mlflow_tracking_restores_env_uri_run_experiment_and_cwd(pytester: pytest.Pytester) -> None:
    """The fixture's teardown, checked by the test that runs after it (same process)."""
    pytester.makepyfile(
        """
        import os
        from pathlib import Path
        import mlflow
        from mlflow.tracking import fluent

        BEFORE = {}

        def test_a_record_state():
            BEFORE["env"] = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
            BEFORE["uri"] = mlflow.get_tracking_uri()
            BEFORE["cwd"] = os.getcwd()

        def test_b_uses_the_fixture(mlflow_tracking):
            assert os.environ["MLFLOW_TRACKING_URI"] == mlflow_tracking.tracking_uri
            assert mlflow.get_tracking_uri() == mlflow_tracking.tracking_uri
            mlflow.set_experiment("scratch")
            mlflow.start_run()  # left active on purpose: the fixture must end it

        def test_c_everything_restored():
            assert {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"} == BEFORE["env"]
            assert mlflow.get_tracking_uri() == BEFORE["uri"]
            assert os.getcwd() == BEFORE["cwd"]
            assert mlflow.active_run() is None
            assert fluent._active_experiment_id is None
            assert not Path("mlruns").exists()
        """
    )
    pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly").assert_outcomes(
        passed=3
    )
    assert not (pytester.path / "mlruns").exists()


def test_fixture_in_a_user_suite(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import mlflow, os
        from pytest_ckpts.uploads import upload_training_artifacts

        def test_upload(mlflow_tracking, tmp_path):
            d = tmp_path / "ckpt"
            d.mkdir()
            (d / "w.pt").write_bytes(b"w" * 100)
            with mlflow.start_run() as run:
                assert upload_training_artifacts(d) == {"checkpoint": True}
            mlflow_tracking.assert_archive_first(run.info.run_id, "training", d)
            assert not os.path.exists("mlruns")
        """
    )
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)
    assert not (pytester.path / "mlruns").exists()
