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


def test_flow_style_entry_is_refused_clearly() -> None:
    with pytest.raises(ValueError, match="flow style"):
        set_entry_values("checkpoints:\n  a: {hf_path: a.ckpt}\n", {"a": {"sha256": SHA}})


def test_unknown_entry_is_refused() -> None:
    with pytest.raises(ValueError, match="entry 'b' not found"):
        set_entry_values("checkpoints:\n  a:\n    hf_path: a\n", {"b": {"sha256": SHA}})
