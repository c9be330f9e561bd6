"""Command-line conventions (issue 18): plurals, ``--json``, ``-V``, progress bars."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from pytest_ckpts.cli import main
from pytest_ckpts.report import summary_lines
from pytest_ckpts.stats import Stats
from pytest_ckpts.testing import LocalHub
from tests.helpers import REPO, cli, make_manifest

pytest_plugins = ["pytester"]

ONE = {"vae": os.urandom(300_000) + b"vae"}


# --------------------------------------------------------------------------- plurals


def test_summary_says_1_error_not_1_errors() -> None:
    stats = Stats()
    stats.record("vae", "failed", reason="hub down")
    stats.record("ldm", "skipped", reason="offline")
    line = summary_lines(stats, verbose=False)[0]
    assert "1 error" in line
    assert "1 errors" not in line
    stats.record("enc", "failed", reason="hub down")
    assert "2 errors" in summary_lines(stats, verbose=False)[0]


def test_header_says_1_entry(pytester: pytest.Pytester, hub: LocalHub) -> None:
    make_manifest(pytester.path, hub, ONE, sha={"vae": None})
    pytester.makepyfile(test_it="def test_plain():\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["ckpts: mode=*(1 entry, 1 unverified)*"])
    assert "1 entries" not in result.stdout.str()


def test_lock_check_says_1_entry_needs(
    project: Path, hub: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project)
    make_manifest(project, hub, ONE, sha={"vae": None})
    code, out = cli("lock", "--check")
    assert code == 1
    assert "1 entry needs `pytest-ckpts lock`" in out


# --------------------------------------------------------------------------- --json, -V


@pytest.fixture
def one_entry(project: Path, hub: LocalHub, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(project)
    return make_manifest(project, hub, ONE)


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


# --------------------------------------------------------------------------- progress bars

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
