"""Archive-first MLflow artifact uploads, one ``ArtifactUploader`` for every stage.

Uploading a checkpoint directory file by file costs one request per file and leaves
half a checkpoint behind when the connection drops in the middle. Here each
checkpoint directory becomes exactly one deterministic ``.tar.gz`` with a
``MANIFEST.json`` (``pytest_ckpts.archive``), uploaded in one call and retried as a
whole. The archive is built in a temporary directory before any request is made,
and the local checkpoint is only ever read.

Configuration (optional) lives in ``<config_dir>/mlflow.yaml``::

    tracking_uri: http://mlflow.internal:5000   # else MLFLOW_TRACKING_URI / MLflow's default
    artifacts:
      enabled: true          # false: upload nothing from any stage
      max_retries: 5
      base_delay: 2.0        # seconds; exponential backoff with full jitter
    stages:
      training:  {enabled: true, artifact_path: checkpoint.tar.gz}
      hpo:       {enabled: true, artifact_path: best_trial_checkpoint.tar.gz}
      benchmark: {enabled: false}
      conversion: {enabled: true}

``MLFLOW_SKIP_ARTIFACT_LOGGING=true`` turns every upload off. mlflow is imported
only when an upload actually happens.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import yaml

from ._extras import require
from .archive import create_archive
from .errors import CheckpointsError

__all__ = [
    "STAGE_ARTIFACT_PATHS",
    "ArtifactUploader",
    "UploadConfig",
    "UploadError",
    "get_mlflow_run_id",
    "upload_benchmark_artifacts",
    "upload_conversion_artifacts",
    "upload_hpo_artifacts",
    "upload_training_artifacts",
]

logger = logging.getLogger("pytest_ckpts.uploads")

#: Where each stage's checkpoint archive goes in the run's artifacts.
STAGE_ARTIFACT_PATHS: Mapping[str, str] = {
    "training": "checkpoint.tar.gz",
    "hpo": "best_trial_checkpoint.tar.gz",
    "benchmark": "benchmark_checkpoint.tar.gz",
}
CONFIG_FILE = "mlflow.yaml"
_TRUE = ("1", "true", "yes", "on")
_said: set[str] = set()
# requests/urllib3 transport failures, matched by name so mlflow's HTTP stack stays lazy
_TRANSPORT_ERRORS = (
    "ConnectionError",
    "ConnectTimeout",
    "ReadTimeout",
    "ChunkedEncodingError",
    "ProtocolError",
    "MaxRetryError",
)

T = TypeVar("T")


class UploadError(CheckpointsError, RuntimeError):
    """An upload failed for good (a 4xx answer, or retries exhausted)."""


def _say_once(reason: str) -> None:
    """Log why nothing was uploaded, once per process per reason (not once per call)."""
    if reason not in _said:
        _said.add(reason)
        logger.warning("pytest-ckpts: %s", reason)


def get_mlflow_run_id() -> str | None:
    """The active MLflow run's id, else ``MLFLOW_RUN_ID``, else None.

    mlflow is not imported for this: if nothing imported it, no run can be active.
    """
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None:
        try:
            run = mlflow.active_run()
        except Exception:  # a broken tracking setup must not break the caller
            run = None
        if run is not None:
            return str(run.info.run_id)
    return os.environ.get("MLFLOW_RUN_ID") or None


@dataclass(frozen=True)
class UploadConfig:
    """The parsed ``mlflow.yaml`` (defaults when there is none)."""

    tracking_uri: str | None = None
    enabled: bool = True
    max_retries: int = 5
    base_delay: float = 2.0
    stages: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, config_dir: str | os.PathLike[str] | None) -> UploadConfig:
        if config_dir is None:
            return cls()
        path = Path(config_dir) / CONFIG_FILE
        if not path.exists():
            return cls()
        try:
            data = yaml.safe_load(path.read_text("utf-8")) or {}
        except yaml.YAMLError as exc:
            raise UploadError(f"pytest-ckpts: {path}: invalid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise UploadError(f"pytest-ckpts: {path}: expected a mapping at the top level")
        artifacts = data.get("artifacts") or {}
        stages = data.get("stages") or {}
        if not isinstance(artifacts, dict) or not isinstance(stages, dict):
            raise UploadError(f"pytest-ckpts: {path}: 'artifacts' and 'stages' must be mappings")
        return cls(
            tracking_uri=data.get("tracking_uri"),
            enabled=bool(artifacts.get("enabled", True)),
            max_retries=int(artifacts.get("max_retries", 5)),
            base_delay=float(artifacts.get("base_delay", 2.0)),
            stages={str(k): dict(v or {}) for k, v in stages.items()},
        )

    def stage_enabled(self, stage: str | None) -> bool:
        if stage is None:
            return True
        return bool(self.stages.get(stage, {}).get("enabled", True))

    def stage_path(self, stage: str | None) -> str | None:
        if stage is None:
            return None
        configured = self.stages.get(stage, {}).get("artifact_path")
        return str(configured) if configured else STAGE_ARTIFACT_PATHS.get(stage)


def _status(exc: BaseException) -> int | None:
    """The HTTP status behind an exception from mlflow/requests, if any."""
    seen: BaseException | None = exc
    while seen is not None:
        code = getattr(getattr(seen, "response", None), "status_code", None)
        if isinstance(code, int):
            return code
        seen = seen.__cause__ or seen.__context__
    return None


def _transient(exc: BaseException) -> bool:
    """Connection problems, 5xx and 429 are worth retrying; other 4xx are not."""
    status = _status(exc)
    if status is not None:
        return status >= 500 or status == 429
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (ConnectionError, TimeoutError)):
            return True
        if type(seen).__name__ in _TRANSPORT_ERRORS:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@contextmanager
def _no_mlflow_http_retries() -> Iterator[None]:
    """We own the retry policy; mlflow's own retries would multiply it (5 x 7 attempts)."""
    name = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
    saved = os.environ.get(name)
    os.environ[name] = "0"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


class ArtifactUploader:
    """Uploads files and checkpoint archives to one MLflow run, for one pipeline stage.

    ``run_id`` defaults to :func:`get_mlflow_run_id`; ``stage`` selects the default
    artifact path and the stage switch in ``<config_dir>/mlflow.yaml`` (read lazily,
    on first use). ``sleep`` is injectable so tests of the retry policy need not wait.
    """

    def __init__(
        self,
        run_id: str | None = None,
        stage: str | None = None,
        config_dir: str | os.PathLike[str] | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._run_id = run_id
        self.stage = stage
        self.config_dir = config_dir
        self._config: UploadConfig | None = None
        self._sleep = sleep
        self.attempts = 0  # requests made by the last upload (for logs and tests)

    @property
    def config(self) -> UploadConfig:
        if self._config is None:
            self._config = UploadConfig.load(self.config_dir)
        return self._config

    def _get_tracking_config(self) -> dict[str, Any]:
        """The effective settings, as the seed's uploader exposed them."""
        c = self.config
        return {
            "tracking_uri": self.tracking_uri,
            "enabled": c.enabled,
            "stage_enabled": c.stage_enabled(self.stage),
            "max_retries": c.max_retries,
            "base_delay": c.base_delay,
        }

    @property
    def run_id(self) -> str | None:
        return self._run_id or get_mlflow_run_id()

    @property
    def tracking_uri(self) -> str | None:
        return self.config.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None

    def skip_reason(self) -> str | None:
        """Why nothing would be uploaded now, or None."""
        if os.environ.get("MLFLOW_SKIP_ARTIFACT_LOGGING", "").strip().lower() in _TRUE:
            return "MLFLOW_SKIP_ARTIFACT_LOGGING is set: not uploading artifacts"
        if not self.config.enabled:
            return f"artifact uploads are disabled in {Path(str(self.config_dir)) / CONFIG_FILE}"
        if not self.config.stage_enabled(self.stage):
            return (
                f"artifact uploads for stage '{self.stage}' are disabled in "
                f"{Path(str(self.config_dir)) / CONFIG_FILE}"
            )
        if self.run_id is None:
            return "no active MLflow run and MLFLOW_RUN_ID is not set: not uploading artifacts"
        return None

    # ------------------------------------------------------------------ uploads
    def upload_file(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> bool:
        """Upload one file; ``artifact_path`` is its path in the run (default: its name)."""
        reason = self.skip_reason()
        if reason is not None:
            _say_once(reason)
            return False
        local = Path(path)
        if not local.is_file():
            raise UploadError(f"pytest-ckpts: {local} does not exist or is not a file")
        target = PurePosixPath(artifact_path or local.name)
        with tempfile.TemporaryDirectory(prefix="pytest-ckpts-upload-") as tmp:
            source = local
            if target.name != local.name:  # MLflow names the artifact after the file
                source = Path(tmp) / target.name
                shutil.copyfile(local, source)
            self._log_artifact(source, target.parent)
        return True

    def upload_checkpoint(
        self,
        checkpoint_dir: str | os.PathLike[str],
        artifact_path: str | None = None,
        trial_number: int | None = None,
        skip_if_disabled: bool = True,
    ) -> bool:
        """Upload ``checkpoint_dir`` as exactly one ``.tar.gz`` archive with a manifest.

        The archive is built before any request; if that fails it raises and nothing
        is uploaded. Returns False (and says why, once) when uploads are off, unless
        ``skip_if_disabled=False``, which raises instead.
        """
        reason = self.skip_reason()
        if reason is not None:
            if not skip_if_disabled:
                raise UploadError(f"pytest-ckpts: {reason}")
            _say_once(reason)
            return False
        name = artifact_path or self.config.stage_path(self.stage) or "checkpoint.tar.gz"
        if not name.endswith(".tar.gz"):
            name += ".tar.gz"
        target = PurePosixPath(name)
        with tempfile.TemporaryDirectory(prefix="pytest-ckpts-upload-") as tmp:
            archive = create_archive(
                checkpoint_dir, Path(tmp) / target.name, trial_number=trial_number, stage=self.stage
            )
            self._log_artifact(archive, target.parent)
        return True

    def upload_checkpoint_archive(
        self,
        archive_path: str | os.PathLike[str],
        manifest: Mapping[str, Any] | None = None,
        artifact_path: str = "best_trial_checkpoint.tar.gz",
    ) -> bool:
        """Deprecated: upload an archive built elsewhere. Use :meth:`upload_checkpoint`."""
        warnings.warn(
            "ArtifactUploader.upload_checkpoint_archive() is deprecated: pass the checkpoint "
            "directory to upload_checkpoint(), which builds a verified archive itself",
            DeprecationWarning,
            stacklevel=2,
        )
        uploaded = self.upload_file(archive_path, artifact_path)
        if uploaded and manifest is not None:
            import json

            with tempfile.TemporaryDirectory(prefix="pytest-ckpts-upload-") as tmp:
                mpath = Path(tmp) / (PurePosixPath(artifact_path).name + ".manifest.json")
                mpath.write_text(json.dumps(dict(manifest), indent=2, sort_keys=True))
                self._log_artifact(mpath, PurePosixPath(artifact_path).parent)
        return uploaded

    # ------------------------------------------------------------------ transport
    def _log_artifact(self, local: Path, directory: PurePosixPath) -> None:
        run_id = self.run_id
        assert run_id is not None
        tracking = require("mlflow.tracking", "uploading artifacts")
        client = tracking.MlflowClient(tracking_uri=self.tracking_uri)
        dest = None if str(directory) in ("", ".") else str(directory)

        def call() -> None:
            client.log_artifact(run_id, str(local), artifact_path=dest)

        self._with_retries(call, what=f"{local.name} to run {run_id}")

    def _with_retries(self, fn: Callable[[], T], *, what: str) -> T:
        c = self.config
        self.attempts = 0
        with _no_mlflow_http_retries():
            for attempt in range(c.max_retries + 1):
                self.attempts += 1
                try:
                    return fn()
                except Exception as exc:
                    status = _status(exc)
                    if not _transient(exc):
                        raise UploadError(
                            f"pytest-ckpts: uploading {what} failed"
                            f"{f' with HTTP {status}' if status else ''} (not retried): {exc}"
                        ) from exc
                    if attempt == c.max_retries:
                        raise UploadError(
                            f"pytest-ckpts: uploading {what} failed after "
                            f"{self.attempts} attempts: {exc}"
                        ) from exc
                    delay = random.uniform(0, c.base_delay * 2**attempt)
                    logger.warning(
                        "pytest-ckpts: upload of %s failed (%s); retry %d/%d in %.1fs",
                        what,
                        f"HTTP {status}" if status else type(exc).__name__,
                        attempt + 1,
                        c.max_retries,
                        delay,
                    )
                    self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover


# --------------------------------------------------------------------------- stage helpers


def upload_training_artifacts(
    checkpoint_dir: str | os.PathLike[str],
    metrics_json_path: str | os.PathLike[str] | None = None,
    run_id: str | None = None,
    config_dir: str | os.PathLike[str] | None = None,
) -> dict[str, bool]:
    """Training: the checkpoint as ``checkpoint.tar.gz`` and ``metrics.json`` if given."""
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
    """HPO: the best trial's checkpoint as ``best_trial_checkpoint.tar.gz``."""
    uploader = ArtifactUploader(run_id=run_id, stage="hpo", config_dir=config_dir)
    return uploader.upload_checkpoint(checkpoint_dir, trial_number=trial_number)


def upload_benchmark_artifacts(
    benchmark_json_path: str | os.PathLike[str] | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    run_id: str | None = None,
    config_dir: str | os.PathLike[str] | None = None,
) -> dict[str, bool]:
    """Benchmark: results as ``benchmark.json``, the checkpoint as ``benchmark_checkpoint.tar.gz``."""
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
    """Conversion: the converted model file under ``conversion/<name>``."""
    uploader = ArtifactUploader(run_id=run_id, stage="conversion", config_dir=config_dir)
    return uploader.upload_file(onnx_path, f"conversion/{Path(onnx_path).name}")
