"""The generated reference (docs/reference/) is current, complete, and the report schema
holds for real reports."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_ckpts.testing import LocalHub
from tests.helpers import REPO, make_manifest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "reference"
GENERATOR = ROOT / "docs" / "gen_reference.py"
REGENERATE = "python docs/gen_reference.py"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_TESTRUNUID", "PYTEST_ADDOPTS"):
        env.pop(name, None)
    return env


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _page(name: str) -> str:
    return (REFERENCE / name).read_text(encoding="utf-8")


# --------------------------------------------------------------------------- up to date


def test_generated_pages_are_up_to_date(tmp_path: Path) -> None:
    out = tmp_path / "reference"
    proc = _run(str(GENERATOR), "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    generated = {p.name: p.read_text(encoding="utf-8") for p in out.iterdir()}
    committed = {p.name: p.read_text(encoding="utf-8") for p in REFERENCE.iterdir()}
    stale = sorted(
        n for n in generated.keys() | committed.keys() if generated.get(n) != committed.get(n)
    )
    assert not stale, (
        f"docs/reference is out of date ({', '.join(stale)}): regenerate with `{REGENERATE}` "
        "and commit the result"
    )


def test_check_mode_names_the_stale_page_and_the_command(tmp_path: Path) -> None:
    out = tmp_path / "reference"
    shutil.copytree(REFERENCE, out)
    assert _run(str(GENERATOR), "--check", "--out", str(out), cwd=tmp_path).returncode == 0
    page = out / "cli.md"
    page.write_text(page.read_text(encoding="utf-8").replace("--jobs", "--jobz"), encoding="utf-8")
    (out / "leftover.md").write_text("# gone\n", encoding="utf-8")
    proc = _run(str(GENERATOR), "--check", "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 1
    assert f"out of date: cli.md, leftover.md; regenerate with `{REGENERATE}`" in proc.stdout
    assert "+| `-j N`, `--jobs N`" in proc.stdout  # the diff shows what changed


def test_no_page_has_an_undocumented_key() -> None:
    missing = [
        f"{page.name}: {line.strip()}"
        for page in sorted(REFERENCE.glob("*.md"))
        for line in page.read_text(encoding="utf-8").splitlines()
        if "not documented yet" in line
    ]
    assert not missing, "describe these in docs/gen_reference_tables.py, then regenerate:\n" + (
        "\n".join(missing)
    )


# --------------------------------------------------------------------------- complete


def test_options_page_has_every_option_and_ini_key_of_pytest_help(tmp_path: Path) -> None:
    proc = _run("-m", "pytest", "--help", "-p", "no:randomly", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    group = proc.stdout.split("checkpoints (pytest-ckpts):", 1)[1].split("\n\n", 1)[0]
    options = set(re.findall(r"^  (--ckpts[\w-]*)", group, re.M))
    ini = set(re.findall(r"^  (ckpts_\w+) \(", proc.stdout, re.M))
    assert {"--ckpts", "--ckpts-report", "ckpts_mode"} <= options | ini
    page = _page("options.md")
    assert not {o for o in options if f"`{o}" not in page}
    assert not {k for k in ini if f"`{k}`" not in page}
    for var in re.findall(r"PYTEST_CKPTS_\w+", proc.stdout):
        assert f"`{var}`" in page


def test_fixtures_page_has_every_fixture_pytest_lists(tmp_path: Path) -> None:
    proc = _run("-m", "pytest", "--fixtures", "-p", "no:randomly", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    ours = re.findall(
        r"^-+ fixtures defined from pytest_ckpts\.\w+ -+\n(.*?)(?=^-+ fixtures defined|\Z)",
        proc.stdout,
        re.M | re.S,
    )
    fixtures = dict(re.findall(r"^(\w+)(?: \[(\w+) scope\])? -- ", "".join(ours), re.M))
    assert {"checkpoints", "checkpoint", "checkpoint_tensors", "local_hub"} <= set(fixtures)
    page = _page("fixtures.md")
    for name, scope in fixtures.items():
        section = page.split(f"## `{name}`\n", 1)
        assert len(section) == 2, f"fixture {name} missing from docs/reference/fixtures.md"
        assert f"- **scope:** {scope or 'function'}" in section[1].split("\n## ", 1)[0]


def test_cli_page_has_every_command_and_option_of_the_help(tmp_path: Path) -> None:
    def help_of(*command: str) -> str:
        proc = _run("-m", "pytest_ckpts.cli", *command, "--help", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def commands(text: str) -> list[str]:
        block = text.split("COMMAND\n", 1)[-1] if "COMMAND\n" in text else text
        block = block.split("ACTION\n", 1)[-1]
        return re.findall(r"^    (\w+)\s", block.split("\n\n", 1)[0], re.M)

    page = _page("cli.md")
    top = help_of()
    todo = [[c] for c in commands(top)]
    assert ["fetch"] in todo
    assert ["cache"] in todo
    seen = []
    while todo:
        path = todo.pop()
        text = help_of(*path)
        seen.append(path)
        if "ACTION" in text.split("\n", 1)[0]:
            todo += [[*path, a] for a in commands(text)]
        title = f"## `pytest-ckpts {' '.join(path)}`"
        assert title in page, f"{title} missing from docs/reference/cli.md"
        section = page.split(title + "\n", 1)[1].split("\n## ", 1)[0]
        for flag in set(
            re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", text.split("options:", 1)[-1])
        ):
            if flag not in ("-h", "--help"):
                assert f"`{flag}" in section, f"{flag} of {path} missing from docs/reference/cli.md"
    assert ["cache", "key"] in seen
    globals_ = page.split("## Global options\n", 1)[1].split("\n## ", 1)[0]
    for flag in ("--manifest", "--cache-dir", "--offline", "--version"):
        assert f"`{flag}" in globals_
        assert flag in top
    assert "`-j N`, `--jobs N`" in page


# --------------------------------------------------------------------------- report schema


def _statuses(report: Path, schema: dict[str, object]) -> dict[str, str]:
    import jsonschema

    data = json.loads(report.read_text(encoding="utf-8"))
    jsonschema.validate(data, schema)
    return {row["name"]: row["status"] for row in data["checkpoints"]}


@pytest.mark.slow
def test_real_reports_validate_against_the_schema(pytester: pytest.Pytester, hub: LocalHub) -> None:
    """Every status a report can hold, from real runs (with and without xdist)."""
    from pytest_ckpts.stats import STATUSES

    schema = json.loads((REFERENCE / "report.schema.json").read_text(encoding="utf-8"))
    files = {n: os.urandom(2048) + n.encode() for n in ("good", "bad", "gone")}
    make_manifest(pytester.path, hub, files, sha={"bad": "0" * 64})
    hub.faults.fail_next(20, 404, method="GET", path_contains="weights/gone.ckpt")
    pytester.makepyfile(
        test_it="""
        import pytest

        @pytest.mark.requires_checkpoints("good")
        def test_good(checkpoints):
            assert checkpoints["good"].path.is_file()

        @pytest.mark.requires_checkpoints("bad")
        def test_bad(checkpoints):
            pass

        @pytest.mark.requires_checkpoints("gone")
        def test_gone(checkpoints):
            pass
        """
    )
    report = pytester.path / "report.json"
    seen: set[str] = set()
    pytester.runpytest("-p", "no:cacheprovider", "-n", "2", "--ckpts-report", str(report))
    first = _statuses(report, schema)
    assert first == {"good": "downloaded", "bad": "failed", "gone": "skipped"}
    seen |= set(first.values())
    pytester.runpytest("-p", "no:cacheprovider", "--ckpts-report", str(report), "-k", "good")
    seen |= set(_statuses(report, schema).values())
    hub.stop()  # a branch revision with the hub gone: the verified copy is served stale
    pytester.runpytest("-p", "no:cacheprovider", "--ckpts-report", str(report), "-k", "good")
    seen |= set(_statuses(report, schema).values())
    assert seen == set(STATUSES)
    assert REPO in (pytester.path / "checkpoints" / "checkpoints.yaml").read_text()


def test_the_schema_refuses_what_a_report_never_holds() -> None:
    import jsonschema

    schema = json.loads((REFERENCE / "report.schema.json").read_text(encoding="utf-8"))
    row = {
        "name": "a",
        "status": "cached",
        "sha256": None,
        "commit": None,
        "bytes": 0,
        "size": None,
        "seconds": 0.0,
        "reason": None,
        "source": None,
    }
    jsonschema.validate({"checkpoints": [row]}, schema)
    for bad in ({**row, "status": "great"}, {**row, "bytes": -1}, {**row, "extra": 1}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"checkpoints": [bad]}, schema)


# --------------------------------------------------------------------------- the site


@pytest.mark.slow
def test_site_builds_strict(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason="the docs extra (in dev) installs mkdocs")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        env={**_env(), "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "site" / "reference" / "report.schema.json").is_file()
