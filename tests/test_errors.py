"""Errors carry data; each front end says the fixes in its own words (SPEC §14, issue 18).

The same error is shown by three front ends: the plugin (``--ckpts*`` options), the
``pytest-ckpts`` command (its ``--offline``/``--cache-dir``/``--manifest``) and the
library (environment variables). Each test below asks every front end for one error.
"""

from __future__ import annotations

import ast
import builtins
import enum
import importlib
import io
import json
import os
import re
import subprocess
import sys
import textwrap
from contextlib import redirect_stderr
from pathlib import Path

import pytest

import pytest_ckpts
from pytest_ckpts import load_manifest
from pytest_ckpts.cli import main
from pytest_ckpts.errors import (
    CheckpointDownloadError,
    CheckpointSkipped,
    ChecksumMismatchError,
    Fix,
    Kind,
    MirrorKind,
    MirrorUnavailable,
)
from pytest_ckpts.hub_client import HubClient, ProbeAnswer
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

    internal = ("RetrySignal", "YamlProblem", "DecompressError", "CommitRejected")
    internal += ("MirrorUnavailable", "MirrorKind", "LockTimeout")
    for name in internal:
        assert hasattr(errors, name)
        assert name not in errors.__all__
        assert name not in pytest_ckpts.__all__
    reference = (PACKAGE.parent / "docs" / "reference" / "errors.md").read_text(encoding="utf-8")
    assert not [name for name in internal if f"`{name}`" in reference]


def _trees(*, engines_only: bool = False) -> list[tuple[Path, str, ast.Module]]:
    """``(path, module name, tree)`` of every package module (``engines_only``: without
    the test servers of ``pytest_ckpts.testing``)."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        if engines_only and rel.parts[1] == "testing":
            continue
        name = ".".join(rel.parts[:-1] if rel.parts[-1] == "__init__" else rel.parts)
        out.append((path, name, ast.parse(path.read_text(encoding="utf-8"))))
    return out


def _where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(PACKAGE)}:{getattr(node, 'lineno', 0)}"


def test_every_kind_is_an_enum() -> None:
    """Structural signal: a ``kind`` is an Enum member everywhere (``Kind``, ``MirrorKind``,
    ``Storage``, ``FaultKind``): no ``kind`` field annotated with a non-Enum type, no
    ``.kind == "..."`` comparison with a string, no ``kind="..."`` argument."""
    found = []
    for path, name, tree in _trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                if any(isinstance(x, ast.Attribute) and x.attr == "kind" for x in sides) and any(
                    isinstance(x, ast.Constant) and isinstance(x.value, str) for x in sides
                ):
                    found.append(f"{_where(path, node)}: {ast.unparse(node)}")
            if (
                isinstance(node, ast.keyword)
                and node.arg == "kind"
                and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)
            ):
                found.append(f"{_where(path, node.value)}: kind={node.value.value!r}")
            if isinstance(node, ast.ClassDef):
                for stmt in node.body:
                    if (
                        isinstance(stmt, ast.AnnAssign)
                        and isinstance(stmt.target, ast.Name)
                        and stmt.target.id == "kind"
                    ):
                        namespace = vars(importlib.import_module(name))
                        hint = eval(ast.unparse(stmt.annotation), namespace)
                        if not (isinstance(hint, type) and issubclass(hint, enum.Enum)):
                            found.append(f"{_where(path, stmt)}: {node.name}.kind: {hint!r}")
    assert found == []
    # the errors that carry a kind hold a member, whatever they were given
    given = CheckpointDownloadError(what="w", cause="c", kind="unreachable")
    assert given.kind is Kind.UNREACHABLE
    assert MirrorUnavailable(MirrorKind("missing"), "m", "gone").kind is MirrorKind.MISSING


def test_every_exception_class_is_defined_in_errors() -> None:
    """Structural signal: "every exception type in errors.py" (CONTRIBUTING); a class
    deriving from an exception or warning anywhere else in the package fails."""
    builtin = {
        n for n, v in vars(builtins).items() if isinstance(v, type) and issubclass(v, BaseException)
    }
    found = []
    for path, _name, tree in _trees():
        if path.name == "errors.py" and path.parent == PACKAGE:
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef):
                continue
            bases = {ast.unparse(b).rpartition(".")[2] for b in node.bases}
            if bases & builtin or any(b.endswith(("Error", "Exception", "Warning")) for b in bases):
                found.append(f"{_where(path, node)}: class {node.name}")
    assert found == []


def test_probe_answers_are_typed(project: Path, hub: LocalHub) -> None:
    """A probe answer was an untyped dict (``{"commit": ...}`` or ``{"error": ...,
    "kind": "transient", ...}``); now a frozen ``ProbeAnswer``, JSON only on the way to
    xdist workers, and a worker seeded with it raises the same error without a request."""
    spec = load_manifest(make_manifest(project, hub, FILES)).get("vae")
    client = HubClient(endpoint=hub.endpoint)
    commit = client.probe(spec)
    answers = list(client._probes.values())
    assert answers == [ProbeAnswer(commit=commit)]
    with pytest.raises(AttributeError):
        answers[0].commit = "x"  # type: ignore[misc]

    nowhere = dead_endpoint()
    dead = HubClient(endpoint=nowhere)
    with pytest.raises(CheckpointDownloadError) as raised:
        dead.probe(spec)
    (failed,) = dead._probes.values()
    assert isinstance(failed, ProbeAnswer)
    assert (failed.commit, failed.kind) == (None, Kind.UNREACHABLE)
    assert failed.cause == raised.value.cause
    assert failed.fixes == raised.value.fixes
    assert failed.fixes

    shipped = json.loads(json.dumps(dead.probes_to_json()))  # what execnet carries
    worker = HubClient(endpoint=nowhere)
    worker.probes_from_json(shipped)
    assert list(worker._probes.values()) == [failed]
    with pytest.raises(CheckpointDownloadError) as again:
        worker.probe(spec)
    assert str(again.value) == str(raised.value)
    assert again.value.kind is Kind.UNREACHABLE


def test_no_forwarders_and_no_private_reach() -> None:
    """Structural signal: no method only passes its arguments on to another object's
    public method or to a module function given ``self`` (``Store.cached_commit``,
    ``HubClient.read_range``, ...), and nothing outside a class reaches into a hub
    client's private members (``client._send``)."""
    found = []
    for path, _name, tree in _trees(engines_only=True):
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and (
                    (isinstance(node.value, ast.Name) and node.value.id in ("client", "hub"))
                    or (isinstance(node.value, ast.Attribute) and node.value.attr == "hub")
                )
            ):
                found.append(f"{_where(path, node)}: {ast.unparse(node)}")
            if not isinstance(node, ast.ClassDef):
                continue
            for fn in node.body:
                if isinstance(fn, ast.FunctionDef) and _forwards(fn):
                    found.append(f"{_where(path, fn)}: {node.name}.{fn.name} forwards")
    assert found == []


def _forwards(fn: ast.FunctionDef) -> bool:
    body = fn.body[1:] if ast.get_docstring(fn) is not None else fn.body
    if len(body) != 1 or not isinstance(body[0], ast.Return):
        return False
    call = body[0].value
    if not isinstance(call, ast.Call):
        return False
    target = call.func
    via_attribute = (
        isinstance(target, ast.Attribute)
        and isinstance(target.value, ast.Attribute)
        and isinstance(target.value.value, ast.Name)
        and target.value.value.id == "self"
        and not target.value.attr.startswith("_")
    )
    args = [a for a in call.args if not (isinstance(a, ast.Name) and a.id == "self")]
    via_function = isinstance(target, ast.Name) and len(args) < len(call.args)
    params = [a.arg for a in fn.args.args[1:] + fn.args.kwonlyargs]
    passed = [ast.unparse(a) for a in args] + [ast.unparse(k.value) for k in call.keywords]
    return bool(params) and passed == params and (via_attribute or via_function)


def test_reexports_are_imported() -> None:
    """Structural signal: a name an engine module's ``__all__`` takes from elsewhere is
    imported from it by someone (package, tests, benchmarks, docs); ``store`` re-exported
    ``redact``, ``resolve_endpoint`` and ``DEFAULT_ENDPOINT``, which nobody took from it.
    Modules with a reference page (``::: module``) are public API and may re-export."""
    root = PACKAGE.parent
    documented = set(
        re.findall(r"^::: ([\w.]+)", "\n".join(
            p.read_text(encoding="utf-8") for p in (root / "docs" / "reference").glob("*.md")
        ), re.M)
    )  # fmt: skip
    taken: set[tuple[str, str]] = set()
    for base in ("pytest_ckpts", "tests", "benchmarks", "examples", "docs"):
        for path in (root / base).rglob("*.py"):
            rel = path.relative_to(root).with_suffix("").parts
            package = ".".join(rel[:-1])
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom):
                    parts = package.split(".")[: len(package.split(".")) - max(0, node.level - 1)]
                    module = ".".join([*parts, node.module or ""]) if node.level else node.module
                    taken.update((str(module).rstrip("."), a.name) for a in node.names)
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                    taken.add((f"pytest_ckpts.{node.value.id}", node.attr))
    found = []
    for path, name, tree in _trees():
        if path.name == "__init__.py" or name in documented:
            continue
        defined = {
            t.id
            for stmt in tree.body
            for t in (
                [ast.Name(stmt.name)]
                if isinstance(stmt, ast.FunctionDef | ast.ClassDef)
                else stmt.targets
                if isinstance(stmt, ast.Assign)
                else [stmt.target]
                if isinstance(stmt, ast.AnnAssign)
                else []
            )
            if isinstance(t, ast.Name)
        }
        exported = next(
            (
                [e.value for e in stmt.value.elts if isinstance(e, ast.Constant)]
                for stmt in tree.body
                if isinstance(stmt, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "__all__" for t in stmt.targets)
                and isinstance(stmt.value, ast.List)
            ),
            [],
        )
        found += [f"{name}.{n}" for n in exported if n not in defined and (name, n) not in taken]
    assert found == []


def test_modules_and_classes_stay_small() -> None:
    """Structural signal (CONTRIBUTING): no module over 600 lines, no class over 300."""
    found = []
    for path, _name, tree in _trees():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > 600:
            found.append(f"{path.relative_to(PACKAGE)}: {lines} lines")
        found += [
            f"{_where(path, node)}: class {node.name}: {node.end_lineno - node.lineno + 1} lines"
            for node in ast.walk(tree)
            if isinstance(node, ast.ClassDef) and (node.end_lineno or 0) - node.lineno + 1 > 300
        ]
    assert found == []


def test_cited_test_files_exist() -> None:
    """A comment or docstring of the package that names a test file names one that
    exists (cache.py cited ``tests/test_cache.py`` for a check no test made)."""
    root = PACKAGE.parent
    cited = {
        (path.relative_to(root), match)
        for path in PACKAGE.rglob("*.py")
        for match in re.findall(r"tests/(?:\w+/)*test_\w+\.py", path.read_text(encoding="utf-8"))
    }
    assert [(str(p), m) for p, m in sorted(cited) if not (root / m).is_file()] == []


def test_errors_build_their_message_from_fields() -> None:
    """The errors the front ends render are built from their fields, as huggingface_hub's
    are: the raise sites no longer hand over a message repeating them."""
    fixes = (Fix.set("mode", "offline", why="to run from the cache"),)
    exc = CheckpointDownloadError(
        what="failed to download checkpoint 'vae' from repo 'acme/ckpts'",
        cause="HTTP 503",
        name="vae",
        status=503,
        kind=Kind.TRANSIENT,
        fixes=fixes,
    )
    assert exc.summary == "failed to download checkpoint 'vae' from repo 'acme/ckpts': HTTP 503."
    assert str(exc).endswith("HTTP 503. Set PYTEST_CKPTS_MODE=offline to run from the cache.")
    with pytest.raises(TypeError):
        CheckpointDownloadError(name="vae")

    sha = ("0" * 64, "1" * 64)
    exc2 = ChecksumMismatchError(
        name="vae", path="/c/vae.ckpt", expected=sha[0], actual=sha[1], why="fresh download",
        source="repo 'acme/ckpts'",
    )  # fmt: skip
    assert exc2.summary == "Checksum mismatch for checkpoint 'vae' (fresh download)"
    assert exc2.cause == "checksum mismatch"
    assert f"  expected: {sha[0]}\n  actual:   {sha[1]}\n" in str(exc2)
    assert "never skipped" in str(exc2)
    plain = ChecksumMismatchError(path="/c/f.bin", expected=sha[0], actual=sha[1])
    assert str(plain) == (
        f"pytest-ckpts: Checksum mismatch for /c/f.bin\n  expected sha256: {sha[0]}\n"
        f"  actual sha256:   {sha[1]}"
    )
    assert plain.one_line() == "Checksum mismatch for /c/f.bin"

    skipped = CheckpointSkipped.not_cached("vae", "/c", tensors=True)
    assert (skipped.entry, skipped.cause, skipped.cache) == ("vae", "not cached", "/c")
    assert skipped.summary.startswith("tensors of checkpoint 'vae' are not cached in /c")

    tensor = ChecksumMismatchError(
        name="llm", path="hub", what="tensor 'embed' of checkpoint 'llm' (hub)", expected=sha[0],
        recorded_by="tensor index t.json", actual=sha[1], note="The bytes were not kept.",
    )  # fmt: skip
    assert str(tensor) == (
        "pytest-ckpts: Checksum mismatch for tensor 'embed' of checkpoint 'llm' (hub)\n"
        f"  expected sha256: {sha[0]} (tensor index t.json)\n  actual sha256:   {sha[1]}\n"
        "The bytes were not kept."
    )
    off = CheckpointSkipped.disabled("vae", "PYTEST_CKPTS_MODE=skip")
    assert (off.entry, off.cause, off.source) == ("vae", "downloads disabled", off.source)
    assert (
        str(off)
        == "Checkpoint download skipped (PYTEST_CKPTS_MODE=skip). Cannot load checkpoint: vae"
    )

    gone = MirrorUnavailable(MirrorKind.MISSING, "/mnt/m/{sha256}", "no such file")
    assert (gone.mirror, gone.problem) == ("/mnt/m/{sha256}", "no such file")
    assert gone.text == "mirror /mnt/m/{sha256}: no such file"


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
