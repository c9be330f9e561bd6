"""The manifest's YAML reader (pytest_ckpts._yaml): bounded aliases, merges, nesting and size; encodings; the pure-Python parser agrees with the C one. Every refusal is one line naming file:line."""

from __future__ import annotations

import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

from pytest_ckpts import load_manifest
from pytest_ckpts.errors import YamlProblem
from tests.helpers import one_entry, refused, write_manifest_text

SHA = "ab" * 32


def laughs(levels: int) -> str:
    """The billion-laughs bomb: each level is a list of nine aliases of the previous one."""
    rows = ["&l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    rows += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "checkpoints:\n  a:\n    hf_path: a.ckpt\n    description: [" + ", ".join(rows) + "]\n"


PARITY = """\
config: {hf_repo: &r org/repo}
checkpoints:
  base: &d {hf_path: "b.ckpt", size: 3, revision: v1}
  vae:
    <<: *d
    hf_path: 'vae/m.ckpt'
    description: |
      two
      lines
    repo: *r
"""


def test_alias_bomb_fails_fast_with_bounded_memory(project: Path) -> None:
    text = laughs(9)  # 9**9 = 387 million nodes when expanded
    assert len(text) < 600
    path = write_manifest_text(project, text)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        error = refused(path)
        seconds = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "alias bomb" in str(error)
    assert error.line == 4
    assert seconds < 1.0
    assert peak < 20 * 1024 * 1024


def test_merge_key_bomb_is_refused(project: Path) -> None:
    rows = ["m0: &m0 {k0: 1, k1: 2, k2: 3, k3: 4, k4: 5, k5: 6, k6: 7, k7: 8, k8: 9}"]
    rows += [f"m{i}: &m{i} {{<<: [{', '.join([f'*m{i - 1}'] * 9)}]}}" for i in range(1, 9)]
    text = "checkpoints:\n  a:\n    hf_path: a.ckpt\n    description:\n"
    text += "".join(f"      {row}\n" for row in rows)
    started = time.perf_counter()
    assert "alias bomb" in str(refused(write_manifest_text(project, text)))
    assert time.perf_counter() - started < 1.0


def test_ordinary_anchors_aliases_and_merges_still_load(project: Path) -> None:
    path = write_manifest_text(
        project,
        f"""
        config:
          hf_repo: &main_repo org/main
        checkpoints:
          base: &defaults
            hf_path: shared/base.ckpt
            repo: &other org/other
            revision: &rev v1.2
            sha256: &digest "{SHA}"
            description: shared settings
          vae:
            <<: *defaults
            hf_path: vae/model.ckpt
            sha256: *digest
          ldm:
            <<: [*defaults, {{repo: ignored/by-first-wins, size: 7}}]
            hf_path: ldm/model.ckpt
            repo: *main_repo
          dataset:
            hf_path: d.bin
            repo: *other
            revision: *rev
        """,
    )
    m = load_manifest(path)
    vae, ldm, dataset = m.get("vae"), m.get("ldm"), m.get("dataset")
    assert (vae.hf_path, vae.repo, vae.revision, vae.sha256) == (
        "vae/model.ckpt",
        "org/other",
        "v1.2",
        SHA,
    )
    assert vae.description == "shared settings"
    assert (ldm.repo, ldm.size, ldm.revision) == ("org/main", 7, "v1.2")
    assert (dataset.repo, dataset.revision) == ("org/other", "v1.2")


def test_sha256_alias_takes_the_aliased_value_then_is_validated(project: Path) -> None:
    good = write_manifest_text(
        project,
        f"""
        checkpoints:
          a: {{hf_path: a.ckpt, sha256: &h "{SHA.upper()}"}}
          b: {{hf_path: b.ckpt, sha256: *h}}
        config: {{hf_repo: o/r}}
        """,
    )
    assert load_manifest(good).get("b").sha256 == SHA
    bad = write_manifest_text(
        project,
        f"""
        checkpoints:
          a: {{hf_path: a.ckpt, description: &n {"1" * 64}}}
          b: {{hf_path: b.ckpt, sha256: *n}}
        config: {{hf_repo: o/r}}
        """,
    )
    error = refused(bad)
    assert (error.entry, error.key) == ("a", "description")  # the number fails where it is
    bad.write_text(bad.read_text().replace("description: &n", "size: &n"))
    error = refused(bad)
    assert (error.entry, error.key) == ("b", "sha256")
    assert "Quote it" in str(error)


@pytest.mark.parametrize(
    ("text", "fragment", "line"),
    [
        ("checkpoints:\n  a: {hf_path: *nope}\n", "no matching anchor &nope", 2),
        ("checkpoints: &c\n  a: {hf_path: a.ckpt, description: *c}\n", "its own anchor", 2),
        ("checkpoints:\n  a: &x {hf_path: a.ckpt}\n  b: &x {hf_path: b.ckpt}\n", "twice", 3),
        ("checkpoints:\n  a: {<<: just-a-string, hf_path: a.ckpt}\n", "'<<' must merge", 2),
        ("checkpoints: {}\n---\ncheckpoints: {}\n", "second one", 2),
    ],
)
def test_alias_and_document_mistakes(project: Path, text: str, fragment: str, line: int) -> None:
    error = refused(write_manifest_text(project, text))
    assert fragment in str(error)
    assert error.line == line


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("!!python/object/apply:os.system ['echo pwned']", "!!python/object/apply:os.system"),
        ("!!python/name:os.system ''", "!!python/name:os.system"),
        ("!foo bar", "!foo"),
        ("!!binary aGVsbG8=", "!!binary"),
        ("!!set {a, b}", "!!set"),
    ],
)
def test_tags_other_than_plain_types_are_refused(project: Path, value: str, shown: str) -> None:
    error = refused(write_manifest_text(project, one_entry(hf_path="a.ckpt", description=value)))
    assert f"unsupported YAML tag {shown}" in str(error)
    assert error.line == 4


def test_plain_type_tags_work(project: Path) -> None:
    m = load_manifest(
        write_manifest_text(project, one_entry(hf_path="!!str a.ckpt", revision="!!str 1.0"))
    )
    assert m.get("a").revision == "1.0"


@pytest.mark.parametrize(
    "text",
    [
        "checkpoints:\n  a: " + "[" * 20_000 + "]" * 20_000 + "\n",
        "checkpoints:\n  a: " + "{x: " * 20_000 + "1" + "}" * 20_000 + "\n",
        "checkpoints:\n  a:\n" + "    " + "- " * 20_000 + "x\n",
    ],
    ids=["brackets", "braces", "block-sequences"],
)
def test_deep_nesting_is_refused_without_recursion(project: Path, text: str) -> None:
    error = refused(write_manifest_text(project, text))
    assert "nested more than" in str(error)
    assert error.line == 2 or error.line == 3


def test_nesting_that_crashes_a_c_composer_is_refused_in_a_real_process(project: Path) -> None:
    path = write_manifest_text(
        project, "checkpoints:\n  a: " + "[" * 400_000 + "]" * 400_000 + "\n"
    )
    code = (
        "import sys\nfrom pytest_ckpts import ManifestError, load_manifest\n"
        "try:\n    load_manifest(sys.argv[1])\n"
        "except ManifestError as exc:\n    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "nested more than" in out.stdout


def test_raw_control_byte_in_the_file_is_one_line_with_its_line(project: Path) -> None:
    error = refused(write_manifest_text(project, b"checkpoints:\n  a:\n    hf_path: a\x00.ckpt\n"))
    assert "YAML syntax error" in str(error)
    assert error.line == 3


def test_file_that_is_not_utf8(project: Path) -> None:
    error = refused(write_manifest_text(project, b"checkpoints:\n  a:\n    description: caf\xe9\n"))
    assert "not UTF-8" in str(error)
    assert error.line == 3
    utf16 = "checkpoints: {}\nconfig: {hf_repo: o/r}\n".encode("utf-16")
    assert "UTF-16" in str(refused(write_manifest_text(project, utf16)))


def test_utf8_bom_is_fine(project: Path) -> None:
    path = write_manifest_text(project, b"\xef\xbb\xbfcheckpoints: {}\nconfig: {hf_repo: o/r}\n")
    assert len(load_manifest(path)) == 0


def test_huge_file_is_refused_before_parsing(project: Path) -> None:
    path = write_manifest_text(project, b"checkpoints: {}\n# " + b"x" * (16 * 1024 * 1024) + b"\n")
    started = time.perf_counter()
    assert "larger than 16 MiB" in str(refused(path))
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize(
    "text",
    [
        PARITY,
        "checkpoints:\n  a: [unclosed\n",
        "checkpoints:\n  a: {hf_path: !foo x}\n",
        "checkpoints:\n  a:\n    b: *nope\n",
        "checkpoints:\n  a: " + "[" * 100 + "]" * 100 + "\n",
    ],
)
def test_pure_python_parser_gives_the_same_graph_and_errors(text: str) -> None:
    """Without libyaml (or with c_parser=False) nodes, lines and errors are the same."""
    from pytest_ckpts import _yaml

    def outline(c_parser: bool) -> object:
        try:
            doc = _yaml.compose(text, c_parser=c_parser)
        except YamlProblem as exc:
            # libyaml and PyYAML word syntax errors differently; ours must match exactly
            syntax = exc.message.startswith("YAML syntax error")
            return ("error", "YAML syntax error" if syntax else exc.message, exc.line)
        seen: list[object] = []
        stack = [doc.root]
        while stack:
            node = stack.pop()
            assert node is not None
            seen.append((type(node).__name__, node.tag, node.start_mark.line))
            if isinstance(node.value, str):
                seen.append(node.value)
            else:
                for item in reversed(node.value):
                    stack.extend(reversed(item) if isinstance(item, tuple) else [item])
        return seen

    assert outline(c_parser=True) == outline(c_parser=False)
