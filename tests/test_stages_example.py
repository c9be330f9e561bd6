"""The cross-stage example: archive-first at every stage, archives reproduce the experiment dirs."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

from pytest_ckpts.archive import extract_archive
from pytest_ckpts.testing.mlflow import MlflowTracking
from pytest_ckpts.uploads import STAGE_ARTIFACT_PATHS

PIPELINE = Path(__file__).resolve().parents[1] / "examples" / "stages" / "pipeline.py"


def load_pipeline() -> ModuleType:
    """Import the example by path (no sys.path edits, no clash with another ``pipeline``)."""
    spec = importlib.util.spec_from_file_location("ckpts_stages_example", PIPELINE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tree(root: Path) -> dict[str, bytes | None]:
    return {
        p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


@pytest.mark.slow
def test_every_stage_is_archive_first_and_round_trips(
    mlflow_tracking: MlflowTracking, tmp_path: Path
) -> None:
    result = load_pipeline().run_pipeline(tmp_path / "work")
    assert {stage: info["uploaded"] for stage, info in result.items()} == dict.fromkeys(
        ("training", "hpo", "benchmark", "conversion"), True
    )
    for stage in ("training", "hpo", "benchmark"):
        info = result[stage]
        source: Path = info["checkpoint_dir"]
        assert re.fullmatch(r"[0-9a-f]{16}", source.name)  # a hash-named experiment dir
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
        "conversion/model.onnx"
    ]
    converted = mlflow_tracking.download_artifact(
        result["conversion"]["run_id"], "conversion/model.onnx", tmp_path / "dl" / "conversion"
    )
    assert converted.read_bytes() == result["conversion"]["file"].read_bytes()
