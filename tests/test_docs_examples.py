"""Every code example of the site and the README runs (tests/doc_examples.py says how)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pytest_ckpts.testing import LocalHub
from tests.doc_examples import OUTPUT, ROOT, ExampleError, PageRun, pages, parse, runnable

RUNNABLE = [p for p in pages() if runnable(p)]


def _id(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


@pytest.mark.slow
@pytest.mark.parametrize("page", RUNNABLE, ids=_id)
def test_page_examples_run(page: Path, tmp_path: Path, hub: LocalHub) -> None:
    run = PageRun(page, tmp_path / "project", hub)
    run.run(parse(page))
    assert run.ran, f"{_id(page)}: no example ran"


def test_every_block_is_run_or_says_why_not() -> None:
    """A block is an example that runs, an example skipped with a reason, or output."""
    problems = []
    for page in pages():
        for block in parse(page):
            if block.kind is None and block.lang not in OUTPUT:
                problems.append(f"{block.where}: language {block.lang!r} is neither run nor output")
            if block.kind is None and block.directives:
                problems.append(f"{block.where}: annotations on an output block")
    assert not problems, "\n".join(problems)


def test_the_readme_and_the_guides_have_examples_that_run() -> None:
    names = {_id(p) for p in RUNNABLE}
    assert {"README.md", "docs/getting-started/first-test.md", "docs/how-to/ci.md"} <= names


def test_readme_is_the_front_door() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    # .ci/run installs and tests exactly as the README's second set-up command says
    assert 'pip install torch==2.13.0 && pip install -e ".[dev]" && python -m pytest -n 2' in readme
    assert "pip install -q torch==2.13.0" in ci
    assert 'pip install -q -e ".[dev]"' in ci
    assert "python -m pytest -n 2\n" in ci
    assert "pytest examples/demo && pytest examples/demo" in readme
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", readme):
        assert (ROOT / target).exists(), f"README links to {target}, which does not exist"


_CITATION = re.compile(r'(README|docs/[\w./-]+\.md)\s+"([^"\n]+)"')


def _headings(page: Path) -> set[str]:
    text = page.read_text(encoding="utf-8")
    found = re.findall(r"^#+ (.+?)(?: \{#[^}]*\})?\s*$", text, re.M)
    return {h.replace("`", "").strip() for h in found}


def test_code_and_docs_cite_sections_that_exist() -> None:
    """Docstrings and pages point at documentation as `docs/x.md "Heading"` (or
    `README "Heading"`); a section moved or renamed must not leave them dangling."""
    sources = [
        *(ROOT / "pytest_ckpts").rglob("*.py"),
        *(ROOT / "examples").rglob("*.py"),
        *(p for p in (ROOT / "tests").rglob("*.py") if p != Path(__file__).resolve()),
        *(ROOT / ".github" / "workflows").glob("*.yml"),
        *(p for p in (ROOT / "docs").rglob("*.md") if "reference" not in p.parts),
        ROOT / "CONTRIBUTING.md",
    ]
    dangling = []
    for source in sources:
        for page, heading in _CITATION.findall(source.read_text(encoding="utf-8")):
            target = ROOT / ("README.md" if page == "README" else page)
            if not target.is_file() or heading.replace("`", "") not in _headings(target):
                dangling.append(f'{source.relative_to(ROOT)}: {page} "{heading}"')
    assert not dangling, "citations of sections that do not exist:\n" + "\n".join(dangling)


# --------------------------------------------------------------------------- the runner itself


def _page(tmp_path: Path, text: str) -> Path:
    page = tmp_path / "page.md"
    page.write_text(text, encoding="utf-8")
    return page


def test_a_failing_script_names_its_page_and_line(tmp_path: Path, hub: LocalHub) -> None:
    page = _page(
        tmp_path, "# t\n\n```python\nprint('ok')\n```\n\n```python\nraise SystemExit(3)\n```\n"
    )
    run = PageRun(page, tmp_path / "project", hub)
    with pytest.raises(ExampleError, match=r"page\.md:7 \(python block\): python: exit 3"):
        run.run(parse(page))
    assert len(run.ran) == 1


@pytest.mark.slow
def test_a_failing_test_block_fails_and_expect_accepts_it(tmp_path: Path, hub: LocalHub) -> None:
    body = "```python\ndef test_no():\n    assert False\n```\n"
    page = _page(tmp_path, body)
    with pytest.raises(ExampleError, match="exit 1, expected 0"):
        PageRun(page, tmp_path / "p1", hub).run(parse(page))
    page = _page(tmp_path, "<!-- example: expect failed=1 -->\n" + body)
    PageRun(page, tmp_path / "p2", hub).run(parse(page))


def test_a_manifest_block_is_validated_and_served(tmp_path: Path, hub: LocalHub) -> None:
    page = _page(
        tmp_path,
        "```yaml\ncheckpoints:\n  a:\n    hf_pth: x.ckpt\nconfig:\n  hf_repo: org/r\n```\n",
    )
    with pytest.raises(ExampleError, match="Did you mean 'hf_path'"):
        PageRun(page, tmp_path / "p1", hub).run(parse(page))
    page = _page(
        tmp_path,
        "```yaml\ncheckpoints:\n  a:\n    hf_path: w/x.ckpt\nconfig:\n  hf_repo: org/r\n```\n"
        "```bash\npytest-ckpts fetch a\n```\n",
    )
    PageRun(page, tmp_path / "p2", hub).run(parse(page))
    assert hub.file_bytes("org/r", "w/x.ckpt")[:2] == b"PK"  # the demo's torch file


def test_a_report_sample_is_checked_against_the_schema(tmp_path: Path, hub: LocalHub) -> None:
    page = _page(tmp_path, '```json\n{"checkpoints": [{"name": "a", "status": "great"}]}\n```\n')
    with pytest.raises(ExampleError, match="not a valid report"):
        PageRun(page, tmp_path / "project", hub).run(parse(page))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<!-- example: skip -->\n```bash\nls\n```\n", "needs a reason"),
        ("<!-- example: run -->\n```bash\nls\n```\n", "unknown annotation"),
        ("<!-- example: skip why\n", "never closed"),
        ("text\n<!-- example: skip because -->\n", "not followed by a code block"),
    ],
)
def test_bad_annotations_are_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ExampleError, match=message):
        parse(_page(tmp_path, text))
