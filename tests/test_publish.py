"""`pytest-ckpts lock` and `pytest-ckpts upload`, end to end through the local hub."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_ckpts import load_manifest
from pytest_ckpts.cli import main
from pytest_ckpts.store import Store
from pytest_ckpts.testing import LocalHub
from tests.helpers import REPO, cli, dead_endpoint, make_manifest

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


FILES = {"vae": os.urandom(20_000) + b"vae", "ldm": os.urandom(10_000) + b"ldm"}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def here(project: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(project)
    return project


_LOCKERS = 3


def test_lock_update_replaces_a_wrong_hash(
    here: Path, hub: LocalHub, capsys: pytest.CaptureFixture[str]
) -> None:
    """A wrong sha256 could not be replaced (``lock`` only fills placeholders), and the
    mismatch message gave no way out. ``lock --update NAME`` does, and the hint says so."""
    manifest = make_manifest(here, hub, FILES, sha={"vae": "0" * 64})
    code, out = cli("fetch", "-q", "vae")
    assert code == 1
    assert "pytest-ckpts lock --update vae" in out
    with pytest.raises(SystemExit) as info:
        main(["lock", "--update"])
    assert info.value.code == 2
    assert "lock --update needs the NAMEs" in capsys.readouterr().err
    code, out = cli("lock", "--update", "vae")
    assert code == 0, out
    assert f"set vae.sha256 = {sha(FILES['vae'])}" in out
    assert "locked 1 entry" in out
    assert f'"{sha(FILES["vae"])}"' in manifest.read_text()
    assert cli("verify", "vae")[0] == 0


def test_lock_pin_with_a_commit_the_hub_lost_exits_1(here: Path, hub: LocalHub) -> None:
    """``lock --pin`` with a pinned commit the hub no longer has said "locked 0 entries"
    and exited 0."""
    manifest = make_manifest(here, hub, FILES)
    manifest.write_text(manifest.read_text() + f'  revision: "{"b" * 40}"\n')
    code, out = cli("lock", "--pin")
    assert code == 1
    assert "MISSING" in out
    assert "b" * 40 in out
    assert "locked 0" not in out


def test_lock_on_an_alias_is_one_line(
    here: Path, hub: LocalHub, capsys: pytest.CaptureFixture[str]
) -> None:
    """``sha256: *alias`` cannot be edited in place without changing the anchor's other
    users: one line naming the file (exit 2), and the manifest unchanged."""
    manifest = make_manifest(here, hub, FILES, sha={"vae": None, "ldm": None})
    text = manifest.read_text()
    text = text.replace("sha256: <to_be_calculated>", "sha256: &h <to_be_calculated>", 1)
    text = text.replace("sha256: <to_be_calculated>", "sha256: *h", 1)
    assert "&h" in text
    assert "*h" in text
    manifest.write_text(text)
    code, _out = cli("lock", "ldm")
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1, err
    assert str(manifest) in err
    assert "Traceback" not in err
    assert manifest.read_text() == text


def test_lock_keeps_symlink_and_mode(here: Path, hub: LocalHub) -> None:
    """The earlier ``lock`` wrote a new file over a symlinked manifest (the link became a
    copy, the real file stayed unlocked) with the temp file's 0600 mode."""
    manifest = make_manifest(here, hub, FILES, sha={"vae": None})
    real = here / "shared" / "checkpoints.yaml"
    real.parent.mkdir()
    manifest.rename(real)
    manifest.symlink_to(os.path.relpath(real, manifest.parent))
    real.chmod(0o640)
    source = here / "src"
    (source / "weights").mkdir(parents=True)
    (source / "weights" / "vae.ckpt").write_bytes(FILES["vae"])
    code, out = cli("lock", "--from", str(source))
    assert code == 0, out
    assert manifest.is_symlink()
    assert sha(FILES["vae"]) in real.read_text()
    assert stat.S_IMODE(real.stat().st_mode) == 0o640


@pytest.mark.slow
def test_concurrent_locks_lose_no_update(here: Path) -> None:
    """Three ``pytest-ckpts lock NAME --from DIR`` at once, on different entries: each
    read the manifest, edited its entry and wrote the file back, so the last writer
    erased the others' hashes. The edit now happens under a lock, on a fresh read."""
    names = [f"m{i}" for i in range(_LOCKERS)]
    files = {n: os.urandom(4096) + n.encode() for n in names}
    manifest = make_manifest(here, None, files, sha=dict.fromkeys(names), endpoint=dead_endpoint())
    pristine = manifest.read_text()
    source = here / "src"
    (source / "weights").mkdir(parents=True)
    for n, data in files.items():
        (source / "weights" / f"{n}.ckpt").write_bytes(data)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for _round in range(10):
        manifest.write_text(pristine)
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "pytest_ckpts.cli", "lock", n, "--from", str(source)],
                cwd=here,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for n in names
        ]
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, out + err
        locked = load_manifest(manifest)
        assert {n: locked.get(n).sha256 for n in names} == {n: sha(d) for n, d in files.items()}, (
            f"round {_round}"
        )


def test_upload_with_the_hub_down_is_one_line(
    here: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An upload to a hub that is down spent ~25 s in the upload client's retries,
    printing a line for each. Now one bounded probe decides: one line, exit 2, the
    manifest untouched."""
    manifest = make_manifest(here, None, FILES, sha={"vae": None}, endpoint=dead_endpoint())
    before = manifest.read_text()
    monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 30)
    monkeypatch.setenv("PYTEST_CKPTS_TRUST_MANIFEST_ENDPOINT", "1")
    source = here / "src"
    (source / "weights").mkdir(parents=True)
    (source / "weights" / "vae.ckpt").write_bytes(FILES["vae"])
    started = time.monotonic()
    code, out = cli("upload", "vae", "--from", str(source))
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == 2, out + err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err + out
    assert "Retrying" not in err  # the upload client's own retries were not started
    assert err.startswith("pytest-ckpts: cannot upload: ")
    assert "unreachable" in err
    assert elapsed < 15  # one bounded probe; the client's retries alone take ~25 s
    assert "x" * 30 not in err + out
    assert manifest.read_text() == before


def test_upload_then_verify(here: Path, hub: LocalHub, monkeypatch: pytest.MonkeyPatch) -> None:
    """Control for the failure above: the same upload against a live hub locks the entry."""
    manifest = make_manifest(here, hub, {"vae": b"old"}, sha={"vae": None})
    monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 30)
    monkeypatch.setenv("PYTEST_CKPTS_TRUST_MANIFEST_ENDPOINT", "1")
    source = here / "src"
    (source / "weights").mkdir(parents=True)
    (source / "weights" / "vae.ckpt").write_bytes(FILES["vae"])
    code, out = cli("upload", "vae", "--from", str(source))
    assert code == 0, out
    assert hub.file_bytes(REPO, "weights/vae.ckpt") == FILES["vae"]
    spec = load_manifest(manifest).get("vae")
    assert spec.sha256 == sha(FILES["vae"])
    assert Store(load_manifest(manifest)).resolve(spec).path.read_bytes() == FILES["vae"]


ONE = {"vae": os.urandom(300_000) + b"vae"}


def test_lock_check_says_1_entry_needs(
    project: Path, hub: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project)
    make_manifest(project, hub, ONE, sha={"vae": None})
    code, out = cli("lock", "--check")
    assert code == 1
    assert "1 entry needs `pytest-ckpts lock`" in out


def test_lock_check_json(project: Path, hub: LocalHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project)
    make_manifest(project, hub, ONE, sha={"vae": None})
    code, out = cli("lock", "--check", "--json")
    assert code == 1
    (entry,) = json.loads(out)["checkpoints"]
    assert entry["name"] == "vae"
    assert entry["locked"] is False
    assert entry["needs"] == ["sha256"]
    assert cli("lock")[0] == 0
    code, out = cli("lock", "--check", "--json")
    assert code == 0
    assert json.loads(out)["checkpoints"][0]["locked"] is True
    with pytest.raises(SystemExit) as exit_info:
        main(["lock", "--json"])
    assert exit_info.value.code == 2
