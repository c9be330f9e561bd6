"""``pytest-ckpts`` hardening: honest messages, JSON output, lock and upload edge cases.

Each test names, in its docstring, the defect of the earlier CLI it guards against.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
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

FILES = {"vae": os.urandom(20_000) + b"vae", "ldm": os.urandom(10_000) + b"ldm"}
PYTEST_OPTION = re.compile(r"(?<![\w-])--ckpts\b")  # not the "models--acme--ckpts" folder


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def here(project: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(project)
    return project


# --------------------------------------------------------------------------- messages


def test_unhashed_entries_are_reported_unverified(here: Path, hub: LocalHub) -> None:
    """An entry without sha256 was listed and verified as "ok"/"yes": nothing had been
    compared with anything."""
    make_manifest(here, hub, FILES, sha={"ldm": None})
    code, out = cli("fetch", "-q")
    assert code == 0, out
    ldm = next(line for line in out.splitlines() if " ldm " in line)
    assert "unverified" in ldm
    code, out = cli("verify")
    assert code == 0, out
    assert re.search(r"^ok\s+vae: sha256 ", out, re.M)
    assert re.search(r"^unverified\s+ldm: sha256 .*not verified", out, re.M)
    assert not re.search(r"^ok\s+ldm", out, re.M)
    code, out = cli("list")
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:3]}
    assert rows["vae"][3:5] == ["yes", "yes"]
    assert rows["ldm"][3:5] == ["yes", "unverified"]


def test_fetch_of_a_cached_file_says_cached(here: Path, hub: LocalHub) -> None:
    """A second ``fetch`` printed "downloaded" for files it had only found in the cache."""
    make_manifest(here, hub, FILES)
    code, out = cli("fetch", "-q", "vae")
    assert out.startswith("downloaded  vae"), out
    hub.stats.reset()
    code, out = cli("fetch", "-q", "vae")
    assert code == 0
    assert out.startswith("cached      vae"), out
    assert "downloaded" not in out
    assert hub.stats.bodies_served == 0


def test_plurals(here: Path, hub: LocalHub) -> None:
    """ "1 repos", "locked 1 entries"."""
    make_manifest(here, hub, FILES, sha={"vae": None})
    source = here / "src"
    (source / "weights").mkdir(parents=True)
    (source / "weights" / "vae.ckpt").write_bytes(FILES["vae"])
    code, out = cli("lock", "--from", str(source))
    assert code == 0, out
    assert "locked 1 entry in " in out
    assert cli("fetch", "-q")[0] == 0
    out = cli("cache", "info")[1]
    assert "in 1 repo;" in out
    assert "2/2 manifest entries cached" in out


def test_offline_and_not_cached_names_cli_options(
    here: Path, hub: LocalHub, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI told its users to "use --ckpts=auto" or "--ckpts-cache-dir": options of
    pytest, not of ``pytest-ckpts``."""
    make_manifest(here, hub, FILES)
    code, out = cli("--offline", "fetch", "vae")
    assert code == 1
    assert "not cached" in out
    assert "--offline" in out
    assert not PYTEST_OPTION.search(out), out
    assert hub.stats.request_count == 0
    code, out = cli("verify", "ldm")
    assert code == 1
    assert "missing     ldm: not cached" in out
    make_manifest(here, None, FILES, endpoint=dead_endpoint())
    code, out = cli("fetch", "-q")
    assert code == 1
    assert "unreachable" in out
    assert "--offline" in out
    assert not PYTEST_OPTION.search(out + capsys.readouterr().err), out


def test_no_manifest_found_is_reported_as_such(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """ "invalid manifest: no manifest found": there was nothing to be invalid."""
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    assert cli("list")[0] == 2
    err = capsys.readouterr().err
    assert err.startswith("pytest-ckpts: no manifest found")
    assert "invalid" not in err
    assert "--manifest" in err
    assert err.count("\n") == 1
    assert cli("--manifest", "nope.yaml", "list")[0] == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pytest-ckpts: manifest {empty / 'nope.yaml'} not found.")
    assert "--manifest" in err
    assert not PYTEST_OPTION.search(err)
    assert "ckpts_manifest" not in err  # an ini key of pytest's


def test_verify_exit_1_names_what_is_not_cached(here: Path, hub: LocalHub) -> None:
    make_manifest(here, hub, FILES)
    assert cli("fetch", "-q", "vae")[0] == 0
    code, out = cli("verify")
    assert code == 1
    assert "missing     ldm: not cached (run `pytest-ckpts fetch ldm`)" in out
    assert re.search(r"^ok\s+vae", out, re.M)


# --------------------------------------------------------------------------- json, version


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"pytest-ckpts {version('pytest-ckpts')}"


def test_list_and_verify_json(here: Path, hub: LocalHub) -> None:
    make_manifest(here, hub, {**FILES, "enc": b"enc"}, sha={"ldm": None})
    assert cli("fetch", "-q", "vae", "ldm")[0] == 0
    code, out = cli("list", "--json")
    assert code == 0
    rows = {c["name"]: c for c in json.loads(out)["checkpoints"]}
    assert set(rows) == {"vae", "ldm", "enc"}
    for row in rows.values():
        assert {"name", "cached", "verified", "sha256", "size", "path"} <= set(row)
    assert rows["vae"]["cached"] is True
    assert rows["vae"]["verified"] is True
    assert rows["vae"]["sha256"] == sha(FILES["vae"])
    assert rows["vae"]["size"] == len(FILES["vae"])
    assert Path(rows["vae"]["path"]).read_bytes() == FILES["vae"]
    assert rows["ldm"]["cached"] is True
    assert rows["ldm"]["verified"] is False  # no sha256: hashed, never verified
    assert rows["ldm"]["sha256"] is None
    assert (rows["enc"]["cached"], rows["enc"]["verified"], rows["enc"]["path"]) == (
        False,
        False,
        None,
    )
    code, out = cli("verify", "--json")
    assert code == 1  # enc is not cached
    rows = {c["name"]: c for c in json.loads(out)["checkpoints"]}
    assert rows["vae"]["verified"] is True
    assert rows["ldm"]["verified"] is False
    assert rows["enc"]["verified"] is False
    assert rows["enc"]["error"] == "not cached"
    code, out = cli("verify", "--json", "vae")
    assert code == 0
    assert json.loads(out)["checkpoints"][0]["verified"] is True


# --------------------------------------------------------------------------- lock


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


_LOCKERS = 3


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


# --------------------------------------------------------------------------- upload


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
