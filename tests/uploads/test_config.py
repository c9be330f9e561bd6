"""Upload configuration (pytest_ckpts.uploads._config): the config file, read lazily and validated; the tracking URI's precedence."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from pytest_ckpts.testing.mlflow import MlflowTracking
from pytest_ckpts.uploads import (
    ArtifactUploader,
    UploadConfig,
    UploadError,
)


def write_config(directory: Path, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "mlflow.yaml").write_text(text)
    return directory


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
