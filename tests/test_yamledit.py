"""In-place manifest edits: byte-for-byte identical except the values we fill in."""

from __future__ import annotations

import pytest
import yaml

from pytest_ckpts.yamledit import set_entry_values

SHA = "ab" * 32
DIGITS = "1" * 64
COMMIT = "c" * 40

BEFORE = """\
# Checkpoints for the baseline tests.
checkpoints:
  # the VAE
  mp_20_vae:
    filename: dng_m4owq4i5_v0.ckpt          # local file name
    hf_path: mp_20/vae/dng_m4owq4i5_v0.ckpt  # path inside the repo (required)
    sha256: <to_be_calculated>              # 64 hex, or the placeholder
    description: "VAE model for MP-20 dataset"

  mp_20_ldm:
    hf_path: 'mp_20/ldm/ldm.ckpt'
    sha256: "<to_be_calculated>"
    revision: 'main'   # moves

  no_sha:
    hf_path: x.ckpt
config:
  hf_repo: "your-org/chemeleon2-checkpoints"  # required
  cache_dir: "./checkpoints"
"""

AFTER = f"""\
# Checkpoints for the baseline tests.
checkpoints:
  # the VAE
  mp_20_vae:
    filename: dng_m4owq4i5_v0.ckpt          # local file name
    hf_path: mp_20/vae/dng_m4owq4i5_v0.ckpt  # path inside the repo (required)
    sha256: {SHA}              # 64 hex, or the placeholder
    description: "VAE model for MP-20 dataset"
    revision: "{COMMIT}"

  mp_20_ldm:
    hf_path: 'mp_20/ldm/ldm.ckpt'
    sha256: "{DIGITS}"
    revision: '{COMMIT}'   # moves

  no_sha:
    hf_path: x.ckpt
    sha256: "{SHA}"
config:
  hf_repo: "your-org/chemeleon2-checkpoints"  # required
  cache_dir: "./checkpoints"
"""

EDITS = {
    "mp_20_vae": {"sha256": SHA, "revision": COMMIT},
    "mp_20_ldm": {"sha256": DIGITS, "revision": COMMIT},
    "no_sha": {"sha256": SHA},
}


def test_only_the_values_change() -> None:
    out = set_entry_values(BEFORE, EDITS)
    assert out == AFTER
    data = yaml.safe_load(out)["checkpoints"]
    assert data["mp_20_ldm"]["sha256"] == DIGITS  # a str, not an int
    assert data["no_sha"]["sha256"] == SHA


def test_crlf_line_endings_are_kept() -> None:
    out = set_entry_values(BEFORE.replace("\n", "\r\n"), EDITS)
    assert out == AFTER.replace("\n", "\r\n")


def test_plain_value_that_would_read_as_a_number_gets_quotes() -> None:
    text = "checkpoints:\n  a:\n    hf_path: a\n    sha256: <to_be_calculated>\n"
    out = set_entry_values(text, {"a": {"sha256": DIGITS}})
    assert out == f'checkpoints:\n  a:\n    hf_path: a\n    sha256: "{DIGITS}"\n'


def test_last_entry_at_eof_without_newline() -> None:
    text = "checkpoints:\n  a:\n    hf_path: a.ckpt"
    out = set_entry_values(text, {"a": {"sha256": SHA}})
    assert out == f'checkpoints:\n  a:\n    hf_path: a.ckpt\n    sha256: "{SHA}"'


def test_empty_value_is_filled() -> None:
    text = "checkpoints:\n  a:\n    sha256:\n    hf_path: a.ckpt\n"
    out = set_entry_values(text, {"a": {"sha256": SHA}})
    assert out == f'checkpoints:\n  a:\n    sha256: "{SHA}"\n    hf_path: a.ckpt\n'


def test_flow_mapping_entries_are_edited_in_place() -> None:
    text = (
        "checkpoints:\n"
        "  a: {hf_path: a.ckpt, sha256: <to_be_calculated>}  # flow\n"
        "  b: {hf_path: 'b.ckpt' }\n"
        "  c: {}\n"
        "  d: {\n"
        "    hf_path: d.ckpt,  # multi-line\n"
        "  }\n"
    )
    edits = {
        "a": {"sha256": SHA, "revision": COMMIT},
        "b": {"sha256": DIGITS},
        "c": {"hf_path": "c,1.ckpt"},
        "d": {"hf_path": "e,1.ckpt", "sha256": SHA},
    }
    out = set_entry_values(text, edits)
    assert out == (
        "checkpoints:\n"
        f'  a: {{hf_path: a.ckpt, sha256: {SHA}, revision: "{COMMIT}"}}  # flow\n'
        f"  b: {{hf_path: 'b.ckpt', sha256: \"{DIGITS}\" }}\n"
        '  c: {hf_path: "c,1.ckpt"}\n'
        "  d: {\n"
        f'    hf_path: "e,1.ckpt", sha256: "{SHA}",  # multi-line\n'
        "  }\n"
    )
    data = yaml.safe_load(out)["checkpoints"]
    assert data["a"] == {"hf_path": "a.ckpt", "sha256": SHA, "revision": COMMIT}
    assert data["b"]["sha256"] == DIGITS
    assert data["c"] == {"hf_path": "c,1.ckpt"}
    assert data["d"] == {"hf_path": "e,1.ckpt", "sha256": SHA}


def test_quoting_styles_are_kept_and_escaped() -> None:
    text = (
        "checkpoints:\n"
        "  a:\n"
        "    hf_path: 'it''s.ckpt'\n"
        '    description: "old"\n'
        "    revision: main\n"
        "    filename: x\n"
    )
    edits = {
        "a": {
            "hf_path": "it's new.ckpt",
            "description": 'say "hi"',
            "revision": "true",
            "filename": "a: b",
        }
    }
    out = set_entry_values(text, edits)
    assert out == (
        "checkpoints:\n"
        "  a:\n"
        "    hf_path: 'it''s new.ckpt'\n"
        '    description: "say \\"hi\\""\n'
        '    revision: "true"\n'
        '    filename: "a: b"\n'
    )
    assert yaml.safe_load(out)["checkpoints"]["a"] == edits["a"]


def test_insert_after_a_block_scalar_and_a_nested_value() -> None:
    text = (
        "checkpoints:\n"
        "  a:\n"
        "    hf_path: a.ckpt\n"
        "    description: |\n"
        "      two\n"
        "      lines\n"
        "  b:\n"
        "    hf_path: b.ckpt\n"
        "    tags:\n"
        "      - x\n"
        "      - y   # last\n"
        "\n"
        "  # about c\n"
        "  c:\n"
        "    hf_path: c.ckpt\n"
    )
    out = set_entry_values(text, {"a": {"sha256": SHA}, "b": {"sha256": SHA}})
    assert out == (
        "checkpoints:\n"
        "  a:\n"
        "    hf_path: a.ckpt\n"
        "    description: |\n"
        "      two\n"
        "      lines\n"
        f'    sha256: "{SHA}"\n'
        "  b:\n"
        "    hf_path: b.ckpt\n"
        "    tags:\n"
        "      - x\n"
        "      - y   # last\n"
        f'    sha256: "{SHA}"\n'
        "\n"
        "  # about c\n"
        "  c:\n"
        "    hf_path: c.ckpt\n"
    )


def test_values_that_cannot_be_edited_in_place_are_refused() -> None:
    with pytest.raises(ValueError, match="entry 'a' key 'sha256' is a block scalar"):
        set_entry_values("checkpoints:\n  a:\n    sha256: |\n      x\n", {"a": {"sha256": SHA}})
    with pytest.raises(ValueError, match="entry 'b' key 'sha256' is an alias"):
        set_entry_values(
            "checkpoints:\n  a:\n    sha256: &s x\n  b:\n    sha256: *s\n",
            {"b": {"sha256": SHA}},
        )
    with pytest.raises(ValueError, match="not valid YAML"):
        set_entry_values("checkpoints: [\n", {"a": {"sha256": SHA}})


def test_mixed_line_endings_use_the_entry_line_ending() -> None:
    text = "checkpoints:\r\n  a:\r\n    hf_path: a\r\n  b:\n    hf_path: b\n"
    out = set_entry_values(text, {"a": {"sha256": SHA}, "b": {"sha256": SHA}})
    assert out == (
        f'checkpoints:\r\n  a:\r\n    hf_path: a\r\n    sha256: "{SHA}"\r\n'
        f'  b:\n    hf_path: b\n    sha256: "{SHA}"\n'
    )


def test_crlf_file_without_trailing_newline() -> None:
    text = "checkpoints:\r\n  a:\r\n    hf_path: a  # c"
    out = set_entry_values(text, {"a": {"sha256": SHA, "revision": COMMIT}})
    assert out == (
        "checkpoints:\r\n  a:\r\n    hf_path: a  # c"
        f'\r\n    sha256: "{SHA}"\r\n    revision: "{COMMIT}"'
    )


def test_unknown_entry_is_refused() -> None:
    with pytest.raises(ValueError, match="entry 'b' not found"):
        set_entry_values("checkpoints:\n  a:\n    hf_path: a\n", {"b": {"sha256": SHA}})


def test_insert_after_collections_that_end_past_their_last_scalar() -> None:
    """The insert goes after the entry's last token: a closing bracket, an alias, ..."""
    text = (
        "checkpoints:\n"
        "  a: {hf_path: a.ckpt, tags: [x, y]}\n"
        "  b:\n"
        "    hf_path: &p b.ckpt\n"
        "    tags: [x,\n"
        "      y\n"
        "    ]   # multi-line flow list\n"
        "  c:\n"
        "    hf_path: c.ckpt\n"
        "    other: *p\n"
    )
    out = set_entry_values(text, {k: {"sha256": SHA} for k in "abc"})
    assert out == (
        "checkpoints:\n"
        f'  a: {{hf_path: a.ckpt, tags: [x, y], sha256: "{SHA}"}}\n'
        "  b:\n"
        "    hf_path: &p b.ckpt\n"
        "    tags: [x,\n"
        "      y\n"
        "    ]   # multi-line flow list\n"
        f'    sha256: "{SHA}"\n'
        "  c:\n"
        "    hf_path: c.ckpt\n"
        "    other: *p\n"
        f'    sha256: "{SHA}"\n'
    )
    data = yaml.safe_load(out)["checkpoints"]
    assert data["a"]["tags"] == ["x", "y"]
    assert all(data[k]["sha256"] == SHA for k in "abc")


def test_block_scalar_chomping_is_respected() -> None:
    """Clip/strip: insert right after the text; keep (|+): after its blank lines."""
    text = (
        "checkpoints:\n"
        "  a:\n"
        "    description: >-\n"
        "      folded\n"
        "\n"
        "  b:\n"
        "    description: |+\n"
        "      kept\n"
        "\n"
        "  c:\n"
        "    hf_path: c\n"
    )
    out = set_entry_values(text, {"a": {"sha256": SHA}, "b": {"sha256": SHA}})
    assert out == (
        "checkpoints:\n"
        "  a:\n"
        "    description: >-\n"
        "      folded\n"
        f'    sha256: "{SHA}"\n'
        "\n"
        "  b:\n"
        "    description: |+\n"
        "      kept\n"
        "\n"
        f'    sha256: "{SHA}"\n'
        "  c:\n"
        "    hf_path: c\n"
    )
    data = yaml.safe_load(out)["checkpoints"]
    assert data["a"]["description"] == "folded"
    assert data["b"]["description"] == "kept\n\n"  # the kept blank line is still its own


def test_anchors_and_tags_on_a_replaced_value_stay() -> None:
    text = "checkpoints:\n  a:\n    sha256: &s <to_be_calculated>\n    revision: !!str main\n"
    out = set_entry_values(text, {"a": {"sha256": SHA, "revision": "1" * 40}})
    assert out == (f'checkpoints:\n  a:\n    sha256: &s {SHA}\n    revision: !!str "{"1" * 40}"\n')


def test_yaml_1_2_numbers_are_quoted_too() -> None:
    """PyYAML reads 123e456 as a str; YAML 1.2 readers (ruamel.yaml) read a float."""
    digest = "1" * 30 + "e" + "2" * 33
    assert isinstance(yaml.safe_load(digest), str)
    text = "checkpoints:\n  a:\n    sha256: <to_be_calculated>\n"
    out = set_entry_values(text, {"a": {"sha256": digest}})
    assert out == f'checkpoints:\n  a:\n    sha256: "{digest}"\n'


def test_empty_last_value_at_eof_then_a_new_key() -> None:
    text = "checkpoints:\n  a:\n    hf_path: a.ckpt\n    sha256:"
    out = set_entry_values(text, {"a": {"sha256": SHA, "revision": COMMIT}})
    assert out == (
        f'checkpoints:\n  a:\n    hf_path: a.ckpt\n    sha256: "{SHA}"\n    revision: "{COMMIT}"'
    )
