"""Reports never turn a green run red, and tell the truth (docs/how-to/ci.md "Reports for fleets").

- a JSON report or step summary that cannot be written: one warning line, exit status kept;
- ``--ckpts-report PATH`` (space form) naming an existing file: pytest picks rootdir
  before plugins load; the ``=`` form works, the space form is named in a warning;
- a download cut by pytest-timeout is a ``failed`` row with the bytes received, with and
  without xdist; failed rows of pinned entries carry commit and size;
- step-summary cells are literal text, whatever the manifest or the hub says.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
from pathlib import Path

import pytest

from pytest_ckpts.testing import LocalHub
from tests.helpers import REPO, make_manifest

pytest_plugins = ["pytester"]

DATA = os.urandom(32 * 1024) + b"ckpt"
PASSING = """
import pytest

@pytest.mark.requires_checkpoints("a")
def test_a(checkpoints):
    assert checkpoints["a"].path.read_bytes()
"""


def _with_size(manifest: Path, sizes: dict[str, int]) -> None:
    text = manifest.read_text()
    for name, size in sizes.items():
        line = f"    hf_path: weights/{name}.ckpt\n"
        text = text.replace(line, f"{line}    size: {size}\n")
    manifest.write_text(text)


def _rows(report: Path) -> dict[str, dict[str, object]]:
    return {r["name"]: r for r in json.loads(report.read_text())["checkpoints"]}


# --------------------------------------------------------------------------- unwritable


@pytest.mark.parametrize(
    ("what", "why"),
    [
        ("report-dir", "Is a directory"),
        ("report-under-file", "a part of the path is a file, not a folder"),
        ("summary-missing-folder", "No such file or directory (the folder does not exist)"),
        ("summary-dir", "Is a directory"),
    ],
)
def test_a_report_that_cannot_be_written_leaves_the_run_green(
    pytester: pytest.Pytester, hub: LocalHub, monkeypatch: pytest.MonkeyPatch, what: str, why: str
) -> None:
    make_manifest(pytester.path, hub, {"a": DATA})
    pytester.makepyfile(test_it=PASSING)
    blocker = pytester.path / "blocker"
    blocker.write_text("a file, not a folder")
    args = ["-p", "no:cacheprovider"]
    target = {
        "report-dir": pytester.path,
        "report-under-file": blocker / "report.json",
        "summary-missing-folder": pytester.path / "no" / "such" / "summary.md",
        "summary-dir": pytester.path,
    }[what]
    if what.startswith("report"):
        args.append(f"--ckpts-report={target}")
    else:
        monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(target))
    result = pytester.runpytest(*args)
    assert result.ret == 0
    result.assert_outcomes(passed=1)
    out = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in out
    warnings = [line for line in out.splitlines() if "pytest-ckpts: warning" in line]
    assert len(warnings) == 1, out
    assert str(target) in warnings[0]
    assert why in warnings[0]


# --------------------------------------------------------------------------- rootdir


def test_report_option_with_an_existing_file_in_either_form(
    pytester: pytest.Pytester, hub: LocalHub, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """pytest decides rootdir before plugins load, so in the space form an existing
    report file counts as a test path: the '=' form is the one that always works, and
    the space form says so."""
    make_manifest(pytester.path, hub, {"a": DATA})
    pytester.makepyfile(test_it=PASSING)
    elsewhere = tmp_path_factory.mktemp("ci-artifacts") / "report.json"
    elsewhere.write_text("{}")  # left by an earlier step

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--ckpts-report={elsewhere}")
    result.assert_outcomes(passed=1)
    assert f"rootdir: {pytester.path}" in result.stdout.str()
    assert _rows(elsewhere)["a"]["status"] == "downloaded"
    assert "pytest-ckpts: warning" not in result.stdout.str()

    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--ckpts-report", str(elsewhere)
    )
    out = result.stdout.str()
    assert f"rootdir: {pytester.path}\n" not in out + "\n"  # pytest moved it
    (warning,) = [line for line in out.splitlines() if "pytest-ckpts: warning" in line]
    assert f"--ckpts-report={elsewhere}" in warning
    assert "rootdir" in warning


# --------------------------------------------------------------------------- timeouts


#: One test that needs the large checkpoint ``big`` (the timeout cases below).
BIG_TEST = """
import pytest

@pytest.mark.requires_checkpoints("big")
def test_big(checkpoints):
    pass
"""


@pytest.mark.parametrize("xdist", [["-p", "no:xdist"], ["-n", "2"]], ids=["serial", "xdist"])
def test_a_download_cut_by_a_test_timeout_is_a_failed_row_with_the_bytes_received(
    pytester: pytest.Pytester, hub: LocalHub, xdist: list[str]
) -> None:
    pytest.importorskip("pytest_timeout")
    big = os.urandom(2 * 1024 * 1024)
    manifest = make_manifest(pytester.path, hub, {"big": big}, pinned=True)
    _with_size(manifest, {"big": len(big)})
    hub.faults.slow(bytes_per_second=200_000, route="file")  # ~10 s for the whole file
    pytester.makepyfile(test_it=BIG_TEST)
    report = pytester.path / "report.json"
    result = pytester.runpytest(
        "-p", "no:cacheprovider", "--timeout=3", "--ckpts-prefetch=0", *xdist,
        f"--ckpts-report={report}",
    )  # fmt: skip
    result.assert_outcomes(errors=1)
    row = _rows(report)["big"]
    assert row["status"] == "failed"
    assert "Timeout" in str(row["reason"])
    sent = hub.stats.bytes_sent(route="file")
    assert 0 < int(row["bytes"]) <= sent < len(big)  # what arrived, not 0, not the whole
    assert row["commit"] == hub.commit_sha(REPO)
    assert row["size"] == len(big)
    assert row["sha256"] == hashlib.sha256(big).hexdigest()
    assert "error      big: interrupted" in result.stdout.str()


@pytest.mark.parametrize("xdist", [["-p", "no:xdist"], ["-n", "2"]], ids=["serial", "xdist"])
def test_timeout_while_waiting_for_a_prefetch_is_a_failed_row(
    pytester: pytest.Pytester, hub: LocalHub, xdist: list[str]
) -> None:
    """Under -n 2 both workers prefetch: the one whose test timed out must not be
    outvoted by the other's ``cached`` (the file its own prefetch found finished)."""
    pytest.importorskip("pytest_timeout")
    big = os.urandom(1024 * 1024)
    make_manifest(pytester.path, hub, {"big": big})
    # 10 s for the file against a 2 s timeout: under load (it failed once at load 13 with
    # 400 KB/s and 1 s) the prefetch could finish before the test started, or the
    # timeout fire before the first bytes arrived.
    hub.faults.slow(bytes_per_second=100_000, route="file")
    pytester.makepyfile(test_it=BIG_TEST)
    report = pytester.path / "report.json"
    result = pytester.runpytest(
        "-p", "no:cacheprovider", "--timeout=2", *xdist, f"--ckpts-report={report}"
    )  # fmt: skip
    result.assert_outcomes(errors=1)
    row = _rows(report)["big"]
    assert row["status"] == "failed"
    assert "Timeout" in str(row["reason"])
    assert 0 < int(row["bytes"]) <= hub.stats.bytes_sent(route="file")
    assert row["commit"] == hub.commit_sha(REPO)  # a branch: known from the probe


def test_failed_rows_of_pinned_entries_carry_commit_and_size(
    pytester: pytest.Pytester, hub: LocalHub
) -> None:
    manifest = make_manifest(pytester.path, hub, {"a": DATA}, pinned=True)
    _with_size(manifest, {"a": len(DATA)})
    hub.faults.fail_next(50, 404, path_contains="weights/a.ckpt")
    pytester.makepyfile(test_it=PASSING)
    report = pytester.path / "report.json"
    result = pytester.runpytest(
        "-p", "no:cacheprovider", "--ckpts=require", f"--ckpts-report={report}"
    )
    result.assert_outcomes(errors=1)
    row = _rows(report)["a"]
    assert row["status"] == "failed"
    assert "404" in str(row["reason"])
    assert (row["commit"], row["size"]) == (hub.commit_sha(REPO), len(DATA))


# --------------------------------------------------------------------------- step summary

HOSTILE = "w/`code`*em*_u_<b>bold</b>|[l](x:y)~~s~~&amp; www.x.ckpt"


def test_step_summary_cells_are_literal_text(
    pytester: pytest.Pytester, hub: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = make_manifest(pytester.path, hub, {"a": DATA})
    text = manifest.read_text().replace(
        "hf_path: weights/a.ckpt", f"hf_path: {json.dumps(HOSTILE)}"
    )
    manifest.write_text(text)
    pytester.makepyfile(test_it=PASSING)  # the hub has no such file: a 404 reason naming it
    summary = pytester.path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    report = pytester.path / "report.json"
    result = pytester.runpytest("-p", "no:cacheprovider", f"--ckpts-report={report}")
    result.assert_outcomes(skipped=1)
    reason = str(_rows(report)["a"]["reason"])
    assert HOSTILE in reason
    (line,) = [ln for ln in summary.read_text().splitlines() if ln.startswith("| a ")]
    assert not re.search(r"[`*_<>\[\]~]", line.replace("&#", "")), line
    cells = line.split("|")[1:-1]  # no pipe of the text splits the row
    assert len(cells) == 7, line  # name, status, source, bytes, seconds, commit, reason
    assert html.unescape(cells[6].strip()) == " ".join(reason.split())


FILES = {name: os.urandom(16 * 1024) + name.encode() for name in ("vae", "ldm")}


def test_json_report_and_github_step_summary(
    pytester: pytest.Pytester, hub: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_manifest(pytester.path, hub, {**FILES, "gone": b"never published"})
    hub_text = (pytester.path / "checkpoints" / "checkpoints.yaml").read_text()
    # 'gone' is named in the manifest but the hub never had it: a permanent 404
    hub.faults.fail_next(5, 404, method="GET", path_contains="weights/gone.ckpt")
    assert "gone" in hub_text
    pytester.makepyfile(
        test_it="""
        import pytest

        @pytest.mark.requires_checkpoints("vae", "ldm")
        def test_both(checkpoints):
            pass

        @pytest.mark.requires_checkpoints("gone")
        def test_gone(checkpoints):
            pass
        """
    )
    summary = pytester.path / "step_summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    report = pytester.path / "out" / "report.json"
    report.parent.mkdir()
    result = pytester.runpytest("-p", "no:cacheprovider", "-n", "2", "--ckpts-report", str(report))
    result.assert_outcomes(passed=1, skipped=1)
    rows = {r["name"]: r for r in json.loads(report.read_text())["checkpoints"]}
    assert set(rows) == {"vae", "ldm", "gone"}
    for name in ("vae", "ldm"):
        row = rows[name]
        assert row["status"] == "downloaded"
        assert row["bytes"] == len(FILES[name])
        assert row["size"] == len(FILES[name])
        assert row["sha256"] == hashlib.sha256(FILES[name]).hexdigest()
        assert row["commit"] == hub.commit_sha(REPO)
        assert row["reason"] is None
        assert row["seconds"] >= 0
    assert rows["gone"]["status"] == "skipped"
    assert "404" in rows["gone"]["reason"]
    text = summary.read_text()
    assert text.startswith("earlier step\n")
    assert "| vae | downloaded |" in text
    assert text.count("### Checkpoints") == 1  # once per run, by the controller

    # a warm second run: cached, 0 bytes
    result = pytester.runpytest("-p", "no:cacheprovider", "--ckpts-report", str(report))
    rows = {r["name"]: r for r in json.loads(report.read_text())["checkpoints"]}
    assert (rows["vae"]["status"], rows["vae"]["bytes"]) == ("cached", 0)
