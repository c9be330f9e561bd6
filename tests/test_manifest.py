"""Manifest loading and validation (SPEC §2): every malformed case names file, entry, key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pytest_ckpts import ManifestError, load_manifest
from pytest_ckpts.manifest import find_manifest, project_root_for
from tests.helpers import one_entry, refused, write_manifest_text

SHA = "a" * 64

SEED_004 = """\
checkpoints:
  mp_20_vae:
    filename: dng_m4owq4i5_v0.ckpt
    hf_path: mp_20/vae/dng_m4owq4i5_v0.ckpt
    sha256: <to_be_calculated>
    description: "VAE model for MP-20 dataset"

  alex_mp_20_vae:
    filename: dng_j1jgz9t0_v1.ckpt
    hf_path: alex_mp_20/vae/dng_j1jgz9t0_v1.ckpt
    sha256: <to_be_calculated>
    description: "VAE model for Alex MP-20 dataset"

  mp_20_ldm:
    filename: ldm_rl_dng_xxq3a0mn.ckpt
    hf_path: mp_20/ldm/ldm_rl_dng_xxq3a0mn.ckpt
    sha256: <to_be_calculated>
    description: "LDM model for MP-20 dataset"

  alex_mp_20_ldm:
    filename: ldm_rl_dng_tuor5vgd.ckpt
    hf_path: alex_mp_20/ldm/ldm_rl_dng_tuor5vgd.ckpt
    sha256: <to_be_calculated>
    description: "LDM model for Alex MP-20 dataset"

config:
  hf_repo: "your-org/chemeleon2-checkpoints"
  cache_dir: "./checkpoints"
"""


def test_seed_004_manifest_loads_verbatim(project: Path) -> None:
    m = load_manifest(write_manifest_text(project, SEED_004))
    assert list(m.entries) == ["mp_20_vae", "alex_mp_20_vae", "mp_20_ldm", "alex_mp_20_ldm"]
    e = m.get("mp_20_vae")
    assert e.filename == "dng_m4owq4i5_v0.ckpt"
    assert e.hf_path == "mp_20/vae/dng_m4owq4i5_v0.ckpt"
    assert e.sha256 is None
    assert e.repo == "your-org/chemeleon2-checkpoints"
    assert e.revision == "main"
    assert e.repo_type == "model"
    assert e.description == "VAE model for MP-20 dataset"
    assert m.root == project
    assert m.cache_dir == project / "checkpoints"
    assert m.unverified == list(m.entries)


def test_optional_keys_and_config_defaults(project: Path) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    m = load_manifest(
        write_manifest_text(
            project,
            f"""
            checkpoints:
              a:
                hf_path: x/a.ckpt
                sha256: "{SHA.upper()}"
                size: 12
              b:
                hf_path: b.safetensors
                repo: other/repo
                revision: "{commit}"
                repo_type: dataset
            config:
              hf_repo: org/repo
              revision: v1.0
              endpoint: http://127.0.0.1:8000/
            """,
        )
    )
    a, b = m.get("a"), m.get("b")
    assert a.sha256 == SHA  # normalised to lower case
    assert a.filename == "a.ckpt"  # defaults to the hf_path basename
    assert (a.revision, a.repo, a.size, a.pinned) == ("v1.0", "org/repo", 12, False)
    assert (b.repo, b.revision, b.repo_type, b.pinned) == ("other/repo", commit, "dataset", True)
    assert m.endpoint == "http://127.0.0.1:8000"


def test_cache_dir_resolves_against_project_root_not_cwd(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_manifest_text(
        project,
        """
        checkpoints: {}
        config: {hf_repo: org/repo, cache_dir: ../shared-cache}
        """,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_manifest(path).cache_dir == tmp_path / "shared-cache"


def test_manifest_outside_checkpoints_dir_uses_its_own_dir(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "ckpts.yaml"
    path.parent.mkdir()
    path.write_text("checkpoints: {}\nconfig: {hf_repo: o/r}\n")
    assert project_root_for(path) == tmp_path / "conf"
    assert load_manifest(path).cache_dir is None  # huggingface_hub's own cache


def test_find_manifest_walks_up_and_env_wins(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_manifest_text(project, SEED_004)
    deep = project / "src" / "pkg"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    assert find_manifest() == path
    assert load_manifest().path == path
    other = tmp_path / "other.yaml"
    other.write_text("checkpoints: {}\nconfig: {hf_repo: o/r}\n")
    monkeypatch.setenv("PYTEST_CKPTS_MANIFEST", str(other))
    assert find_manifest() == other
    monkeypatch.setenv("PYTEST_CKPTS_MANIFEST", "")  # empty counts as unset
    assert find_manifest() == path


def test_no_manifest_found_says_how_to_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ManifestError, match="PYTEST_CKPTS_MANIFEST"):
        load_manifest()


BAD_CASES = {
    "yaml_syntax": ("checkpoints:\n  a: [unclosed\n", None, None, "YAML syntax error"),
    "top_not_mapping": ("- just\n- a list\n", None, None, "must be a mapping"),
    "empty_file": ("", None, None, "empty"),
    "missing_checkpoints": ("config:\n  hf_repo: o/r\n", None, "checkpoints", "missing"),
    "unknown_top_key": (
        "checkpoint:\n  a: {hf_path: a}\n",
        None,
        "checkpoint",
        "Did you mean 'checkpoints'",
    ),
    "entry_not_mapping": (
        "checkpoints:\n  a: just-a-string\nconfig: {hf_repo: o/r}\n",
        "a",
        None,
        "must be a mapping",
    ),
    "missing_hf_path": (
        "checkpoints:\n  a:\n    filename: a.ckpt\nconfig: {hf_repo: o/r}\n",
        "a",
        "hf_path",
        "missing required key",
    ),
    "sha_not_hex": (
        "checkpoints:\n  a:\n    hf_path: a.ckpt\n    sha256: abc123\nconfig: {hf_repo: o/r}\n",
        "a",
        "sha256",
        "not a sha256",
    ),
    "sha_read_as_number": (
        "checkpoints:\n  a:\n    hf_path: a.ckpt\n    sha256: "
        + "1" * 64
        + "\nconfig: {hf_repo: o/r}\n",
        "a",
        "sha256",
        "Quote it",
    ),
    "unknown_entry_key": (
        "checkpoints:\n  a:\n    hf_path: a.ckpt\n    sha265: x\nconfig: {hf_repo: o/r}\n",
        "a",
        "sha265",
        "Did you mean 'sha256'",
    ),
    "unknown_config_key": (
        "checkpoints: {}\nconfig:\n  hf_rep: o/r\n",
        None,
        "hf_rep",
        "Did you mean 'hf_repo'",
    ),
    "no_repo": ("checkpoints:\n  a:\n    hf_path: a.ckpt\n", "a", "repo", "config.hf_repo"),
    "revision_number": (
        "checkpoints:\n  a:\n    hf_path: a.ckpt\n    revision: 1.0\nconfig: {hf_repo: o/r}\n",
        "a",
        "revision",
        "Quote it",
    ),
    "revision_list": (
        "checkpoints:\n  a:\n    hf_path: a.ckpt\n    revision: [main]\nconfig: {hf_repo: o/r}\n",
        "a",
        "revision",
        "must be a string",
    ),
    "absolute_hf_path": (
        "checkpoints:\n  a:\n    hf_path: /etc/passwd\nconfig: {hf_repo: o/r}\n",
        "a",
        "hf_path",
        "relative",
    ),
    "dotdot_hf_path": (
        "checkpoints:\n  a:\n    hf_path: x/../../a.ckpt\nconfig: {hf_repo: o/r}\n",
        "a",
        "hf_path",
        "'..'",
    ),
    "duplicate_entry": (
        "checkpoints:\n  a: {hf_path: a.ckpt}\n  a: {hf_path: b.ckpt}\nconfig: {hf_repo: o/r}\n",
        "a",
        None,
        "defined twice",
    ),
    "filename_clash": (
        "checkpoints:\n  a: {hf_path: x/m.ckpt}\n  b: {hf_path: y/m.ckpt}\nconfig: {hf_repo: o/r}\n",
        "b",
        "filename",
        "also used by entry 'a'",
    ),
    "bad_repo_type": (
        "checkpoints:\n  a: {hf_path: a.ckpt, repo_type: space}\nconfig: {hf_repo: o/r}\n",
        "a",
        "repo_type",
        "model, dataset",
    ),
    "bad_size": (
        "checkpoints:\n  a: {hf_path: a.ckpt, size: -1}\nconfig: {hf_repo: o/r}\n",
        "a",
        "size",
        "non-negative",
    ),
    "bad_endpoint": (
        "checkpoints: {}\nconfig: {hf_repo: o/r, endpoint: ftp://x}\n",
        None,
        "endpoint",
        "http(s) URL",
    ),
    "bad_repo_id": (
        "checkpoints: {}\nconfig: {hf_repo: 'not a repo'}\n",
        None,
        "hf_repo",
        "org/name",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_malformed_manifest_names_file_entry_and_key(project: Path, case: str) -> None:
    text, entry, key, fragment = BAD_CASES[case]
    path = project / "checkpoints" / "checkpoints.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    message = str(info.value)
    assert message.startswith("pytest-ckpts: invalid manifest")
    assert os.fspath(path) in message
    assert fragment in message
    if entry is not None:
        assert f"entry '{entry}'" in message
        assert info.value.entry == entry
    if key is not None:
        assert f"key '{key}'" in message
        assert info.value.key == key


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="file not found"):
        load_manifest(tmp_path / "nope.yaml")


def test_error_reports_line_number(project: Path) -> None:
    path = write_manifest_text(
        project, "checkpoints:\n  a:\n    hf_path: a.ckpt\n    bogus: 1\nconfig: {hf_repo: o/r}\n"
    )
    with pytest.raises(ManifestError, match=r"checkpoints\.yaml:4"):
        load_manifest(path)


def test_unknown_name_suggests_close_matches(project: Path) -> None:
    m = load_manifest(write_manifest_text(project, SEED_004))
    with pytest.raises(KeyError, match="not found in config") as info:
        m.get("mp_20_vea")
    assert "'mp_20_vae'" in str(info.value)


def test_atomic_writes_get_the_umask_mode_not_0600(tmp_path: Path) -> None:
    from pytest_ckpts.integrity import atomic_write_bytes

    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "f.json", b"{}")
    finally:
        os.umask(old)
    assert (tmp_path / "f.json").stat().st_mode & 0o777 == 0o644


SHA_AB = "ab" * 32


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
    path = write_manifest_text(project, one_entry(hf_path="a.ckpt", sha256=f'"{SHA_AB}"'))
    first = load_manifest(path)
    assert load_manifest(path) is first
    assert load_manifest(str(path)) is first
    with pytest.raises(TypeError):
        first.entries["b"] = first.get("a")  # type: ignore[index]
    other = "cd" * 32
    path.write_text(path.read_text().replace(SHA_AB, other))  # same size, same second
    again = load_manifest(path)
    assert again.get("a").sha256 == other
    assert again is not first
    path.write_text("checkpoints: [\n")
    refused(path)  # a broken file is never served from the cache
    refused(path)
