"""Archive-first MLflow artifact uploads, one ``ArtifactUploader`` for every stage.

Uploading a checkpoint directory file by file costs one request per file and leaves
half a checkpoint behind when the connection drops in the middle. Here each
checkpoint directory becomes exactly one deterministic ``.tar.gz`` with a
``MANIFEST.json`` (``pytest_ckpts.archive``), uploaded in one call and retried as a
whole. The archive is built in a temporary directory before any request is made and
removed afterwards, whatever happened; the local checkpoint is only ever read.

Configuration (optional) lives in ``<config_dir>/mlflow.yaml``; every key is optional
and unknown keys are errors (a typo must not silently re-enable uploads)::

    tracking_uri: http://mlflow.internal:5000
    artifacts:
      enabled: true          # false: upload nothing from any stage
      max_retries: 5         # retries after the first attempt
      base_delay: 2.0        # seconds; exponential backoff with full jitter
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
when an upload actually happens.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
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

from ._extras import require
from .archive import create_archive
from .errors import CheckpointsError

__all__ = [
    "CONFIG_FILE",
    "STAGES",
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

#: The pipeline stages this module knows; a stage name outside them is a typo.
STAGES = ("training", "hpo", "benchmark", "conversion")
#: Where each stage's checkpoint archive goes in the run's artifacts.
STAGE_ARTIFACT_PATHS: Mapping[str, str] = {
    "training": "checkpoint.tar.gz",
    "hpo": "best_trial_checkpoint.tar.gz",
    "benchmark": "benchmark_checkpoint.tar.gz",
}
#: The run directory for converted models (``conversion/model.onnx``).
CONVERSION_DIR = "conversion"
CONFIG_FILE = "mlflow.yaml"
SKIP_ENV = "MLFLOW_SKIP_ARTIFACT_LOGGING"
_TRUE = ("1", "true", "yes", "on")
_KEYS = {
    "": ("tracking_uri", "artifacts", "stages"),
    "artifacts": ("enabled", "max_retries", "base_delay"),
    "stage": ("enabled", "artifact_path"),
}
# A process-wide memory of what was already said: "why nothing was uploaded" is worth
# one warning per process, not one per checkpoint of a 200-trial sweep.
_said: set[str] = set()
# requests/urllib3 transport failures, matched by name so mlflow's HTTP stack stays lazy
_TRANSPORT_ERRORS = frozenset(
    {
        "ConnectionError",
        "ConnectTimeout",
        "ReadTimeout",
        "Timeout",
        "ChunkedEncodingError",
        "ProtocolError",
        "MaxRetryError",
        "NewConnectionError",
        "RemoteDisconnected",
    }
)

_URLLIB3_STATUS = re.compile(r"too many (\d{3}) error responses")

T = TypeVar("T")


class UploadError(CheckpointsError, RuntimeError):
    """An upload failed for good (a 4xx answer, or retries exhausted), or a bad config."""


def _say_once(reason: str) -> None:
    """Log why nothing was uploaded, once per process per reason (not once per call)."""
    if reason not in _said:
        _said.add(reason)
        logger.warning("pytest-ckpts: %s", reason)


def _env(name: str) -> str | None:
    """An environment variable, with the empty string counting as unset (SPEC §2)."""
    return os.environ.get(name) or None


def _active_run_id() -> str | None:
    """The id of this process's active MLflow run, without importing mlflow.

    If nothing imported mlflow, no run can be active, and importing it (2-3 s) just to
    learn that would tax every caller that merely checks.
    """
    mlflow = sys.modules.get("mlflow")
    if mlflow is None:
        return None
    try:
        run = mlflow.active_run()
    except Exception:  # a broken tracking setup must not break the caller
        return None
    return None if run is None else str(run.info.run_id)


def get_mlflow_run_id() -> str | None:
    """The active MLflow run's id, else ``MLFLOW_RUN_ID``, else None (empty = unset)."""
    return _active_run_id() or _env("MLFLOW_RUN_ID")


# --------------------------------------------------------------------------- config


def _check_keys(data: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(str(k) for k in data if k not in allowed)
    if unknown:
        raise UploadError(
            f"pytest-ckpts: {where}: unknown key(s) {', '.join(unknown)} "
            f"(allowed: {', '.join(allowed)})"
        )


def _typed(value: Any, kind: type | tuple[type, ...], where: str, what: str) -> Any:
    # bool is an int subclass; "false" (a string) is truthy: both must be refused
    ok = isinstance(value, kind) and not (kind in (int, (int, float)) and isinstance(value, bool))
    if not ok:
        raise UploadError(f"pytest-ckpts: {where}: expected {what}, got {value!r}")
    return value


@dataclass(frozen=True)
class UploadConfig:
    """The parsed ``<config_dir>/mlflow.yaml`` (defaults when there is none)."""

    tracking_uri: str | None = None
    enabled: bool = True
    max_retries: int = 5
    base_delay: float = 2.0
    stages: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    source: Path | None = None

    @classmethod
    def load(cls, config_dir: str | os.PathLike[str] | None) -> UploadConfig:
        """Read and validate the file; a missing file (or no ``config_dir``) is all defaults."""
        if config_dir is None:
            return cls()
        path = Path(config_dir) / CONFIG_FILE
        if not path.is_file():
            return cls()
        import yaml

        try:
            data = yaml.safe_load(path.read_text("utf-8")) or {}
        except yaml.YAMLError as exc:
            raise UploadError(f"pytest-ckpts: {path}: invalid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise UploadError(f"pytest-ckpts: {path}: expected a mapping at the top level")
        _check_keys(data, _KEYS[""], str(path))
        tracking_uri = data.get("tracking_uri")
        if tracking_uri is not None:
            _typed(tracking_uri, str, f"{path}: tracking_uri", "a string")
        artifacts = data.get("artifacts") or {}
        _typed(artifacts, dict, f"{path}: artifacts", "a mapping")
        _check_keys(artifacts, _KEYS["artifacts"], f"{path}: artifacts")
        where = f"{path}: artifacts"
        enabled = _typed(artifacts.get("enabled", True), bool, f"{where}.enabled", "true/false")
        retries = _typed(artifacts.get("max_retries", 5), int, f"{where}.max_retries", "an int")
        delay = _typed(
            artifacts.get("base_delay", 2.0), (int, float), f"{where}.base_delay", "a number"
        )
        if retries < 0 or delay < 0:
            raise UploadError(f"pytest-ckpts: {where}: max_retries and base_delay must be >= 0")
        stages_raw = data.get("stages") or {}
        _typed(stages_raw, dict, f"{path}: stages", "a mapping")
        stages: dict[str, dict[str, Any]] = {}
        for name, settings in stages_raw.items():
            if name not in STAGES:
                raise UploadError(
                    f"pytest-ckpts: {path}: stages: unknown stage {name!r} "
                    f"(known: {', '.join(STAGES)})"
                )
            settings = settings or {}
            swhere = f"{path}: stages.{name}"
            _typed(settings, dict, swhere, "a mapping")
            _check_keys(settings, _KEYS["stage"], swhere)
            if "enabled" in settings:
                _typed(settings["enabled"], bool, f"{swhere}.enabled", "true/false")
            if "artifact_path" in settings:
                _typed(settings["artifact_path"], str, f"{swhere}.artifact_path", "a string")
            stages[name] = dict(settings)
        return cls(
            tracking_uri=tracking_uri or None,
            enabled=enabled,
            max_retries=retries,
            base_delay=float(delay),
            stages=stages,
            source=path,
        )

    def stage_enabled(self, stage: str | None) -> bool:
        """Whether ``stage`` may upload (no stage: only the global switch applies)."""
        if stage is None:
            return True
        return bool(self.stages.get(stage, {}).get("enabled", True))

    def stage_path(self, stage: str | None) -> str | None:
        """The configured artifact path of ``stage``, else its default, else None."""
        if stage is None:
            return None
        configured = self.stages.get(stage, {}).get("artifact_path")
        return str(configured) if configured else STAGE_ARTIFACT_PATHS.get(stage)


# --------------------------------------------------------------------------- errors


def _status(exc: BaseException) -> int | None:
    """The HTTP status behind an exception from mlflow/requests, if any.

    Artifact PUTs fail with a ``requests.HTTPError`` carrying the response; REST calls
    (the ``runs/get`` that precedes an upload) fail with an ``MlflowException`` whose
    error code maps to a status. A status that urllib3's retry policy handled (mlflow
    lists 429 and 5xx) arrives only as the text of a ``MaxRetryError``.
    """
    seen: BaseException | None = exc
    while seen is not None:
        code = getattr(getattr(seen, "response", None), "status_code", None)
        if isinstance(code, int):
            return code
        found = _URLLIB3_STATUS.search(str(seen))
        if found:
            return int(found.group(1))
        seen = seen.__cause__ or seen.__context__
    return None


def _is_transport_error(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (ConnectionError, TimeoutError)):
            return True
        if type(seen).__name__ in _TRANSPORT_ERRORS:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _transient(exc: BaseException) -> bool:
    """Connection problems, 5xx and 429 are worth retrying; other 4xx are not."""
    status = _status(exc)
    if status is not None:
        return status >= 500 or status == 429
    if _is_transport_error(exc):
        return True
    get_code = getattr(exc, "get_http_status_code", None)  # MlflowException
    if callable(get_code):
        code = get_code()
        return isinstance(code, int) and (code >= 500 or code == 429)
    return False


@contextmanager
def _no_mlflow_http_retries() -> Iterator[None]:
    """We own the retry policy; mlflow's own retries would multiply it (6 x 8 attempts).

    mlflow reads ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` per request, so the override only
    lasts for our call (it is process-wide while it lasts: see Known limitations).
    """
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


# --------------------------------------------------------------------------- uploader


class ArtifactUploader:
    """Uploads files and checkpoint archives to one MLflow run, for one pipeline stage.

    ``run_id`` defaults to :func:`get_mlflow_run_id` at upload time; ``stage`` (one of
    :data:`STAGES`) selects the default artifact path and the stage switch in
    ``<config_dir>/mlflow.yaml``, which is read lazily, on first use.

    Keyword-only knobs, each overriding the config file: ``tracking_uri``,
    ``max_retries`` and ``base_delay``. ``sleep`` (also the attribute ``.sleep``) is
    what waits between attempts; tests pass a recorder so they need not wait.
    ``attempts`` counts the requests made by the last upload.
    """

    def __init__(
        self,
        run_id: str | None = None,
        stage: str | None = None,
        config_dir: str | os.PathLike[str] | None = None,
        *,
        tracking_uri: str | None = None,
        max_retries: int | None = None,
        base_delay: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if stage is not None and stage not in STAGES:
            raise ValueError(f"pytest-ckpts: unknown stage {stage!r} (known: {', '.join(STAGES)})")
        if (max_retries is not None and max_retries < 0) or (
            base_delay is not None and base_delay < 0
        ):
            raise ValueError("pytest-ckpts: max_retries and base_delay must be >= 0")
        self._run_id = run_id or None
        self.stage = stage
        self.config_dir = config_dir
        self._tracking_uri = tracking_uri or None
        self._max_retries = max_retries
        self._base_delay = base_delay
        self._config: UploadConfig | None = None
        self.sleep = sleep
        self.attempts = 0

    @property
    def config(self) -> UploadConfig:
        """The stage config, read (and validated) on first use."""
        if self._config is None:
            self._config = UploadConfig.load(self.config_dir)
        return self._config

    @property
    def max_retries(self) -> int:
        return self.config.max_retries if self._max_retries is None else self._max_retries

    @property
    def base_delay(self) -> float:
        return self.config.base_delay if self._base_delay is None else self._base_delay

    def _get_tracking_config(self) -> dict[str, Any]:
        """The effective settings, in the shape seed 001's uploader exposed them."""
        c = self.config
        return {
            "tracking_uri": self.tracking_uri,
            "enabled": c.enabled,
            "stage_enabled": c.stage_enabled(self.stage),
            "artifact_path": c.stage_path(self.stage),
            "max_retries": self.max_retries,
            "base_delay": self.base_delay,
        }

    @property
    def run_id(self) -> str | None:
        """The target run: the one given, else the active run, else ``MLFLOW_RUN_ID``."""
        return self._run_id or get_mlflow_run_id()

    @property
    def tracking_uri(self) -> str | None:
        """Where the run lives (see the module docstring for the order); None = MLflow's default."""
        if self._tracking_uri:
            return self._tracking_uri
        active = _active_run_id()
        if active is not None and self.run_id == active:
            return str(sys.modules["mlflow"].get_tracking_uri())
        return _env("MLFLOW_TRACKING_URI") or self.config.tracking_uri

    def skip_reason(self) -> str | None:
        """Why nothing would be uploaded now, or None."""
        if (_env(SKIP_ENV) or "").strip().lower() in _TRUE:
            return f"{SKIP_ENV} is set: not uploading artifacts"
        if not self.config.enabled:
            return f"artifact uploads are disabled (artifacts.enabled) in {self.config.source}"
        if not self.config.stage_enabled(self.stage):
            return (
                f"artifact uploads for stage '{self.stage}' are disabled "
                f"(stages.{self.stage}.enabled) in {self.config.source}"
            )
        if self.run_id is None:
            return "no active MLflow run and MLFLOW_RUN_ID is not set: not uploading artifacts"
        return None

    def _should_skip(self, skip_if_disabled: bool = True) -> bool:
        reason = self.skip_reason()
        if reason is None:
            return False
        if not skip_if_disabled:
            raise UploadError(f"pytest-ckpts: {reason}")
        _say_once(reason)
        return True

    # ------------------------------------------------------------------ uploads
    def upload_file(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> bool:
        """Upload one file; ``artifact_path`` is its path in the run (default: its name).

        An ``artifact_path`` ending in ``/`` is a directory: the file keeps its name in it.
        Returns False, uploading nothing, when uploads are off (see :meth:`skip_reason`).
        """
        if self._should_skip():
            return False
        local = Path(path)
        if not local.is_file():
            raise UploadError(f"pytest-ckpts: {local} does not exist or is not a file")
        if artifact_path and artifact_path.endswith("/"):
            artifact_path += local.name
        target = PurePosixPath(artifact_path or local.name)
        if target.name != local.name:  # MLflow names the artifact after the local file
            with tempfile.TemporaryDirectory(prefix="pytest-ckpts-upload-") as tmp:
                staged = Path(tmp) / target.name
                try:
                    os.link(local, staged)  # free for big files; same file system only
                except OSError:
                    shutil.copyfile(local, staged)
                self._log_artifact(staged, target.parent)
        else:
            self._log_artifact(local, target.parent)
        return True

    def upload_checkpoint(
        self,
        checkpoint_dir: str | os.PathLike[str],
        artifact_path: str | None = None,
        trial_number: int | None = None,
        skip_if_disabled: bool = True,
    ) -> bool:
        """Upload ``checkpoint_dir`` as exactly one ``.tar.gz`` archive with a manifest.

        ``artifact_path`` defaults to the stage's path (``checkpoint.tar.gz`` for
        training, ``best_trial_checkpoint.tar.gz`` for hpo, ``benchmark_checkpoint.tar.gz``
        for benchmark); ``.tar.gz`` is appended when missing. The archive is built in a
        temp dir before any request and removed afterwards; if building it fails, this
        raises ``ArchiveError`` and nothing is uploaded. Returns False (saying why, once)
        when uploads are off, unless ``skip_if_disabled=False``, which raises instead.
        """
        if self._should_skip(skip_if_disabled):
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
        """Deprecated (seed 001): upload an archive built elsewhere.

        Use :meth:`upload_checkpoint`, which builds a deterministic, verified archive
        itself. A ``manifest`` given here is uploaded beside the archive as
        ``<artifact_path>.manifest.json``, as the seed's helper did.
        """
        warnings.warn(
            "ArtifactUploader.upload_checkpoint_archive() is deprecated: pass the checkpoint "
            "directory to upload_checkpoint(), which builds a verified archive itself",
            DeprecationWarning,
            stacklevel=2,
        )
        uploaded = self.upload_file(archive_path, artifact_path)
        if uploaded and manifest is not None:
            target = PurePosixPath(artifact_path)
            with tempfile.TemporaryDirectory(prefix="pytest-ckpts-upload-") as tmp:
                mpath = Path(tmp) / (target.name + ".manifest.json")
                mpath.write_text(json.dumps(dict(manifest), indent=2, sort_keys=True), "utf-8")
                self._log_artifact(mpath, target.parent)
        return uploaded

    # ------------------------------------------------------------------ transport
    def _log_artifact(self, local: Path, directory: PurePosixPath) -> None:
        run_id = self.run_id
        if run_id is None:  # skip_reason() was checked just before; defensive
            raise UploadError("pytest-ckpts: no MLflow run to upload to")
        tracking = require("mlflow.tracking", "uploading artifacts")
        client = tracking.MlflowClient(tracking_uri=self.tracking_uri)
        dest = None if str(directory) in ("", ".") else str(directory)

        def call() -> None:
            client.log_artifact(run_id, str(local), artifact_path=dest)

        shown = f"{dest}/{local.name}" if dest else local.name
        self._with_retries(call, what=f"{shown} to run {run_id}")

    def _with_retries(self, fn: Callable[[], T], *, what: str) -> T:
        """Call ``fn``; retry transient failures with exponential backoff and full jitter.

        Attempt ``k`` (0-based) that fails transiently waits ``uniform(0, base_delay *
        2**k)``: full jitter spreads the retries of many workers hitting one server.
        """
        retries, base = self.max_retries, self.base_delay
        self.attempts = 0
        with _no_mlflow_http_retries():
            for attempt in range(retries + 1):
                self.attempts += 1
                try:
                    return fn()
                except Exception as exc:
                    status = _status(exc)
                    if not _transient(exc):
                        hint = (
                            " - the server refused the request itself (credentials, "
                            "permissions, run id or artifact path), so it is not retried"
                            if status is not None and 400 <= status < 500
                            else " (not retried)"
                        )
                        raise UploadError(
                            f"pytest-ckpts: uploading {what} failed"
                            f"{f' with HTTP {status}' if status else ''}{hint}: {exc}"
                        ) from exc
                    if attempt == retries:
                        raise UploadError(
                            f"pytest-ckpts: uploading {what} failed after "
                            f"{self.attempts} attempts"
                            f"{f' (last: HTTP {status})' if status else ''}: {exc}"
                        ) from exc
                    delay = random.uniform(0, base * 2**attempt)
                    logger.warning(
                        "pytest-ckpts: upload of %s failed (%s); retry %d/%d in %.1fs",
                        what,
                        f"HTTP {status}" if status else type(exc).__name__,
                        attempt + 1,
                        retries,
                        delay,
                    )
                    self.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover


# --------------------------------------------------------------------------- stage helpers


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
    the archive says which trial it came from (seed 000).
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
