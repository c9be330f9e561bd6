"""One helper per pipeline stage, each uploading what that stage produces.

Each is a thin ``ArtifactUploader(stage=...)`` call, so every stage shares the archive,
the retry policy and the switches in ``<config_dir>/mlflow.yaml``.
"""

from __future__ import annotations

import os

from ._config import CONVERSION_DIR
from ._uploader import ArtifactUploader


def upload_training_artifacts(
    checkpoint_dir: str | os.PathLike[str],
    metrics_json_path: str | os.PathLike[str] | None = None,
    run_id: str | None = None,
    config_dir: str | os.PathLike[str] | None = None,
) -> dict[str, bool]:
    """Training: the checkpoint as ``checkpoint.tar.gz``, and ``metrics.json`` if given.

    Returns ``{"checkpoint": bool, "metrics": bool}`` (``metrics`` only when a path
    was given), each True when uploaded.
    """
    uploader = ArtifactUploader(run_id=run_id, stage="training", config_dir=config_dir)
    result = {"checkpoint": uploader.upload_checkpoint(checkpoint_dir)}
    if metrics_json_path is not None:
        result["metrics"] = uploader.upload_file(metrics_json_path, "metrics.json")
    return result


def upload_hpo_artifacts(
    checkpoint_dir: str | os.PathLike[str],
    trial_number: int,
    run_id: str | None = None,
    config_dir: str | os.PathLike[str] | None = None,
) -> bool:
    """HPO: the best trial's checkpoint as ``best_trial_checkpoint.tar.gz``.

    ``trial_number`` is required: it is recorded in the archive's ``MANIFEST.json`` so
    the archive says which trial it came from.
    """
    uploader = ArtifactUploader(run_id=run_id, stage="hpo", config_dir=config_dir)
    return uploader.upload_checkpoint(checkpoint_dir, trial_number=trial_number)


def upload_benchmark_artifacts(
    benchmark_json_path: str | os.PathLike[str] | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    run_id: str | None = None,
    config_dir: str | os.PathLike[str] | None = None,
) -> dict[str, bool]:
    """Benchmark: results as ``benchmark.json``, the benchmarked checkpoint as
    ``benchmark_checkpoint.tar.gz``.

    Either may be omitted; the result has a ``"results"`` and/or ``"checkpoint"`` key
    for what was asked for.
    """
    uploader = ArtifactUploader(run_id=run_id, stage="benchmark", config_dir=config_dir)
    result: dict[str, bool] = {}
    if benchmark_json_path is not None:
        result["results"] = uploader.upload_file(benchmark_json_path, "benchmark.json")
    if checkpoint_dir is not None:
        result["checkpoint"] = uploader.upload_checkpoint(checkpoint_dir)
    return result


def upload_conversion_artifacts(
    onnx_path: str | os.PathLike[str],
    run_id: str | None = None,
    config_dir: str | os.PathLike[str] | None = None,
) -> bool:
    """Conversion: the converted model file as ``conversion/<file name>``.

    A converted model is one file, so it is uploaded as is (no archive).
    ``stages.conversion.artifact_path`` in the config changes the directory.
    """
    uploader = ArtifactUploader(run_id=run_id, stage="conversion", config_dir=config_dir)
    directory = uploader.config.stage_path("conversion") or CONVERSION_DIR
    return uploader.upload_file(onnx_path, directory.rstrip("/") + "/")
