"""Hostile and odd manifests: every one is refused with one line naming file:line, entry, key.

A pull request can edit the manifest, and every process of a run parses it, so parsing
must stay bounded (alias bombs, deep nesting, huge files), must never build Python
objects from tags, and nothing in it may become a path outside the cache.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import pytest

from pytest_ckpts import ManifestError, load_manifest
from pytest_ckpts.errors import YamlProblem

pytest_plugins = ["pytester"]

SHA = "ab" * 32
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def write(project: Path, text: str | bytes) -> Path:
    path = project / "checkpoints" / "checkpoints.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def refused(path: Path) -> ManifestError:
    """Load ``path``, expect a ManifestError and check it is one line naming the file."""
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    message = str(info.value)
    assert "\n" not in message, message
    assert message.startswith("pytest-ckpts: invalid manifest "), message
    assert os.fspath(path) in message
    assert len(message) < 600, message
    return info.value


def entry(**keys: str) -> str:
    body = "".join(f"    {k}: {v}\n" for k, v in keys.items())
    return f"checkpoints:\n  a:\n{body}config: {{hf_repo: o/r}}\n"


# --------------------------------------------------------------------------- aliases


def laughs(levels: int) -> str:
    """The billion-laughs bomb: each level is a list of nine aliases of the previous one."""
    rows = ["&l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    rows += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "checkpoints:\n  a:\n    hf_path: a.ckpt\n    description: [" + ", ".join(rows) + "]\n"


def test_alias_bomb_fails_fast_with_bounded_memory(project: Path) -> None:
    text = laughs(9)  # 9**9 = 387 million nodes when expanded
    assert len(text) < 600
    path = write(project, text)
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
    assert "alias bomb" in str(refused(write(project, text)))
    assert time.perf_counter() - started < 1.0


def test_ordinary_anchors_aliases_and_merges_still_load(project: Path) -> None:
    path = write(
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
    good = write(
        project,
        f"""
        checkpoints:
          a: {{hf_path: a.ckpt, sha256: &h "{SHA.upper()}"}}
          b: {{hf_path: b.ckpt, sha256: *h}}
        config: {{hf_repo: o/r}}
        """,
    )
    assert load_manifest(good).get("b").sha256 == SHA
    bad = write(
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
    error = refused(write(project, text))
    assert fragment in str(error)
    assert error.line == line


# --------------------------------------------------------------------------- tags, nesting


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
    error = refused(write(project, entry(hf_path="a.ckpt", description=value)))
    assert f"unsupported YAML tag {shown}" in str(error)
    assert error.line == 4


def test_plain_type_tags_work(project: Path) -> None:
    m = load_manifest(write(project, entry(hf_path="!!str a.ckpt", revision="!!str 1.0")))
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
    error = refused(write(project, text))
    assert "nested more than" in str(error)
    assert error.line == 2 or error.line == 3


def test_nesting_that_crashes_a_c_composer_is_refused_in_a_real_process(project: Path) -> None:
    path = write(project, "checkpoints:\n  a: " + "[" * 400_000 + "]" * 400_000 + "\n")
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


# --------------------------------------------------------------------------- bytes and text


def test_nul_in_hf_path_is_refused(project: Path) -> None:
    error = refused(write(project, entry(hf_path='"weights/a\\0.ckpt"')))
    assert (error.entry, error.key, error.line) == ("a", "hf_path", 3)
    assert "control character" in str(error)


@pytest.mark.parametrize("key", ["hf_path", "filename", "revision", "repo", "description"])
def test_escape_sequences_in_values_are_refused(project: Path, key: str) -> None:
    keys = {"hf_path": "a.ckpt", key: '"a\\x1b[31mb"'}
    error = refused(write(project, entry(**keys)))
    assert (error.entry, error.key) == ("a", key)


def test_description_keeps_tabs_and_newlines(project: Path) -> None:
    m = load_manifest(write(project, entry(hf_path="a.ckpt", description='"one\\ttwo\\nthree"')))
    assert m.get("a").description == "one\ttwo\nthree"


def test_raw_control_byte_in_the_file_is_one_line_with_its_line(project: Path) -> None:
    error = refused(write(project, b"checkpoints:\n  a:\n    hf_path: a\x00.ckpt\n"))
    assert "YAML syntax error" in str(error)
    assert error.line == 3


def test_file_that_is_not_utf8(project: Path) -> None:
    error = refused(write(project, b"checkpoints:\n  a:\n    description: caf\xe9\n"))
    assert "not UTF-8" in str(error)
    assert error.line == 3
    utf16 = "checkpoints: {}\nconfig: {hf_repo: o/r}\n".encode("utf-16")
    assert "UTF-16" in str(refused(write(project, utf16)))


def test_utf8_bom_is_fine(project: Path) -> None:
    path = write(project, b"\xef\xbb\xbfcheckpoints: {}\nconfig: {hf_repo: o/r}\n")
    assert len(load_manifest(path)) == 0


def test_huge_file_is_refused_before_parsing(project: Path) -> None:
    path = write(project, b"checkpoints: {}\n# " + b"x" * (16 * 1024 * 1024) + b"\n")
    started = time.perf_counter()
    assert "larger than 16 MiB" in str(refused(path))
    assert time.perf_counter() - started < 1.0


def test_huge_value_is_shown_short(project: Path) -> None:
    error = refused(write(project, entry(hf_path="a.ckpt", repo="x" * 100_000)))
    assert error.key == "repo"  # refused() checks the message stays short


# --------------------------------------------------------------------------- containment

GOOD_REVISIONS = [
    "main",
    "v1.2",
    "refs/pr/3",
    "refs/convert/parquet",
    "feature/new-vae",
    "release/2024.01",
    "user@host-branch",
    COMMIT,
]
BAD_REVISIONS = {
    "../../x/victim.txt": "'.'",
    "/etc/passwd": "starts with '/'",
    "a\\\\b": "git refuses",
    "a//b": "empty component",
    "main/": "empty component",
    "-rf": "starts with '-'",
    "main.lock": ".lock",
    "refs/heads/x.lock/y": ".lock",
    "v1.": "ends with '.'",
    "main@{1}": "@{",
    "@": "@{",
    "has space": "' '",
    "a~1": "'~'",
    "a^": "'^'",
    "a:b": "':'",
    "a?b": "'?'",
    "a*b": "'*'",
    "a[b": "'['",
    ".hidden": "'.'",
    "x/.y": "'.'",
    "a..b": "'..'",
    "a\\x01b": "control character",
    "r" * 256: "longer than 255",
}


@pytest.mark.parametrize("revision", GOOD_REVISIONS)
def test_real_revisions_are_accepted(project: Path, revision: str) -> None:
    m = load_manifest(write(project, entry(hf_path="a.ckpt", revision=f'"{revision}"')))
    assert m.get("a").revision == revision


@pytest.mark.parametrize("revision", sorted(BAD_REVISIONS))
def test_revisions_that_could_become_paths_are_refused(project: Path, revision: str) -> None:
    error = refused(write(project, entry(hf_path="a.ckpt", revision=f'"{revision}"')))
    assert (error.entry, error.key, error.line) == ("a", "revision", 4)
    fragment = BAD_REVISIONS[revision]
    assert fragment in str(error)
    if fragment != "control character":
        assert "refs/pr/3" in str(error)  # says what a good one looks like


def test_config_revision_is_checked_too(project: Path) -> None:
    error = refused(write(project, "checkpoints: {}\nconfig: {hf_repo: o/r, revision: ../x}\n"))
    assert (error.entry, error.key) == (None, "revision")


def test_revision_problem_is_public() -> None:
    from pytest_ckpts.manifest import revision_problem

    assert revision_problem("refs/pr/3") is None
    assert revision_problem("../x") is not None


@pytest.mark.parametrize(
    "hf_path", ["C:/x.ckpt", "c:x.ckpt", "a\\\\b.ckpt", "dir/", "/a.ckpt", "a/../../b", "a/./b"]
)
def test_hf_path_must_stay_relative(project: Path, hf_path: str) -> None:
    error = refused(write(project, entry(hf_path=f'"{hf_path}"')))
    assert (error.entry, error.key) == ("a", "hf_path")


@pytest.mark.parametrize("filename", ["../x.ckpt", "C:x.ckpt", "a\\\\b", "..", ".", "d/x"])
def test_filename_is_a_plain_name(project: Path, filename: str) -> None:
    error = refused(write(project, entry(hf_path="a.ckpt", filename=f'"{filename}"')))
    assert (error.entry, error.key) == ("a", "filename")


@pytest.mark.parametrize(
    "repo", ["a/b/c", "-a/b", "a-/b", "a--b/c", "o/r.git", "o/a..b", "o/" + "x" * 97, "o/nä"]
)
def test_repo_ids_follow_the_hub_rules(project: Path, repo: str) -> None:
    error = refused(write(project, entry(hf_path="a.ckpt", repo=f'"{repo}"')))
    assert (error.entry, error.key) == ("a", "repo")


@pytest.mark.parametrize("repo", ["gpt2", "org/name", "Org_1/na.me-2", "_x/y_", "o/" + "x" * 96])
def test_hub_repo_ids_are_accepted(project: Path, repo: str) -> None:
    assert load_manifest(write(project, entry(hf_path="a.ckpt", repo=repo))).get("a").repo == repo


# --------------------------------------------------------------------------- tensor_index


def test_tensor_index_is_optional_hex(project: Path) -> None:
    m = load_manifest(write(project, entry(hf_path="a.ckpt", tensor_index=f'"{SHA.upper()}"')))
    assert m.get("a").tensor_index == SHA
    assert load_manifest(write(project, entry(hf_path="a.ckpt"))).get("a").tensor_index is None


@pytest.mark.parametrize(
    ("value", "fragment"),
    [("1" * 64, "Quote it"), ("abc", "lock --tensors a"), ("[x]", "got list")],
)
def test_bad_tensor_index(project: Path, value: str, fragment: str) -> None:
    error = refused(write(project, entry(hf_path="a.ckpt", tensor_index=value)))
    assert (error.entry, error.key) == ("a", "tensor_index")
    assert fragment in str(error)


# --------------------------------------------------------------------------- not found, cache


def test_no_manifest_is_reported_as_not_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_ckpts.errors import ManifestNotFoundError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ManifestNotFoundError) as info:
        load_manifest()
    message = str(info.value)
    assert message.startswith("pytest-ckpts: no manifest found: ")
    assert "invalid" not in message
    for hint in (str(tmp_path), "checkpoints.yaml", "PYTEST_CKPTS_MANIFEST"):
        assert hint in message
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ManifestNotFoundError, match="file not found") as info:
        load_manifest(missing)
    assert info.value.path == missing
    # the library's words (SPEC §14): the variable; pytest and the CLI name their options
    assert "PYTEST_CKPTS_MANIFEST=PATH" in str(info.value)


def test_cli_says_no_manifest_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pytest_ckpts.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pytest-ckpts: no manifest found: ")
    assert "--manifest PATH" in err
    assert err.count("\n") == 1


def test_parsed_once_per_content(project: Path) -> None:
    path = write(project, entry(hf_path="a.ckpt", sha256=f'"{SHA}"'))
    first = load_manifest(path)
    assert load_manifest(path) is first
    assert load_manifest(str(path)) is first
    with pytest.raises(TypeError):
        first.entries["b"] = first.get("a")  # type: ignore[index]
    other = "cd" * 32
    path.write_text(path.read_text().replace(SHA, other))  # same size, same second
    again = load_manifest(path)
    assert again.get("a").sha256 == other
    assert again is not first
    path.write_text("checkpoints: [\n")
    refused(path)  # a broken file is never served from the cache
    refused(path)


def test_plugin_refuses_a_bomb_at_start_up_in_one_line(pytester: pytest.Pytester) -> None:
    (pytester.path / "checkpoints").mkdir()
    (pytester.path / "checkpoints" / "checkpoints.yaml").write_text(laughs(9))
    pytester.makepyfile(test_it="def test_plain():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=60)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: pytest-ckpts: invalid manifest *checkpoints.yaml:4: aliases expand*alias bomb*"]
    )
    assert "Traceback" not in result.stderr.str()


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
