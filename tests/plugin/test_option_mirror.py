"""Mirrors inside pytest runs (pytester, with and without ``-n 2``): a fleet's test job
with the hub down and a mirror holding every pinned file passes with 0 hub requests;
report rows and the step summary say where each file came from."""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

import pytest

from pytest_ckpts.testing import LocalHub
from tests.helpers import make_manifest
from tests.mirror_servers import MotoS3, apply_env, fill_folder

FILES = {"vae": os.urandom(70 * 1024) + b"vae", "ldm": os.urandom(90 * 1024) + b"ldm"}
TESTS = """
import pytest

@pytest.mark.requires_checkpoints("vae")
def test_vae(checkpoints):
    assert checkpoints["vae"].path.read_bytes().endswith(b"vae")

@pytest.mark.requires_checkpoints("ldm")
def test_ldm(checkpoint):
    assert checkpoint("ldm").path.read_bytes().endswith(b"ldm")

def test_library():
    from pytest_ckpts import get_checkpoint
    assert get_checkpoint("vae").read_bytes().endswith(b"vae")
"""


@pytest.mark.slow
@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["no-xdist", "xdist"])
def test_pinned_files_from_a_folder_mirror_make_no_hub_request(
    pytester: pytest.Pytester,
    hub: LocalHub,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    xdist: list[str],
) -> None:
    make_manifest(pytester.path, hub, FILES, pinned=True)
    fill_folder(tmp_path / "mirror", FILES)
    pytester.makepyfile(test_it=TESTS)
    summary = pytester.path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    hub.stats.reset()
    report = pytester.path / "report.json"
    mirror = str(tmp_path / "mirror")
    # this plugin (and xdist) only: other plugins' start-up in each worker is most of the time
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    plugins = ["-p", "ckpts", *(["-p", "xdist"] if xdist else [])]
    result = pytester.runpytest(
        "-p", "no:cacheprovider", *plugins, *xdist, f"--ckpts-mirror={mirror}",
        f"--ckpts-report={report}",
    )  # fmt: skip
    result.assert_outcomes(passed=3)
    assert hub.stats.request_count == 0
    result.stdout.fnmatch_lines(["*2 downloaded (*, 2 from mirrors), 0 cached*"])
    rows = {r["name"]: r for r in json.loads(report.read_text())["checkpoints"]}
    label = f"{mirror}/{{sha256}}"
    assert {n: (r["status"], r["source"]) for n, r in rows.items()} == {
        "vae": ("downloaded", label),
        "ldm": ("downloaded", label),
    }
    assert f"| vae | downloaded | {label} |" in html.unescape(summary.read_text())
    # warm: from the cache, still no request
    result = pytester.runpytest(
        "-p", "no:cacheprovider", *plugins, *xdist, f"--ckpts-report={report}"
    )  # fmt: skip
    result.assert_outcomes(passed=3)
    rows = {r["name"]: r for r in json.loads(report.read_text())["checkpoints"]}
    assert {r["source"] for r in rows.values()} == {"cache"}
    assert hub.stats.request_count == 0


@pytest.mark.slow
def test_fleet_job_hub_down_s3_mirror_from_the_environment(
    pytester: pytest.Pytester, hub: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_manifest(pytester.path, hub, FILES, pinned=True)
    pytester.makepyfile(test_it=TESTS)
    server = MotoS3().start()
    try:
        apply_env(server.env(), monkeypatch)
        fs = server.filesystem()
        fs.mkdir("fleet-ckpts")
        for data in FILES.values():
            import hashlib

            fs.pipe(f"fleet-ckpts/ckpts/{hashlib.sha256(data).hexdigest()}", data)
        hub.stop()  # the hub is gone: connection refused
        monkeypatch.setenv("PYTEST_CKPTS_MIRRORS", "s3://fleet-ckpts/ckpts")
        result = pytester.runpytest("-p", "no:cacheprovider", "-n", "2", "--ckpts=require")
    finally:
        server.stop()
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*2 downloaded (*, 2 from mirrors)*"])
    assert hub.stats.request_count == 0
