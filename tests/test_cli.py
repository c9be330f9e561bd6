"""The ``pytest-ckpts`` command line against the local hub."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_ckpts.cli import main
from pytest_ckpts.testing import LocalHub
from tests.helpers import REPO, cli, dead_endpoint, make_manifest

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


PYTEST_OPTION = re.compile(r"(?<![\w-])--ckpts\b")  # not the "models--acme--ckpts" folder


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def here(project: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(project)
    return project


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


ONE = {"vae": os.urandom(300_000) + b"vae"}


@pytest.fixture
def one_entry(project: Path, hub: LocalHub, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(project)
    return make_manifest(project, hub, ONE)


BIG = {"big": os.urandom(3 * 1024 * 1024) + b"big"}


def _fetch_env(**extra: str) -> dict[str, str]:
    """The test process's environment without the progress-bar switch conftest sets."""
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    return {**env, **extra}


def _fetch(project: Path, *args: str, env: dict[str, str], stderr: int) -> tuple[int, bytes]:
    proc = subprocess.run(
        ["pytest-ckpts", "fetch", "--force", *args],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=stderr,
        timeout=120,
    )
    return proc.returncode, proc.stdout


def _on_a_terminal(project: Path, *args: str, **env: str) -> bytes:
    """``fetch --force`` with stderr on a pseudo-terminal; what the terminal received."""
    leader, follower = os.openpty()
    try:
        code, _ = _fetch(project, *args, env=_fetch_env(**env), stderr=follower)
        os.close(follower)
        assert code == 0
        seen = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal is closed and drained
                break
            if not chunk:
                break
            seen += chunk
        return seen
    finally:
        os.close(leader)


def test_version_short_flag(capsys: pytest.CaptureFixture[str]) -> None:
    for flag in ("-V", "--version"):
        with pytest.raises(SystemExit) as exit_info:
            main([flag])
        assert exit_info.value.code == 0
        assert capsys.readouterr().out.startswith("pytest-ckpts ")


def test_fetch_json_downloaded_cached_and_failed(
    one_entry: Path, project: Path, hub: LocalHub
) -> None:
    code, out = cli("fetch", "--json")
    assert code == 0, out
    (entry,) = json.loads(out)["checkpoints"]
    assert entry["name"] == "vae"
    assert entry["status"] == "downloaded"
    assert entry["cached"] is True
    assert entry["verified"] is True
    assert entry["size"] == len(ONE["vae"])
    assert Path(entry["path"]).read_bytes() == ONE["vae"]
    listed = json.loads(cli("list", "--json")[1])["checkpoints"][0]
    assert set(listed) <= set(entry)  # the shape of list --json, plus status/error
    code, out = cli("fetch", "--json")
    assert json.loads(out)["checkpoints"][0]["status"] == "cached"
    make_manifest(project, None, {"gone": b"x"}, endpoint=hub.endpoint)
    code, out = cli("fetch", "--json")
    assert code == 1
    (entry,) = json.loads(out)["checkpoints"]
    assert entry["status"] == "failed"
    assert entry["cached"] is False
    assert "gone" in entry["error"]
    assert "404" in entry["error"]


def test_cache_info_json(one_entry: Path) -> None:
    assert cli("fetch", "-q")[0] == 0
    code, out = cli("cache", "info", "--json")
    assert code == 0
    info = json.loads(out)
    assert info["total"] == len(ONE["vae"])
    assert list(info["repos"].values()) == [len(ONE["vae"])]
    assert info["incomplete"] == []
    assert info["tensor_pieces"] == {"files": 0, "bytes": 0}
    assert [(c["name"], c["cached"]) for c in info["checkpoints"]] == [("vae", True)]
    assert Path(info["cache"]) == one_entry.parent


def test_cache_prune_json(one_entry: Path, project: Path, hub: LocalHub) -> None:
    assert cli("fetch", "-q")[0] == 0
    make_manifest(project, None, {}, endpoint=hub.endpoint)  # vae is no longer named
    code, out = cli("cache", "prune", "--dry-run", "--json")
    assert code == 0
    would = json.loads(out)
    assert would["dry_run"] is True
    assert len(would["removed"]) == 1
    assert would["freed"] == len(ONE["vae"])
    assert would["snapshot_files"] == 1
    assert Path(would["removed"][0]).is_file()
    done = json.loads(cli("cache", "prune", "--json")[1])
    assert done["removed"] == would["removed"]
    assert not Path(done["removed"][0]).exists()


def test_no_progress_bar_escapes_in_a_ci_log(project: Path, hub: LocalHub) -> None:
    """stdout and stderr are pipes (a CI log): no carriage returns, no escape sequences."""
    make_manifest(project, hub, BIG)
    proc = subprocess.run(
        ["pytest-ckpts", "fetch"],
        cwd=project,
        env=_fetch_env(),
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert b"downloaded" in proc.stdout
    for stream in (proc.stdout, proc.stderr):
        assert b"\r" not in stream
        assert b"\x1b" not in stream


def test_progress_bar_on_a_terminal_unless_quiet(project: Path, hub: LocalHub) -> None:
    make_manifest(project, hub, BIG)
    assert b"\r" in _on_a_terminal(project)  # a terminal gets the bar
    assert b"\r" not in _on_a_terminal(project, "-q")
    assert b"\r" not in _on_a_terminal(project, HF_HUB_DISABLE_PROGRESS_BARS="1")


def test_no_upload_progress_bars_in_a_ci_log(project: Path, hub: LocalHub) -> None:
    """huggingface_hub draws its own upload bars on any stream: off unless on a terminal."""
    hub.create_repo(REPO)
    (project / "checkpoints" / "checkpoints.yaml").write_text(
        "checkpoints:\n  a:\n    hf_path: w/a.ckpt\n  b:\n    hf_path: w/b.ckpt\n"
        f"config:\n  hf_repo: {REPO}\n"
    )
    src = project / "src"
    (src / "w").mkdir(parents=True)
    for name in "ab":
        (src / "w" / f"{name}.ckpt").write_bytes(os.urandom(1_000_000))
    proc = subprocess.run(
        ["pytest-ckpts", "upload", "--from", str(src)],
        cwd=project,
        env=_fetch_env(HF_ENDPOINT=hub.endpoint, HF_TOKEN="hf_writer"),
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert b"locked 2 entries" in proc.stdout
    for stream in (proc.stdout, proc.stderr):
        assert b"\r" not in stream
        assert b"\x1b" not in stream


DATA = os.urandom(48 * 1024) + b"ckpt"


def test_fetch_jobs_keeps_manifest_order(project: Path, hub: LocalHub) -> None:
    import io

    files = {n: DATA + n.encode() for n in ("d", "c", "b", "a")}
    path = make_manifest(project, hub, files)
    hub.faults.delay(0.3, n=1, path_contains="weights/d.ckpt")  # the first one finishes last
    out = io.StringIO()
    assert main(["--manifest", str(path), "fetch", "-q", "-j", "4"], out=out) == 0
    names = [line.split()[1] for line in out.getvalue().splitlines()]
    assert names == ["d", "c", "b", "a"]
    assert hub.stats.bodies_served == 4
