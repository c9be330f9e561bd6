"""``ArtifactUploader``: one class for every stage's uploads, and the run-id lookup.

Each checkpoint directory becomes exactly one archive (``pytest_ckpts.archive``), built
in a private scratch directory (``_scratch``) before any request and uploaded in one
call (``_transport``), retried as a whole (``_retry``). The local checkpoint is only
ever read. The order of the tracking URI and the switches that turn uploads off are in
the package docstring and docs/uploads.md.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from ..archive import create_archive
from ..errors import UploadArgumentError, UploadError
from ..settings import env_true, env_value
from ._config import STAGES, UploadConfig
from ._retry import call_with_retries
from ._scratch import scratch_dir
from ._transport import RunArtifacts

logger = logging.getLogger("pytest_ckpts.uploads")

SKIP_ENV = "MLFLOW_SKIP_ARTIFACT_LOGGING"


@functools.cache
def _say_once(reason: str) -> None:
    """Log why nothing was uploaded, once per process per reason (not once per call).

    "Why nothing was uploaded" is worth one warning per process, not one per checkpoint
    of a 200-trial sweep; the memory is this function's cache, keyed by the reason.
    """
    logger.warning("pytest-ckpts: %s", reason)


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
    return _active_run_id() or env_value("MLFLOW_RUN_ID")


class ArtifactUploader:
    """Uploads files and checkpoint archives to one MLflow run, for one pipeline stage.

    ``run_id`` defaults to :func:`get_mlflow_run_id` at upload time; ``stage`` (one of
    :data:`STAGES`) selects the default artifact path and the stage switch in
    ``<config_dir>/mlflow.yaml``, which is read lazily, on first use.

    Keyword-only knobs, each overriding the config file: ``tracking_uri``,
    ``max_retries`` and ``base_delay``. ``sleep`` (also the attribute ``.sleep``) is
    what waits between attempts; tests pass a recorder so they need not wait.
    ``attempts`` counts the attempts of the last upload (one artifact request each).
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
            raise UploadArgumentError(
                f"pytest-ckpts: unknown stage {stage!r} (known: {', '.join(STAGES)})"
            )
        if (max_retries is not None and max_retries < 0) or (
            base_delay is not None and base_delay < 0
        ):
            raise UploadArgumentError("pytest-ckpts: max_retries and base_delay must be >= 0")
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
        """The effective settings, in the shape the original uploader exposed them."""
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
        """Where the run lives (order: docs/uploads.md, "Tracking URI"); None = MLflow's default."""
        if self._tracking_uri:
            return self._tracking_uri
        active = _active_run_id()
        if active is not None and self.run_id == active:
            return str(sys.modules["mlflow"].get_tracking_uri())
        return env_value("MLFLOW_TRACKING_URI") or self.config.tracking_uri

    def skip_reason(self) -> str | None:
        """Why nothing would be uploaded now, or None."""
        if env_true(SKIP_ENV):
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
            with scratch_dir() as tmp:
                staged = tmp / target.name
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
        private scratch dir (``_scratch``) before any request and removed afterwards
        (a killed process's is removed by the next upload); if building it fails, this
        raises ``ArchiveError`` and nothing is uploaded. Returns False (saying why, once)
        when uploads are off, unless ``skip_if_disabled=False``, which raises instead.
        """
        if self._should_skip(skip_if_disabled):
            return False
        name = artifact_path or self.config.stage_path(self.stage) or "checkpoint.tar.gz"
        if not name.endswith(".tar.gz"):
            name += ".tar.gz"
        target = PurePosixPath(name)
        with scratch_dir() as tmp:
            archive = create_archive(
                checkpoint_dir, tmp / target.name, trial_number=trial_number, stage=self.stage
            )
            self._log_artifact(archive, target.parent)
        return True

    def upload_checkpoint_archive(
        self,
        archive_path: str | os.PathLike[str],
        manifest: Mapping[str, Any] | None = None,
        artifact_path: str = "best_trial_checkpoint.tar.gz",
    ) -> bool:
        """Deprecated: upload an archive built elsewhere (the original uploader's API).

        Use :meth:`upload_checkpoint`, which builds a deterministic, verified archive
        itself. A ``manifest`` given here is uploaded beside the archive as
        ``<artifact_path>.manifest.json``, as the original helper did.
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
            with scratch_dir() as tmp:
                mpath = tmp / (target.name + ".manifest.json")
                mpath.write_text(json.dumps(dict(manifest), indent=2, sort_keys=True), "utf-8")
                self._log_artifact(mpath, target.parent)
        return uploaded

    # ------------------------------------------------------------------ transport
    def _log_artifact(self, local: Path, directory: PurePosixPath) -> None:
        run_id = self.run_id
        if run_id is None:  # skip_reason() was checked just before; defensive
            raise UploadError("pytest-ckpts: no MLflow run to upload to")
        run = RunArtifacts(self.tracking_uri, run_id)
        dest = None if str(directory) in ("", ".") else str(directory)
        shown = f"{dest}/{local.name}" if dest else local.name

        def counted(n: int) -> None:
            self.attempts = n

        call_with_retries(
            lambda: run.log_artifact(local, directory),
            what=f"{shown} to run {run_id}",
            max_retries=self.max_retries,
            base_delay=self.base_delay,
            sleep=self.sleep,
            on_attempt=counted,
        )
