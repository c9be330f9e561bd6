"""The ``pytest-ckpts`` command line against the local hub."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_ckpts.cli import main
from pytest_ckpts.testing import LocalHub
from tests.helpers import cli, make_manifest

FILES = {"vae": os.urandom(40_000) + b"vae", "ldm": os.urandom(30_000) + b"ldm"}


@pytest.fixture
def manifest(project: Path, hub: LocalHub, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(project)
    return make_manifest(project, hub, FILES)


def test_list_fetch_verify_round_trip(manifest: Path, hub: LocalHub) -> None:
    code, out = cli("list")
    assert code == 0
    assert "vae" in out
    assert "no" in out
    assert "test checkpoint vae" in out
    code, out = cli("fetch", "-q")
    assert code == 0, out
    assert out.count("downloaded") == 2
    assert hub.stats.bodies_served == 2
    code, out = cli("list")
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:3]}
    assert rows["vae"][3:5] == ["yes", "yes"]  # cached, verified
    code, out = cli("verify")
    assert code == 0
    assert f"ok          vae: sha256 {hashlib.sha256(FILES['vae']).hexdigest()}" in out
    code, out = cli("fetch", "vae", "-q")
    assert code == 0
    assert "cached" in out


def test_verify_exits_1_on_flipped_byte(manifest: Path) -> None:
    assert cli("fetch", "-q")[0] == 0
    blob = next((manifest.parent / "hub" / "models--acme--ckpts" / "blobs").iterdir())
    data = bytearray(blob.read_bytes())
    data[10] ^= 0xFF
    blob.write_bytes(bytes(data))
    code, out = cli("verify")
    assert code == 1
    assert "MISMATCH" in out
    # fetch repairs it (a corrupted cached copy is downloaded again once)
    assert cli("fetch", "-q")[0] == 0
    assert cli("verify")[0] == 0


def test_verify_named_but_not_cached_fails(manifest: Path) -> None:
    code, out = cli("verify", "vae")
    assert code == 1
    assert "not cached" in out


def test_unknown_name_and_bad_manifest_exit_2(
    manifest: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli("fetch", "vea")[0] == 2
    assert "Did you mean: 'vae'" in capsys.readouterr().err
    manifest.write_text("checkpoints: [\n")
    assert cli("list")[0] == 2
    assert "YAML syntax error" in capsys.readouterr().err


def test_usage_error_exit_2() -> None:
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2


def test_cache_info_and_prune(manifest: Path) -> None:
    assert cli("fetch", "-q")[0] == 0
    code, out = cli("cache", "info")
    assert code == 0
    assert "2/2 manifest entries cached" in out
    # drop 'ldm' from the manifest: prune removes its file, keeps vae's
    text = manifest.read_text()
    manifest.write_text(text[: text.index("  ldm:")] + text[text.index("config:") :])
    code, out = cli("cache", "prune", "--dry-run")
    assert "would remove" in out
    blobs_dir = manifest.parent / "hub" / "models--acme--ckpts" / "blobs"
    assert len(list(blobs_dir.iterdir())) == 2  # a dry run removes nothing
    assert "1/1 manifest entries cached" in cli("cache", "info")[1]
    code, out = cli("cache", "prune")
    assert code == 0
    assert "removed" in out
    blobs = list((manifest.parent / "hub" / "models--acme--ckpts" / "blobs").iterdir())
    assert [b.name for b in blobs] == [hashlib.sha256(FILES["vae"]).hexdigest()]
    assert manifest.is_file()  # the manifest next to the cache is never touched
    assert cli("verify")[0] == 0


def test_console_script_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pytest_ckpts.cli", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0
    for word in ("list", "fetch", "verify", "lock", "upload", "cache", "Exit codes"):
        assert word in out.stdout
