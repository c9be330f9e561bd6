"""The stage-aware upload settings: ``<config_dir>/mlflow.yaml``, read and validated.

Every key is optional and unknown keys are errors: a typo such as ``artifact:`` must not
silently leave uploads on (docs/uploads.md, "Configuration").
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UploadError

#: The pipeline stages uploads know; a stage name outside them is a typo.
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
_KEYS = {
    "": ("tracking_uri", "artifacts", "stages"),
    "artifacts": ("enabled", "max_retries", "base_delay"),
    "stage": ("enabled", "artifact_path"),
}


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


def _stage_settings(path: Path, stages_raw: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    stages: dict[str, dict[str, Any]] = {}
    for name, settings in stages_raw.items():
        if name not in STAGES:
            raise UploadError(
                f"pytest-ckpts: {path}: stages: unknown stage {name!r} (known: {', '.join(STAGES)})"
            )
        settings = settings or {}
        where = f"{path}: stages.{name}"
        _typed(settings, dict, where, "a mapping")
        _check_keys(settings, _KEYS["stage"], where)
        if "enabled" in settings:
            _typed(settings["enabled"], bool, f"{where}.enabled", "true/false")
        if "artifact_path" in settings:
            _typed(settings["artifact_path"], str, f"{where}.artifact_path", "a string")
        stages[name] = dict(settings)
    return stages


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
        return cls(
            tracking_uri=tracking_uri or None,
            enabled=enabled,
            max_retries=retries,
            base_delay=float(delay),
            stages=_stage_settings(path, stages_raw),
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
