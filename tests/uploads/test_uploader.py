"""Archive-first uploads against a real MLflow store and a real MLflow server (docs/uploads.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from pytest_ckpts.archive import ArchiveError, create_archive
from pytest_ckpts.testing.mlflow import MlflowTracking, ServerTracking
from pytest_ckpts.uploads import (
    ArtifactUploader,
    UploadConfig,
    UploadError,
    _scratch,
    _uploader,
    get_mlflow_run_id,
    upload_benchmark_artifacts,
    upload_conversion_artifacts,
    upload_hpo_artifacts,
    upload_training_artifacts,
)


@pytest.fixture
def fresh_warnings() -> Iterator[None]:
    """Forget which skip reasons this process already reported."""
    _uploader._say_once.cache_clear()
    yield
    _uploader._say_once.cache_clear()


def tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def write_config(directory: Path, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "mlflow.yaml").write_text(text)
    return directory


def no_sleep(_: float) -> None:
    pass


def logged(server: ServerTracking, method: str, path: str, expected: int) -> int:
    """How many matching requests the server logged, once ``expected`` are in (10 s at most).

    The server logs a request just after answering it, so the client can be faster.
    """
    deadline = time.monotonic() + 10
    while server.faults.count(method, path) < expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return server.faults.count(method, path)


def upload_temp_dirs() -> set[str]:
    """What uploads left in the temp dir: scratch dirs and their locks, any old layout."""
    left = {n for n in os.listdir(tempfile.gettempdir()) if n.startswith("pytest-ckpts-upload")}
    root = _scratch.scratch_root() if left else None
    if root is not None and root.name in left:
        left.discard(root.name)
        left |= {f"{root.name}/{n}" for n in os.listdir(root)}
    return left


# --------------------------------------------------------------------------- run id, config


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


def test_config_file_is_read_lazily_and_validated(tmp_path: Path) -> None:
    conf = write_config(
        tmp_path / "ok",
        "tracking_uri: http://mlflow.internal:5000\n"
        "artifacts: {max_retries: 2, base_delay: 0.5}\n"
        "stages:\n  hpo: {enabled: false}\n  training: {artifact_path: ckpt/model}\n",
    )
    uploader = ArtifactUploader(stage="training", config_dir=conf)
    assert uploader._config is None  # nothing read yet
    assert uploader._get_tracking_config() == {
        "tracking_uri": "http://mlflow.internal:5000",
        "enabled": True,
        "stage_enabled": True,
        "artifact_path": "ckpt/model",
        "max_retries": 2,
        "base_delay": 0.5,
    }
    assert not UploadConfig.load(conf).stage_enabled("hpo")
    assert ArtifactUploader(config_dir=conf, max_retries=0, base_delay=0).max_retries == 0
    bad = {
        "stages:\n  hpo: {enabled: 'false'}\n": r"stages\.hpo\.enabled: expected true/false",
        "stages:\n  trainig: {}\n": "unknown stage 'trainig'",
        "artifact: {enabled: false}\n": r"unknown key\(s\) artifact",
        "artifacts: {max_retries: -1}\n": ">= 0",
        "stages: [1]\n": "stages: expected a mapping",
        "tracking_uri: [\n": "invalid YAML",
    }
    for i, (text, message) in enumerate(bad.items()):
        directory = write_config(tmp_path / f"bad{i}", text)
        with pytest.raises(UploadError, match=message) as info:
            UploadConfig.load(directory)
        assert str(directory / "mlflow.yaml") in str(info.value)
    with pytest.raises(ValueError, match="unknown stage 'train'"):
        ArtifactUploader(stage="train")


def test_tracking_uri_precedence(
    mlflow_tracking: MlflowTracking, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = write_config(tmp_path / "conf", "tracking_uri: http://from-file:5000\n")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert ArtifactUploader(run_id="r", config_dir=conf).tracking_uri == "http://from-file:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://from-env:5000")
    assert ArtifactUploader(run_id="r", config_dir=conf).tracking_uri == "http://from-env:5000"
    explicit = ArtifactUploader(run_id="r", config_dir=conf, tracking_uri="http://explicit:1")
    assert explicit.tracking_uri == "http://explicit:1"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_tracking.tracking_uri)
    with mlflow.start_run():
        # uploading to the active run: it lives where mlflow created it, whatever the file says
        assert ArtifactUploader(config_dir=conf).tracking_uri == mlflow_tracking.tracking_uri


# --------------------------------------------------------------------------- stage helpers


@pytest.mark.parametrize("backend", ["store", "server"])
def test_stage_helpers_are_archive_first(
    request: pytest.FixtureRequest, backend: str, ckpt_dir: Path, tmp_path: Path
) -> None:
    tracking: MlflowTracking = request.getfixturevalue(
        "mlflow_tracking" if backend == "store" else "mlflow_server"
    )
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
    if isinstance(tracking, ServerTracking):  # every upload went over the wire, proxied
        assert logged(tracking, "PUT", "/mlflow-artifacts/", 6) == 6
        assert {mlflow.get_run(r).info.experiment_id for r in runs.values()} == {
            tracking.experiment_id
        }
        assert all(
            mlflow.get_run(r).info.artifact_uri.startswith("mlflow-artifacts:/")
            for r in runs.values()
        )
    manifest = tracking.assert_archive_first(runs["training"], "training", ckpt_dir)
    assert manifest["file_count"] == 2
    assert tracking.list_artifacts(runs["training"]) == ["checkpoint.tar.gz", "metrics.json"]
    hpo = tracking.assert_archive_first(runs["hpo"], "hpo", ckpt_dir)
    assert hpo["trial_number"] == 3
    tracking.assert_archive_first(runs["benchmark"], "benchmark", ckpt_dir)
    assert tracking.list_artifacts(runs["benchmark"]) == [
        "benchmark.json",
        "benchmark_checkpoint.tar.gz",
    ]
    assert tracking.list_artifacts(runs["conversion"]) == ["conversion/model.onnx"]
    assert tree(ckpt_dir) == before  # the local checkpoint is only read


def test_helpers_take_an_explicit_run_id_and_config(
    mlflow_tracking: MlflowTracking, ckpt_dir: Path, tmp_path: Path
) -> None:
    run_id = mlflow_tracking.client.create_run("0").info.run_id  # not active: by id only
    conf = write_config(tmp_path / "conf", "stages:\n  conversion: {artifact_path: onnx/}\n")
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"x")
    assert upload_hpo_artifacts(ckpt_dir, 7, run_id=run_id, config_dir=conf)
    assert upload_conversion_artifacts(onnx, run_id=run_id, config_dir=conf)
    assert ArtifactUploader(run_id).upload_file(onnx, "nested/renamed.txt")
    assert ArtifactUploader(run_id).upload_file(onnx, "into/dir/")
    assert mlflow_tracking.list_artifacts(run_id) == [
        "best_trial_checkpoint.tar.gz",
        "into/dir/m.onnx",
        "nested/renamed.txt",
        "onnx/m.onnx",
    ]
    assert mlflow_tracking.assert_archive_first(run_id, "hpo", ckpt_dir)["trial_number"] == 7


def test_skip_switch_and_disabled_stage_upload_nothing(
    mlflow_tracking: MlflowTracking,
    ckpt_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    fresh_warnings: None,
    private_tmp: Path,
) -> None:
    hpo_off = write_config(tmp_path / "conf", "stages:\n  hpo:\n    enabled: false\n")
    all_off = write_config(tmp_path / "off", "artifacts: {enabled: false}\n")
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"x")
    caplog.set_level("WARNING", logger="pytest_ckpts.uploads")
    with mlflow.start_run() as run:
        for _ in range(3):
            assert upload_hpo_artifacts(ckpt_dir, 1, config_dir=hpo_off) is False
        assert upload_training_artifacts(ckpt_dir, config_dir=all_off) == {"checkpoint": False}
        assert upload_conversion_artifacts(onnx, config_dir=all_off) is False
        assert upload_training_artifacts(ckpt_dir, config_dir=hpo_off) == {"checkpoint": True}
        monkeypatch.setenv("MLFLOW_SKIP_ARTIFACT_LOGGING", "true")
        assert upload_training_artifacts(ckpt_dir, tmp_path / "m.onnx") == {
            "checkpoint": False,
            "metrics": False,
        }
        assert upload_benchmark_artifacts(onnx, ckpt_dir) == {"results": False, "checkpoint": False}
        assert upload_conversion_artifacts(onnx) is False
        with pytest.raises(UploadError, match="MLFLOW_SKIP_ARTIFACT_LOGGING"):
            ArtifactUploader(stage="training").upload_checkpoint(ckpt_dir, skip_if_disabled=False)
    # only the one enabled upload happened
    assert mlflow_tracking.list_artifacts(run.info.run_id) == ["checkpoint.tar.gz"]
    said = [r.getMessage() for r in caplog.records if r.name == "pytest_ckpts.uploads"]
    assert len(said) == 3, said  # hpo disabled, all disabled, skip switch: once each
    assert any("stages.hpo.enabled" in m and str(hpo_off) in m for m in said)
    assert any("MLFLOW_SKIP_ARTIFACT_LOGGING" in m for m in said)
    assert upload_temp_dirs() == set()


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


def test_assert_archive_first_catches_loose_files(
    mlflow_tracking: MlflowTracking, ckpt_dir: Path
) -> None:
    with mlflow.start_run() as run:
        upload_training_artifacts(ckpt_dir)
        mlflow.log_artifacts(str(ckpt_dir), "checkpoint")  # the old per-file way
    with pytest.raises(AssertionError, match=r"loose checkpoint files.*checkpoint/model/weights"):
        mlflow_tracking.assert_archive_first(run.info.run_id, "training", ckpt_dir)
    with pytest.raises(AssertionError, match="expected exactly one archive"):
        mlflow_tracking.assert_archive_first(run.info.run_id, "hpo")


# --------------------------------------------------------------------------- over the wire


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


def test_injected_delay_slows_uploads(mlflow_server: ServerTracking, ckpt_dir: Path) -> None:
    mlflow_server.faults.delay(0.4, n=1, method="PUT")
    with mlflow.start_run():
        started = time.perf_counter()
        assert ArtifactUploader(stage="hpo").upload_checkpoint(ckpt_dir, trial_number=0)
        assert time.perf_counter() - started >= 0.4


def test_archive_failure_raises_before_any_upload(
    mlflow_server: ServerTracking, ckpt_dir: Path, private_tmp: Path
) -> None:
    os.mkfifo(ckpt_dir / "model" / "pipe")  # archive.py refuses special files
    with mlflow.start_run() as run, pytest.raises(ArchiveError, match="pipe"):
        ArtifactUploader(stage="training").upload_checkpoint(ckpt_dir)
    assert mlflow_server.faults.count("PUT") == 0
    assert mlflow_server.list_artifacts(run.info.run_id) == []
    assert list(private_tmp.iterdir()) == []  # no temp dir, no partial archive


def test_deprecated_archive_upload_warns_and_works(
    mlflow_tracking: MlflowTracking, ckpt_dir: Path, tmp_path: Path
) -> None:
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
    mlflow_tracking.assert_archive_first(run.info.run_id, "hpo", ckpt_dir)


# --------------------------------------------------------------------------- fixtures


def test_fixtures_module_does_not_import_mlflow() -> None:
    code = (
        "import sys, pytest_ckpts.plugin, pytest_ckpts.mlflow_fixtures, pytest_ckpts.uploads\n"
        "print(sorted(m for m in ('mlflow', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_fixtures_restore_state_in_a_user_suite(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One subprocess run: a user suite on the auto-loaded plugin, no cacheprovider.

    Each fixture's teardown is checked by the test that runs after it.
    """
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        monkeypatch.delenv(name, raising=False)  # the inner run is not an xdist worker
    pytester.makepyfile(
        """
        import os
        from pathlib import Path
        import mlflow
        from mlflow.tracking import fluent
        from pytest_ckpts.uploads import upload_training_artifacts

        BEFORE = {}

        def state():
            return (
                {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"},
                mlflow.get_tracking_uri(),
                mlflow.get_registry_uri(),
                os.getcwd(),
                fluent._active_experiment_id,
            )

        def test_a_record_state():
            BEFORE["state"] = state()

        def test_b_tracking(mlflow_tracking, tmp_path):
            assert os.environ["MLFLOW_TRACKING_URI"] == mlflow_tracking.tracking_uri
            assert mlflow.get_tracking_uri() == mlflow_tracking.tracking_uri
            d = tmp_path / "ckpt"
            d.mkdir()
            (d / "w.pt").write_bytes(b"w" * 100)
            with mlflow.start_run() as run:
                assert upload_training_artifacts(d) == {"checkpoint": True}
            mlflow_tracking.assert_archive_first(run.info.run_id, "training", d)
            mlflow.set_experiment("scratch")
            mlflow.set_registry_uri(mlflow_tracking.tracking_uri)
            mlflow.start_run()  # left active on purpose: the fixture must end it

        def check_restored():
            env, *rest = state()
            before_env, *before_rest = BEFORE["state"]
            changed = {k for k in env.keys() | before_env.keys() if env.get(k) != before_env.get(k)}
            assert changed == set()
            assert rest == before_rest

        def test_c_restored():
            check_restored()
            assert mlflow.active_run() is None

        def test_d_server(mlflow_server, tmp_path):
            assert mlflow.get_tracking_uri().startswith("http://127.0.0.1:")
            with mlflow.start_run() as run:
                assert run.info.experiment_id == mlflow_server.experiment_id
                mlflow.log_text("hi", "hello.txt")
            assert mlflow_server.list_artifacts(run.info.run_id) == ["hello.txt"]
            mlflow.start_run()

        def test_e_restored():
            check_restored()
            assert mlflow.active_run() is None
            assert not Path("mlruns").exists()
        """
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-p", "no:randomly", "-W", "error", timeout=120
    )
    result.assert_outcomes(passed=5)
    assert not (pytester.path / "mlruns").exists()
    assert not (pytester.path / "mlflow.db").exists()
