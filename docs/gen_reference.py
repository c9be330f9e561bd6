"""Generate the reference pages of the documentation site from the code.

    python docs/gen_reference.py            # rewrite docs/reference/
    python docs/gen_reference.py --check    # exit 1 if a page is out of date

Nothing in ``docs/reference/`` is written by hand: options, ini keys and environment
variables come from a real pytest ``Config`` (the plugin's parser group ``ckpts``) and
``pytest_ckpts.settings``; CLI commands from the argparse parser of ``pytest_ckpts.cli``;
fixtures from the fixtures pytest registers for the plugin; hooks from
``pytest_ckpts.hookspecs``; manifest keys from the key declarations of
``pytest_ckpts.manifest``; error types from ``pytest_ckpts.errors``; the JSON report
schema from ``pytest_ckpts.stats``. The few descriptions the code does not carry
(manifest keys, report fields, non-setting environment variables) are the tables of
``docs/gen_reference_tables.py``; a key the code declares and a table lacks is rendered
with a "not documented" note and fails ``tests/test_docs_reference.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import io
import json
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gen_reference_data import (
    render_api,
    render_errors,
    render_index,
    render_manifest,
    render_report,
    report_schema,
)
from gen_reference_render import (
    REGENERATE,
    ROOT,
    Collected,
    render_cli,
    render_fixtures,
    render_hooks,
    render_options,
)
from gen_reference_tables import API_PAGES

OUT = ROOT / "docs" / "reference"


# --------------------------------------------------------------------------- collection


def collect_from_pytest() -> Collected:
    """Start a real pytest run (collect only, in an empty directory) and read what the
    plugin registered: its option group, its ini keys and its fixtures."""
    import pytest

    found: dict[str, Any] = {}

    class Grab:
        def pytest_collection_finish(self, session: pytest.Session) -> None:
            parser = session.config._parser
            group = next(g for g in parser._groups if g.name == "ckpts")
            found["group_description"] = (
                getattr(group, "description", None) or group._arggroup.title
            )
            found["options"] = [{"names": opt.names(), **opt.attrs()} for opt in group.options]
            found["ini"] = {
                name: value for name, value in parser._inidict.items() if name.startswith("ckpts")
            }
            fixtures = []
            for name, defs in session._fixturemanager._arg2fixturedefs.items():
                for fdef in defs:
                    func = fdef.func
                    if getattr(func, "__module__", "").startswith("pytest_ckpts"):
                        fixtures.append({"name": name, "scope": fdef.scope, "func": func})
            found["fixtures"] = sorted(fixtures, key=lambda f: f["name"])

    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
        with contextlib.redirect_stdout(io.StringIO()) as out:
            rc = pytest.main(
                ["--collect-only", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
                 "-c", str(Path(tmp, "pytest.ini")), "--rootdir", tmp, tmp],
                plugins=[Grab()],
            )  # fmt: skip
    if "options" not in found:
        raise SystemExit(f"gen_reference: pytest did not start (exit {rc}):\n{out.getvalue()}")
    return Collected(
        options=found["options"],
        ini=found["ini"],
        fixtures=found["fixtures"],
        group_description=found["group_description"],
    )


# --------------------------------------------------------------------------- main


def generate() -> dict[str, str]:
    sys.path.insert(0, str(ROOT))
    collected = collect_from_pytest()
    schema = report_schema()
    pages: dict[str, str] = {
        "options.md": render_options(collected),
        "cli.md": render_cli(),
        "fixtures.md": render_fixtures(collected),
        "hooks.md": render_hooks(),
        "manifest.md": render_manifest(),
        "report.md": render_report(schema),
        "report.schema.json": json.dumps(schema, indent=2) + "\n",
        "errors.md": render_errors(),
    }
    for page, title, modules in API_PAGES:
        pages[page] = render_api(title, modules)
    pages = {"index.md": render_index(pages), **pages}
    return {name: re.sub(r"\n{3,}", "\n\n", text) for name, text in pages.items()}


def write(pages: dict[str, str], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, text in pages.items():
        (out / name).write_text(text, encoding="utf-8")


def check(pages: dict[str, str], out: Path) -> list[str]:
    """Names of pages that differ from ``out`` (missing, changed or left over)."""
    stale = []
    for name, text in pages.items():
        path = out / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(name)
    if out.is_dir():
        stale += sorted(p.name for p in out.iterdir() if p.name not in pages)
    return stale


def diff(pages: dict[str, str], out: Path, name: str) -> str:
    path = out / name
    old = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    new = pages.get(name, "").splitlines()
    return "\n".join(difflib.unified_diff(old, new, str(path), f"{name} (generated)", lineterm=""))


def main(argv: list[str] | None = None, emit: Callable[[str], object] = print) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out", type=Path, default=OUT, help="directory to write (default: %(default)s)"
    )
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if out of date")
    args = ap.parse_args(argv)
    pages = generate()
    if args.check:
        stale = check(pages, args.out)
        for name in stale:
            emit(diff(pages, args.out, name))
        if stale:
            emit(f"out of date: {', '.join(stale)}; regenerate with `{REGENERATE}`")
            return 1
        return 0
    write(pages, args.out)
    for name in check(pages, args.out):  # files no generator writes any more
        (args.out / name).unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
