"""Errors carry data; each front end says the fixes in its own words (SPEC §14, issue 18).

The same error is shown by three front ends: the plugin (``--ckpts*`` options), the
``pytest-ckpts`` command (its ``--offline``/``--cache-dir``/``--manifest``) and the
library (environment variables). Each test below asks every front end for one error.
"""

from __future__ import annotations

import ast
import io
import os
import re
import subprocess
import sys
import textwrap
from contextlib import redirect_stderr
from pathlib import Path

import pytest

import pytest_ckpts
from pytest_ckpts.cli import main
from pytest_ckpts.errors import CheckpointDownloadError, CheckpointSkipped, Fix, Kind
from pytest_ckpts.testing import LocalHub
from tests.helpers import dead_endpoint, make_manifest

pytest_plugins = ["pytester"]

FILES = {"vae": os.urandom(4_000) + b"vae"}
PACKAGE = Path(pytest_ckpts.__file__).parent
#: Modules that face a user of one front end (pytest or the command line): only they may
#: name a command-line flag. marker.py builds pytest's collection errors; settings.py
#: declares the options and records which one a value came from.
FRONT_ENDS = {"plugin.py", "session.py", "fixtures.py", "report.py", "marker.py", "settings.py"}


def _engine_modules() -> list[Path]:
    return [
        p
        for p in sorted(PACKAGE.rglob("*.py"))
        if p.relative_to(PACKAGE).as_posix() not in FRONT_ENDS and not p.name.startswith("cli")
    ]


def test_no_engine_module_names_a_command_line_flag() -> None:
    """Structural signal: engines raise fixes as data; no string literal in them (docstrings
    aside) names ``--ckpts...`` or ``--offline``, which only one front end has."""
    flag = re.compile(r"(?<![\w-])--(ckpts|offline)\b")
    found = []
    for path in _engine_modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in docstrings
                and flag.search(node.value)
            ):
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {node.value!r}")
    assert found == []


def test_no_front_end_parses_a_message() -> None:
    """Structural signal: fields are read (``exc.cause``, ``exc.fixes``), never cut out of
    ``str(exc)``."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if "splitlines()[0]" in line or 'removeprefix("pytest-ckpts: ")' in line:
                found.append(f"{path.relative_to(PACKAGE)}:{n}")
            if "removeprefix('pytest-ckpts: ')" in line or '"Revision" in' in line:
                found.append(f"{path.relative_to(PACKAGE)}:{n}")
    assert found == []


def test_errors_carry_data() -> None:
    exc = CheckpointDownloadError(
        "pytest-ckpts: checkpoint 'vae' from repo: HTTP 503.",
        name="vae",
        status=503,
        kind="transient",
        cause="HTTP 503",
        fixes=(Fix.set("retry_budget"),),
    )
    assert (exc.entry, exc.status, exc.kind, exc.cause) == ("vae", 503, Kind.TRANSIENT, "HTTP 503")
    assert exc.hub_down
    assert not exc.unreachable
    assert isinstance(exc, RuntimeError)
    assert str(exc).endswith("Set PYTEST_CKPTS_RETRY_BUDGET=SECONDS.")
    assert str(exc).startswith("pytest-ckpts: checkpoint 'vae'")
    fix = Fix.run("fetch", "--force", "vae", cache_dir="other dir")
    assert fix.command_line == "pytest-ckpts fetch --force vae --cache-dir 'other dir'"


def test_internal_signals_are_not_public_errors() -> None:
    from pytest_ckpts import errors

    for name in ("RetrySignal", "YamlProblem", "DecompressError", "CommitRejected"):
        assert hasattr(errors, name)
        assert name not in errors.__all__


# --------------------------------------------------------------------------- front ends


def _cli(*args: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stderr(err):
        code = main(list(args), out=out)
    return code, out.getvalue() + err.getvalue()


def _script(cwd: Path, code: str, **env: str) -> str:
    """The library in a plain script (no pytest): what it prints of the error it raises."""
    full = {**os.environ, "PYTHONPATH": str(PACKAGE.parent), **env}
    body = "try:\n" + textwrap.indent(textwrap.dedent(code), "    ")
    body += "\nexcept Exception as exc:\n    print(f'{type(exc).__name__}: {exc}')\n"
    done = subprocess.run(
        [sys.executable, "-c", body], cwd=cwd, env=full, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


_MARKED = """
    import pytest

    @pytest.mark.requires_checkpoints("vae")
    def test_vae(checkpoints):
        assert checkpoints["vae"].path.exists()
"""


def test_no_manifest_hint_in_each_front_end(
    tmp_path: Path, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI said "pytest: --manifest PATH" (its own flag, credited to pytest, which
    rejects it); each front end now names the option it has."""
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    code, text = _cli("list")
    assert code == 2
    assert "--manifest PATH" in text
    assert "pytest:" not in text
    assert "--ckpts" not in text

    out = _script(empty, "from pytest_ckpts import get_checkpoint\nget_checkpoint('vae')")
    assert "ManifestNotFoundError" in out
    assert "PYTEST_CKPTS_MANIFEST=PATH" in out
    assert "--" not in out

    pytester.makepyfile(_MARKED)
    result = pytester.runpytest("-p", "no:cacheprovider", "--ckpts-manifest=missing.yaml")
    text = result.stderr.str()
    assert "use --ckpts-manifest PATH" in text
    assert "pytest-ckpts command" not in text
    assert "--manifest " not in text


def test_offline_hint_in_each_front_end(
    project: Path, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A script run with PYTEST_CKPTS_MODE=offline was told "use --ckpts=auto"; the CLI
    run the same way was told "without --offline", a flag it was never given."""
    make_manifest(project, None, FILES, endpoint=dead_endpoint())
    out = _script(
        project,
        "from pytest_ckpts import get_checkpoint\nget_checkpoint('vae')",
        PYTEST_CKPTS_MODE="offline",
    )
    assert out.startswith("CheckpointSkipped: ")
    assert "set PYTEST_CKPTS_MODE=auto" in out
    assert "--ckpts" not in out
    assert "Run `pytest-ckpts fetch vae`" in out

    monkeypatch.chdir(project)
    monkeypatch.setenv("PYTEST_CKPTS_MODE", "offline")
    code, text = _cli("fetch", "vae")
    assert code == 1
    assert "set PYTEST_CKPTS_MODE=auto" in text
    assert "--offline" not in text
    monkeypatch.delenv("PYTEST_CKPTS_MODE")
    code, text = _cli("--offline", "fetch", "vae")
    assert "run without --offline" in text
    assert "--ckpts" not in text

    monkeypatch.chdir(pytester.path)
    make_manifest(pytester.path, None, FILES, endpoint=dead_endpoint())
    pytester.makepyfile(_MARKED)
    result = pytester.runpytest("-p", "no:cacheprovider", "-rs", "--ckpts=offline")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*Run `pytest-ckpts fetch vae`, or use --ckpts=auto.*"])


def test_fetch_hint_names_the_cache_dir_in_force(
    project: Path, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``--ckpts-cache-dir other/dir --ckpts=offline`` the skip said "Run
    `pytest-ckpts fetch vae`", which fills the manifest's cache, not other/dir."""
    make_manifest(pytester.path, None, FILES, endpoint=dead_endpoint())
    pytester.makepyfile(_MARKED)
    result = pytester.runpytest(
        "-p", "no:cacheprovider", "-rs", "--ckpts-cache-dir", "other/dir", "--ckpts=offline"
    )
    result.assert_outcomes(skipped=1)
    other = pytester.path / "other" / "dir"
    result.stdout.fnmatch_lines([f"*Run `pytest-ckpts fetch vae --cache-dir {other}`*"])

    make_manifest(project, None, FILES, endpoint=dead_endpoint())
    out = _script(
        project,
        "from pytest_ckpts import get_checkpoint\nget_checkpoint('vae')",
        PYTEST_CKPTS_MODE="offline",
        PYTEST_CKPTS_CACHE_DIR=str(project / "elsewhere"),
    )
    assert f"pytest-ckpts fetch vae --cache-dir {project / 'elsewhere'}`" in out

    monkeypatch.chdir(project)
    code, text = _cli("--cache-dir", "elsewhere", "--offline", "fetch", "vae")
    assert code == 1
    assert f"pytest-ckpts fetch vae --cache-dir {project / 'elsewhere'}`" in text


def _corrupt_cached(root: Path, hub: LocalHub, monkeypatch: pytest.MonkeyPatch) -> None:
    make_manifest(root, hub, FILES)
    monkeypatch.chdir(root)
    assert _cli("fetch", "-q")[0] == 0
    blob = next((root / "checkpoints" / "hub" / "models--acme--ckpts" / "blobs").iterdir())
    data = bytearray(blob.read_bytes())
    data[10] ^= 0xFF
    blob.write_bytes(bytes(data))


def test_corrupt_copy_offline_is_offered_fetch_force_first(
    project: Path, hub: LocalHub, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Offline, a corrupted cached copy was first offered ``lock --update NAME``, which
    would record the corrupt hash; ``fetch --force NAME`` downloads the right bytes."""
    _corrupt_cached(project, hub, monkeypatch)
    out = _script(
        project,
        "from pytest_ckpts import get_checkpoint\nget_checkpoint('vae')",
        PYTEST_CKPTS_MODE="offline",
    )
    assert "Checksum mismatch" in out
    assert out.index("`pytest-ckpts fetch --force vae`") < out.index("lock --update vae")

    code, text = _cli("--offline", "fetch", "vae")
    assert code == 1
    assert text.index("`pytest-ckpts fetch --force vae`") < text.index("lock --update vae")

    _corrupt_cached(pytester.path, hub, monkeypatch)  # chdir(pytester.path) too
    pytester.makepyfile(_MARKED)
    result = pytester.runpytest("-p", "no:cacheprovider", "--ckpts=offline")
    result.assert_outcomes(errors=1)  # at setup: the marker's checkpoint
    text = result.stdout.str()
    assert text.index("`pytest-ckpts fetch --force vae`") < text.index("lock --update vae")


def test_skip_reason_is_the_plugins_words(pytester: pytest.Pytester) -> None:
    """A library call in a marked test that finds nothing cached offline: the skip reason
    is one line in pytest's words (the policy the marker uses)."""
    make_manifest(pytester.path, None, FILES, endpoint=dead_endpoint())
    pytester.makepyfile(
        """
        import pytest
        from pytest_ckpts import get_checkpoint

        @pytest.mark.requires_checkpoints
        def test_seed_style():
            get_checkpoint("vae")
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "-rs", "--ckpts=offline")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*is not cached in*or use --ckpts=auto.*"])
    assert CheckpointSkipped.__mro__[1].__name__ == "CheckpointsError"


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["no-xdist", "xdist"])
def test_hub_down_skip_names_pytest_options(pytester: pytest.Pytester, xdist: list[str]) -> None:
    """The controller's probe answer reaches workers as JSON: its fixes come back as data
    and the skip says them in pytest's words."""
    make_manifest(pytester.path, None, FILES, endpoint=dead_endpoint())
    pytester.makepyfile(_MARKED)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rs", *xdist, timeout=120)
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*hub unreachable*Use --ckpts=offline to run from the cache*"])
    assert "PYTEST_CKPTS_MODE" not in result.stdout.str()
