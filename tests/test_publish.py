"""`pytest-ckpts lock` and `pytest-ckpts upload`, end to end through the local hub."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from pytest_ckpts import load_manifest
from pytest_ckpts.testing import LocalHub
from tests.helpers import REPO, cli

VAE = os.urandom(50_000)
LDM = os.urandom(70_000)

MANIFEST = """\
# our checkpoints
checkpoints:
  vae:   # the small one
    hf_path: weights/vae.ckpt
    sha256: <to_be_calculated>   # filled by lock
    description: "VAE"

  ldm:
    hf_path: 'weights/ldm.ckpt'
config:
  hf_repo: {repo}
  endpoint: {endpoint}
"""


@pytest.fixture
def manifest(project: Path, hub: LocalHub, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(project)
    path = project / "checkpoints" / "checkpoints.yaml"
    path.write_text(MANIFEST.format(repo=REPO, endpoint=hub.endpoint))
    return path


def test_lock_fills_values_in_place(manifest: Path, hub: LocalHub) -> None:
    commit = hub.add_files(REPO, {"weights/vae.ckpt": VAE, "weights/ldm.ckpt": LDM})
    before = manifest.read_text()
    code, out = cli("lock", "--check")
    assert code == 1
    assert "would set vae: sha256" in out
    assert manifest.read_text() == before  # --check changes nothing
    code, out = cli("lock")
    assert code == 0, out
    vae_sha, ldm_sha = (hashlib.sha256(d).hexdigest() for d in (VAE, LDM))
    expected = before.replace(
        "sha256: <to_be_calculated>   # filled by lock", f"sha256: {vae_sha}   # filled by lock"
    ).replace(
        "    hf_path: 'weights/ldm.ckpt'\n",
        f"    hf_path: 'weights/ldm.ckpt'\n    sha256: \"{ldm_sha}\"\n",
    )
    assert manifest.read_text() == expected
    assert cli("lock", "--check")[0] == 0
    code, out = cli("lock", "--pin")
    assert code == 0
    assert f'revision: "{commit}"' in manifest.read_text()
    assert load_manifest(manifest).get("vae").pinned
    assert cli("lock", "--check", "--pin")[0] == 0


def test_lock_from_local_files_needs_no_hub(manifest: Path, project: Path) -> None:
    src = project / "ckpts"
    (src / "weights").mkdir(parents=True)
    (src / "weights" / "vae.ckpt").write_bytes(VAE)
    (src / "weights" / "ldm.ckpt").write_bytes(LDM)
    code, _ = cli("lock", "--from", str(src))
    assert code == 0
    m = load_manifest(manifest)
    assert m.get("vae").sha256 == hashlib.sha256(VAE).hexdigest()
    assert m.get("ldm").sha256 == hashlib.sha256(LDM).hexdigest()


def test_upload_then_fetch_round_trip(
    manifest: Path, project: Path, hub: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.create_repo(REPO)
    src = project / "ckpts"
    (src / "weights").mkdir(parents=True)
    (src / "weights" / "vae.ckpt").write_bytes(VAE)
    (src / "weights" / "ldm.ckpt").write_bytes(LDM)
    monkeypatch.setenv("HF_TOKEN", "hf_writer")
    monkeypatch.setenv("PYTEST_CKPTS_TRUST_MANIFEST_ENDPOINT", "1")  # the manifest names the hub
    code, out = cli("upload", "--from", str(src), "--pin")
    assert code == 0, out
    assert "uploaded vae" in out
    assert "uploaded ldm" in out
    assert hub.file_bytes(REPO, "weights/ldm.ckpt") == LDM
    m = load_manifest(manifest)
    assert m.get("vae").sha256 == hashlib.sha256(VAE).hexdigest()
    assert m.get("vae").revision == hub.commit_sha(REPO)
    assert "# filled by lock" in manifest.read_text()  # comments survive
    code, out = cli("fetch", "-q")
    assert code == 0, out
    assert cli("verify")[0] == 0


def test_upload_without_token_exits_2_naming_the_fix(
    manifest: Path, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli("upload", "--from", str(project))[0] == 2
    assert "set HF_TOKEN or run `hf auth login`" in capsys.readouterr().err


def test_token_is_not_sent_to_a_manifest_endpoint_unless_trusted(
    manifest: Path,
    project: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A pull request that edits config.endpoint must not collect the CI's HF_TOKEN."""
    monkeypatch.setenv("HF_TOKEN", "hf_ci_secret")
    (project / "weights").mkdir()
    (project / "weights" / "vae.ckpt").write_bytes(VAE)
    assert cli("upload", "vae", "--from", str(project))[0] == 2
    err = capsys.readouterr().err
    assert "PYTEST_CKPTS_TRUST_MANIFEST_ENDPOINT" in err
    assert "hf_ci_secret" not in err


def test_upload_missing_local_file_and_missing_repo(
    manifest: Path,
    project: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    monkeypatch.setenv("PYTEST_CKPTS_TRUST_MANIFEST_ENDPOINT", "1")
    assert cli("upload", "vae", "--from", str(project))[0] == 2
    assert "weights/vae.ckpt" in capsys.readouterr().err
    (project / "weights").mkdir()
    (project / "weights" / "vae.ckpt").write_bytes(VAE)
    assert cli("upload", "vae", "--from", str(project))[0] == 2  # repo never created
    err = capsys.readouterr().err
    assert f"repo '{REPO}'" in err
    assert "not found" in err
    assert "hf_secret_value" not in err
