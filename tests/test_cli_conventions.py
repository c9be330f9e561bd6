"""Command-line conventions (issue 18): plurals, ``--json``, ``-V``, progress bars."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, make_manifest

from pytest_ckpts.cli import main
from pytest_ckpts.report import summary_lines
from pytest_ckpts.stats import Stats
from pytest_ckpts.testing import LocalHub

pytest_plugins = ["pytester"]

ONE = {"vae": os.urandom(300_000) + b"vae"}


def cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(args), out=out), out.getvalue()


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


def test_local_hub_says_1_file(tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "w.bin").write_bytes(b"x")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest_ckpts.testing.hub", "--repo", f"{REPO}={tmp_path / 'repo'}"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        assert proc.stdout is not None
        proc.stdout.close()
    assert f"{REPO}: 1 file at commit" in first
