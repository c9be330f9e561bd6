"""Manifest field validation (pytest_ckpts._manifest_fields): control characters, revisions that could become paths, relative hf_path, plain filenames, repo ids, tensor_index. Each refusal names file:line, entry and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_ckpts import load_manifest
from tests.helpers import one_entry, refused, write_manifest_text

SHA = "ab" * 32


COMMIT = "0123456789abcdef0123456789abcdef01234567"


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


def test_nul_in_hf_path_is_refused(project: Path) -> None:
    error = refused(write_manifest_text(project, one_entry(hf_path='"weights/a\\0.ckpt"')))
    assert (error.entry, error.key, error.line) == ("a", "hf_path", 3)
    assert "control character" in str(error)


@pytest.mark.parametrize("key", ["hf_path", "filename", "revision", "repo", "description"])
def test_escape_sequences_in_values_are_refused(project: Path, key: str) -> None:
    keys = {"hf_path": "a.ckpt", key: '"a\\x1b[31mb"'}
    error = refused(write_manifest_text(project, one_entry(**keys)))
    assert (error.entry, error.key) == ("a", key)


def test_description_keeps_tabs_and_newlines(project: Path) -> None:
    m = load_manifest(
        write_manifest_text(project, one_entry(hf_path="a.ckpt", description='"one\\ttwo\\nthree"'))
    )
    assert m.get("a").description == "one\ttwo\nthree"


def test_huge_value_is_shown_short(project: Path) -> None:
    error = refused(write_manifest_text(project, one_entry(hf_path="a.ckpt", repo="x" * 100_000)))
    assert error.key == "repo"  # refused() checks the message stays short


@pytest.mark.parametrize("revision", GOOD_REVISIONS)
def test_real_revisions_are_accepted(project: Path, revision: str) -> None:
    m = load_manifest(
        write_manifest_text(project, one_entry(hf_path="a.ckpt", revision=f'"{revision}"'))
    )
    assert m.get("a").revision == revision


@pytest.mark.parametrize("revision", sorted(BAD_REVISIONS))
def test_revisions_that_could_become_paths_are_refused(project: Path, revision: str) -> None:
    error = refused(
        write_manifest_text(project, one_entry(hf_path="a.ckpt", revision=f'"{revision}"'))
    )
    assert (error.entry, error.key, error.line) == ("a", "revision", 4)
    fragment = BAD_REVISIONS[revision]
    assert fragment in str(error)
    if fragment != "control character":
        assert "refs/pr/3" in str(error)  # says what a good one looks like


def test_config_revision_is_checked_too(project: Path) -> None:
    error = refused(
        write_manifest_text(project, "checkpoints: {}\nconfig: {hf_repo: o/r, revision: ../x}\n")
    )
    assert (error.entry, error.key) == (None, "revision")


def test_revision_problem_is_public() -> None:
    from pytest_ckpts.manifest import revision_problem

    assert revision_problem("refs/pr/3") is None
    assert revision_problem("../x") is not None


@pytest.mark.parametrize(
    "hf_path", ["C:/x.ckpt", "c:x.ckpt", "a\\\\b.ckpt", "dir/", "/a.ckpt", "a/../../b", "a/./b"]
)
def test_hf_path_must_stay_relative(project: Path, hf_path: str) -> None:
    error = refused(write_manifest_text(project, one_entry(hf_path=f'"{hf_path}"')))
    assert (error.entry, error.key) == ("a", "hf_path")


@pytest.mark.parametrize("filename", ["../x.ckpt", "C:x.ckpt", "a\\\\b", "..", ".", "d/x"])
def test_filename_is_a_plain_name(project: Path, filename: str) -> None:
    error = refused(
        write_manifest_text(project, one_entry(hf_path="a.ckpt", filename=f'"{filename}"'))
    )
    assert (error.entry, error.key) == ("a", "filename")


@pytest.mark.parametrize(
    "repo", ["a/b/c", "-a/b", "a-/b", "a--b/c", "o/r.git", "o/a..b", "o/" + "x" * 97, "o/nä"]
)
def test_repo_ids_follow_the_hub_rules(project: Path, repo: str) -> None:
    error = refused(write_manifest_text(project, one_entry(hf_path="a.ckpt", repo=f'"{repo}"')))
    assert (error.entry, error.key) == ("a", "repo")


@pytest.mark.parametrize("repo", ["gpt2", "org/name", "Org_1/na.me-2", "_x/y_", "o/" + "x" * 96])
def test_hub_repo_ids_are_accepted(project: Path, repo: str) -> None:
    assert (
        load_manifest(write_manifest_text(project, one_entry(hf_path="a.ckpt", repo=repo)))
        .get("a")
        .repo
        == repo
    )


def test_tensor_index_is_optional_hex(project: Path) -> None:
    m = load_manifest(
        write_manifest_text(project, one_entry(hf_path="a.ckpt", tensor_index=f'"{SHA.upper()}"'))
    )
    assert m.get("a").tensor_index == SHA
    assert (
        load_manifest(write_manifest_text(project, one_entry(hf_path="a.ckpt")))
        .get("a")
        .tensor_index
        is None
    )


@pytest.mark.parametrize(
    ("value", "fragment"),
    [("1" * 64, "Quote it"), ("abc", "lock --tensors a"), ("[x]", "got list")],
)
def test_bad_tensor_index(project: Path, value: str, fragment: str) -> None:
    error = refused(write_manifest_text(project, one_entry(hf_path="a.ckpt", tensor_index=value)))
    assert (error.entry, error.key) == ("a", "tensor_index")
    assert fragment in str(error)
