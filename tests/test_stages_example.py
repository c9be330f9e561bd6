"""The cross-stage example: archive-first at every stage, archives reproduce the experiment dirs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pytest_ckpts.archive import extract_archive
from pytest_ckpts.testing.mlflow import MlflowTracking
from pytest_ckpts.uploads import STAGE_ARTIFACT_PATHS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "stages"))

from pipeline import run_pipeline


def tree(root: Path) -> dict[str, bytes | None]:
    return {
        p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


@pytest.mark.slow
def test_every_stage_is_archive_first_and_round_trips(
    mlflow_tracking: MlflowTracking, tmp_path: Path
) -> None:
    result = run_pipeline(tmp_path / "work")
    for stage in ("training", "hpo", "benchmark"):
        info = result[stage]
        source: Path = info["checkpoint_dir"]
        manifest = mlflow_tracking.assert_archive_first(info["run_id"], stage, source)
        assert manifest["stage"] == stage
        local = mlflow_tracking.download_artifact(
            info["run_id"], STAGE_ARTIFACT_PATHS[stage], tmp_path / "dl" / stage
        )
        restored = extract_archive(local, tmp_path / "restored" / stage)
        # byte for byte, directories included (MANIFEST.json is checked, not written)
        assert tree(restored) == tree(source), stage
    assert result["hpo"]["trial"] in (0, 1, 2)
    assert (
        mlflow_tracking.assert_archive_first(result["hpo"]["run_id"], "hpo")["trial_number"]
        == result["hpo"]["trial"]
    )
    assert mlflow_tracking.list_artifacts(result["training"]["run_id"]) == [
        "checkpoint.tar.gz",
        "metrics.json",
    ]
    assert mlflow_tracking.list_artifacts(result["benchmark"]["run_id"]) == [
        "benchmark.json",
        "benchmark_checkpoint.tar.gz",
    ]
    assert mlflow_tracking.list_artifacts(result["conversion"]["run_id"]) == [
        "conversion/model.pt2"
    ]
