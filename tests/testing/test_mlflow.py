"""pytest_ckpts.testing.mlflow: the in-process and server MLflow stand-ins, their assertions and faults."""

from __future__ import annotations

import time
from pathlib import Path

import mlflow
import pytest

from pytest_ckpts.testing.mlflow import MlflowTracking, ServerTracking
from pytest_ckpts.uploads import (
    ArtifactUploader,
    upload_training_artifacts,
)


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


def test_injected_delay_slows_uploads(mlflow_server: ServerTracking, ckpt_dir: Path) -> None:
    mlflow_server.faults.delay(0.4, n=1, method="PUT")
    with mlflow.start_run():
        started = time.perf_counter()
        assert ArtifactUploader(stage="hpo").upload_checkpoint(ckpt_dir, trial_number=0)
        assert time.perf_counter() - started >= 0.4
