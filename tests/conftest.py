"""Shared test setup: isolate every test from the developer's machine and the internet.

huggingface_hub reads ``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` and telemetry switches at
import time, so they are set here, before any test module imports it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# Set before huggingface_hub can be imported by anything in this process.
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
# An endpoint nobody listens on: a test that forgets to pass the local hub's
# endpoint fails fast instead of reaching the public hub.
os.environ["HF_ENDPOINT"] = "http://127.0.0.1:9"

_SCRUB = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_HUB_OFFLINE",
    "PYTEST_CKPTS_MANIFEST",
    "PYTEST_CKPTS_MODE",
    "PYTEST_CKPTS_CACHE_DIR",
    "SKIP_CHECKPOINT_DOWNLOAD",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_RUN_ID",
    "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_EXPERIMENT_ID",
    "MLFLOW_SKIP_ARTIFACT_LOGGING",
    "SOURCE_DATE_EPOCH",
)


@pytest.fixture(autouse=True)
def _isolated_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """No test sees the caller's tokens, modes or caches; HF_HOME lives under tmp."""
    for name in _SCRUB:
        monkeypatch.delenv(name, raising=False)
    hf_home = tmp_path_factory.getbasetemp() / "hf_home"
    hf_home.mkdir(exist_ok=True)
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_home / "hub"))
    yield


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """An empty project root (holds ``checkpoints/``) inside tmp_path."""
    root = tmp_path / "project"
    (root / "checkpoints").mkdir(parents=True)
    return root
