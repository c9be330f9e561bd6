"""Archive-first MLflow artifact uploads, one ``ArtifactUploader`` for every stage.

Uploading a checkpoint directory file by file costs one request per file and leaves
half a checkpoint behind when the connection drops in the middle. Here each
checkpoint directory becomes exactly one deterministic ``.tar.gz`` with a
``MANIFEST.json`` (``pytest_ckpts.archive``), uploaded in one call and retried as a
whole. The archive is built in a private scratch directory before any request and
removed afterwards, whatever happened; the local checkpoint is only ever read.

Configuration (optional) lives in ``<config_dir>/mlflow.yaml``; every key is optional
and unknown keys are errors (a typo must not silently re-enable uploads)::

    tracking_uri: http://mlflow.internal:5000
    artifacts:
      enabled: true          # false: upload nothing from any stage
      max_retries: 5         # retries after the first attempt
      base_delay: 2.0        # seconds; exponential backoff, a wait in [d/2, d]
    stages:
      training:   {enabled: true, artifact_path: checkpoint.tar.gz}
      hpo:        {enabled: true, artifact_path: best_trial_checkpoint.tar.gz}
      benchmark:  {enabled: false}
      conversion: {enabled: true, artifact_path: conversion}   # a directory for files

Tracking URI, highest first: ``ArtifactUploader(tracking_uri=...)``; mlflow's own URI
when uploading to the run that is active in this process (the run lives there);
``MLFLOW_TRACKING_URI``; ``tracking_uri`` from the file; MLflow's default. The
environment beats the file so that CI and test fixtures can redirect a pipeline whose
committed config names a production server.

``MLFLOW_SKIP_ARTIFACT_LOGGING=true`` turns every upload off. mlflow is imported only
when an upload actually happens. Nothing here changes process-wide state: no
environment variable, signal handler or umask is touched.

One job per module: ``_config`` (the YAML file), ``_uploader`` (the class and the run
id), ``_stages`` (the stage helpers), ``_retry`` (what is retried, and how),
``_transport`` (one attempt, without mlflow's own retries), ``_scratch`` (scratch
directories, and the sweep of those a killed process left).
"""

from __future__ import annotations

from ..errors import UploadArgumentError, UploadError
from ._config import CONFIG_FILE, CONVERSION_DIR, STAGE_ARTIFACT_PATHS, STAGES, UploadConfig
from ._stages import (
    upload_benchmark_artifacts,
    upload_conversion_artifacts,
    upload_hpo_artifacts,
    upload_training_artifacts,
)
from ._uploader import SKIP_ENV, ArtifactUploader, get_mlflow_run_id

__all__ = [
    "CONFIG_FILE",
    "CONVERSION_DIR",
    "SKIP_ENV",
    "STAGES",
    "STAGE_ARTIFACT_PATHS",
    "ArtifactUploader",
    "UploadArgumentError",
    "UploadConfig",
    "UploadError",
    "get_mlflow_run_id",
    "upload_benchmark_artifacts",
    "upload_conversion_artifacts",
    "upload_hpo_artifacts",
    "upload_training_artifacts",
]
