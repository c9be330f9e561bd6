"""Shared test setup: isolate every test from the developer's machine and the internet.

huggingface_hub reads ``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` and telemetry switches at
import time, so they are set here, before any test module imports it.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pytest_ckpts.settings import ENV_VARS

if TYPE_CHECKING:
    from pytest_ckpts.testing import LocalHub

# Set before huggingface_hub can be imported by anything in this process.
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
# An endpoint nobody listens on: a test that forgets to pass the local hub's
# endpoint fails fast instead of reaching the public hub.
os.environ["HF_ENDPOINT"] = "http://127.0.0.1:9"

#: Every variable the settings table reads (pytest_ckpts/settings.py TABLE), plus the
#: tokens and the MLflow/archive variables other parts read.
_SCRUB = (
    *ENV_VARS,
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_RUN_ID",
    "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_EXPERIMENT_ID",
    "MLFLOW_SKIP_ARTIFACT_LOGGING",
    "SOURCE_DATE_EPOCH",
)


# Modules that cannot be imported twice in one process. pytester removes from
# sys.modules whatever a test or an in-process pytest run imported first, so the next
# import runs their initialisation again: numpy refuses ("cannot load module more than
# once"), torch re-registers native operators (torch.optim imports torch._dynamo on first
# use, which registers the ``_inductor_test`` TORCH_LIBRARY: "Only a single TORCH_LIBRARY
# can be used"), hf_xet panics. Imported before pytester takes its snapshot, they stay.
_NOT_REIMPORTABLE = ("numpy", "torch", "torch._dynamo", "safetensors.torch", "hf_xet")
_preloaded = False


@pytest.fixture(autouse=True)
def _keep_native_modules(request: pytest.FixtureRequest) -> None:
    """Import the installed ``_NOT_REIMPORTABLE`` modules before a test's pytester exists.

    Autouse fixtures are set up before the fixtures a test requests, so this runs before
    pytester snapshots sys.modules; the results of the suite then do not depend on which
    test happened to import torch first. Tests without pytester do not pay for it.
    """
    global _preloaded
    if _preloaded or "pytester" not in request.fixturenames:
        return
    for name in _NOT_REIMPORTABLE:
        if importlib.util.find_spec(name.partition(".")[0]) is not None:
            importlib.import_module(name)
    _preloaded = True


@pytest.fixture(autouse=True)
def _isolated_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """No test sees the caller's tokens, modes or caches; HF_HOME lives under tmp.

    One HF_HOME per test: a manifest without ``cache_dir`` uses huggingface_hub's cache
    (HF_HUB_CACHE), so neither the suite nor its pytester runs write to
    ~/.cache/huggingface, and no test sees another's downloads.
    """
    for name in _SCRUB:
        monkeypatch.delenv(name, raising=False)
    hf_home = tmp_path_factory.mktemp("hf_home")
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_home / "hub"))
    return


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """An empty project root (holds ``checkpoints/``) inside tmp_path."""
    root = tmp_path / "project"
    (root / "checkpoints").mkdir(parents=True)
    return root


# --------------------------------------------------------------------------- local hub

REPO = "acme/ckpts"


@pytest.fixture
def hub() -> Iterator[LocalHub]:
    """A fresh local hub on 127.0.0.1 for one test."""
    from pytest_ckpts.testing import LocalHub

    with LocalHub() as h:
        yield h


def make_manifest(
    root: Path,
    hub: LocalHub | None,
    files: dict[str, bytes],
    *,
    pinned: bool = False,
    sha: dict[str, str | None] | None = None,
    endpoint: str | None = None,
    extra_config: str = "",
) -> Path:
    """Publish ``files`` (name -> bytes) on ``hub`` and write a manifest naming them.

    Each checkpoint ``name`` lives at ``weights/<name>.ckpt`` in ``REPO``. ``sha``
    overrides the recorded sha256 per name (None = placeholder).
    """
    import hashlib

    commit = None
    if hub is not None and files:
        commit = hub.add_files(REPO, {f"weights/{n}.ckpt": data for n, data in files.items()})
    lines = ["checkpoints:"]
    for name, data in files.items():
        digest = hashlib.sha256(data).hexdigest()
        if sha is not None and name in sha:
            digest = sha[name] or "<to_be_calculated>"
        if digest != "<to_be_calculated>":
            digest = f'"{digest}"'
        lines += [
            f"  {name}:",
            f"    filename: {name}.ckpt",
            f"    hf_path: weights/{name}.ckpt",
            f"    sha256: {digest}",
            f'    description: "test checkpoint {name}"',
        ]
    if not files:
        lines[0] = "checkpoints: {}"
    lines += ["config:", f"  hf_repo: {REPO}", '  cache_dir: "./checkpoints"']
    ep = endpoint or (hub.endpoint if hub is not None else None)
    if ep:
        lines.append(f"  endpoint: {ep}")
    if pinned and commit:
        lines.append(f'  revision: "{commit}"')
    if extra_config:
        lines.append(extra_config)
    path = root / "checkpoints" / "checkpoints.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def dead_endpoint() -> str:
    """An http endpoint on 127.0.0.1 where nothing listens (connection refused)."""
    from pytest_ckpts.testing import LocalHub

    return LocalHub.dead_endpoint()
