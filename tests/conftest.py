"""Shared test setup: isolate every test from the developer's machine and the internet.

huggingface_hub reads ``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` and telemetry switches at
import time, so they are set here, before any test module imports it.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pytest_ckpts.settings import ENV_VARS

if TYPE_CHECKING:
    from pytest_ckpts.testing import LocalHub
    from tests.helpers import Mounts

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
    # pytester runs (in process and subprocess) leave out plugins the suite never uses:
    # a pytest start costs 2 s less each (tests/helpers.py unused_plugins)
    from tests.helpers import unused_plugins

    monkeypatch.setenv("PYTEST_ADDOPTS", " ".join(unused_plugins()))
    return


@pytest.fixture(params=["inprocess", "subprocess"])
def run(
    request: pytest.FixtureRequest, pytester: pytest.Pytester
) -> Callable[..., pytest.RunResult]:
    """Run the pytester suite in this process and in a subprocess (the real entry point).

    ``run(*args)`` adds ``-p no:cacheprovider -p no:randomly -rs`` (a fixed order, skip
    reasons shown); a subprocess run has a 120 s timeout.
    """

    def runner(*args: str) -> pytest.RunResult:
        base = ("-p", "no:cacheprovider", "-p", "no:randomly", "-rs", *args)
        if request.param == "subprocess":
            return pytester.runpytest_subprocess(*base, timeout=120)
        return pytester.runpytest(*base)

    return runner


@pytest.fixture(params=[pytest.param([], id="plain"), pytest.param(["-n", "2"], id="xdist")])
def plugin_args(request: pytest.FixtureRequest) -> list[str]:
    """Arguments for a pytester run, once without and once with ``-n 2`` (pytest-xdist).

    For behaviour that may differ under xdist (mode decisions, skips and failures,
    reports, prefetch, junit properties, stale copies):
    ``pytester.runpytest(*plugin_args, ...)``. The xdist run is skipped without xdist.
    """
    if request.param:
        pytest.importorskip("xdist")
    return list(request.param)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """An empty project root (holds ``checkpoints/``) inside tmp_path."""
    root = tmp_path / "project"
    (root / "checkpoints").mkdir(parents=True)
    return root


# --------------------------------------------------------------------------- local hub


@pytest.fixture
def hub() -> Iterator[LocalHub]:
    """A fresh local hub on 127.0.0.1 for one test."""
    from pytest_ckpts.testing import LocalHub

    with LocalHub() as h:
        yield h


# --------------------------------------------------------------------------- uploads


@pytest.fixture
def ckpt_dir(tmp_path: Path) -> Path:
    """A checkpoint directory to upload: ``model/weights.pt`` (50 kB, random) and ``config.json``."""
    d = tmp_path / "checkpoint"
    (d / "model").mkdir(parents=True)
    (d / "model" / "weights.pt").write_bytes(os.urandom(50_000))
    (d / "config.json").write_text('{"lr": 0.001}')
    return d


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own temp dir, so leftovers are ours (xdist workers share /tmp)."""
    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


# --------------------------------------------------------------------------- mounts


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[Mounts]:
    """Real read-only bind mounts and small tmpfs mounts; skips where mounting is not allowed."""
    from tests.helpers import Mounts

    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("no mount/umount command: read-only and full-disk caches need real mounts")
    probe = tmp_path / "mount-probe"
    probe.mkdir()
    helper = Mounts()
    try:
        helper.tmpfs(probe, "64k")
    except subprocess.CalledProcessError as exc:
        pytest.skip(
            "mounting is not permitted here (needs root or CAP_SYS_ADMIN): "
            f"{(exc.stderr or '').strip() or exc}"
        )
    helper.unmount_all()
    try:
        yield helper
    finally:
        helper.unmount_all()
