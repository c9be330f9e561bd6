"""Archive-first uploads against a real MLflow store and a real MLflow server (docs/uploads.md)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from pytest_ckpts.archive import ArchiveError, create_archive
from pytest_ckpts.testing.mlflow import MlflowTracking, ServerTracking
from pytest_ckpts.uploads import (
    ArtifactUploader,
    UploadError,
    _scratch,
    _uploader,
    get_mlflow_run_id,
    upload_benchmark_artifacts,
    upload_conversion_artifacts,
    upload_hpo_artifacts,
    upload_training_artifacts,
)
from tests.helpers import logged


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


# --------------------------------------------------------------------------- over the wire


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
