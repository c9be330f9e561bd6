"""Library API, ported from seed 004's T035 tests onto real files and a real hub.

These tests call the library inside this suite's own pytest run, through the public
path only: each sets the environment a script would see (``PYTEST_CKPTS_MANIFEST``,
``SKIP_CHECKPOINT_DOWNLOAD``, ...), and a call resolves its settings when it is made, so
it behaves as outside pytest (docs/how-to/writing-tests.md "The library API")."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from pytest_ckpts import (
    CheckpointDownloadError,
    CheckpointSkipped,
    calculate_sha256,
    get_checkpoint,
    resolve_checkpoint,
    verify_checksum,
)
from pytest_ckpts.testing import LocalHub
from tests.helpers import dead_endpoint, make_manifest

DATA = b"\x00seed-004 checkpoint bytes" * 1000


@pytest.fixture
def manifest_env(project: Path, hub: LocalHub, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = make_manifest(project, hub, {"test_ckpt": DATA})
    monkeypatch.setenv("PYTEST_CKPTS_MANIFEST", str(path))
    return path


def test_skip_checkpoint_download_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKIP_CHECKPOINT_DOWNLOAD", "true")
    with pytest.raises(CheckpointSkipped, match="Checkpoint download skipped"):
        get_checkpoint("test_ckpt")


@pytest.mark.usefixtures("manifest_env")
def test_checkpoint_not_found() -> None:
    with pytest.raises(KeyError, match="not found in config") as info:
        get_checkpoint("test_ckpx")
    assert "'test_ckpt'" in str(info.value)  # suggestion


def test_successful_download(manifest_env: Path, project: Path) -> None:
    result = get_checkpoint("test_ckpt")
    assert isinstance(result, Path)
    assert result.read_bytes() == DATA
    assert result.is_relative_to(project / "checkpoints")
    assert result.name == "test_ckpt.ckpt"


def test_force_download_fetches_again(manifest_env: Path, hub: LocalHub) -> None:
    get_checkpoint("test_ckpt")
    hub.stats.reset()
    get_checkpoint("test_ckpt")
    assert hub.stats.bodies_served == 0
    assert get_checkpoint("test_ckpt", force_download=True).read_bytes() == DATA
    assert hub.stats.bodies_served == 1


def test_cache_dir_env_override(
    manifest_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_CKPTS_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert get_checkpoint("test_ckpt").is_relative_to(tmp_path / "elsewhere")


def test_offline_mode_env(manifest_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_CKPTS_MODE", "offline")
    with pytest.raises(CheckpointSkipped, match="not cached"):
        get_checkpoint("test_ckpt")


def test_hub_failure_is_a_runtime_error(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = make_manifest(project, None, {"test_ckpt": DATA}, endpoint=dead_endpoint())
    monkeypatch.setenv("PYTEST_CKPTS_MANIFEST", str(path))
    with pytest.raises(RuntimeError) as info:
        get_checkpoint("test_ckpt")
    assert isinstance(info.value, CheckpointDownloadError)


def test_resolve_checkpoint_returns_checkpoint(manifest_env: Path) -> None:
    ckpt = resolve_checkpoint("test_ckpt")
    assert ckpt.name == "test_ckpt"
    assert ckpt.description == "test checkpoint test_ckpt"
    assert ckpt.sha256 == hashlib.sha256(DATA).hexdigest()


def test_checksum_verification(tmp_path: Path) -> None:
    test_file = tmp_path / "test.txt"
    test_file.write_text("hello world")
    actual_checksum = calculate_sha256(test_file)
    assert actual_checksum == hashlib.sha256(b"hello world").hexdigest()
    assert verify_checksum(test_file, actual_checksum) is True
    with pytest.raises(ValueError, match="Checksum mismatch"):
        verify_checksum(test_file, "invalid_checksum")
