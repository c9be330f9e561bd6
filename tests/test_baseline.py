"""Golden-tensor baselines (pytest_ckpts.baseline): the engine. The fixture in pytest runs:
tests/plugin/test_fixture_ckpt_baseline.py."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from pytest_ckpts.baseline import (
    FORMAT,
    BaselineChecker,
    BaselineMismatch,
    BaselineMissing,
    read_baseline,
)
from pytest_ckpts.fixtures import UPDATE_FLAG

VAE_A, VAE_B, LDM = "a" * 64, "c" * 64, "b" * 64


def checker(
    tmp_path: Path, update: bool = False, shas: dict[str, str] | None = None
) -> BaselineChecker:
    return BaselineChecker(
        directory=tmp_path / "baselines",
        update=update,
        checkpoint_shas=lambda: shas or {},
        update_option=UPDATE_FLAG,  # the front end names its switch (the fixture: pytest's)
    )


def written(tmp_path: Path, name: str, value: object, **shas: str) -> Path:
    """Write baseline ``name`` (first run: it fails as missing) and return its path."""
    with pytest.raises(BaselineMissing):
        checker(tmp_path, shas=shas).check(name, value)
    return tmp_path / "baselines" / f"{name}.safetensors"


def mismatch(tmp_path: Path, name: str, value: object, **kw: float) -> str:
    with pytest.raises(BaselineMismatch) as info:
        checker(tmp_path).check(name, value, **kw)
    return str(info.value)


# ---------------------------------------------------------------- writing and metadata


def test_missing_is_written_fails_then_matches(tmp_path: Path) -> None:
    t = torch.linspace(0, 1, 12).reshape(3, 4)
    with pytest.raises(BaselineMissing) as info:
        checker(tmp_path, shas={"vae": VAE_A}).check("out", t)
    path = tmp_path / "baselines" / "out.safetensors"
    assert f"baseline 'out' did not exist; it was written to {path}" in str(info.value)
    assert "re-run" in str(info.value)
    assert isinstance(info.value, AssertionError)
    tensors, meta = read_baseline(path)
    assert torch.equal(tensors["__tensor__"], t)
    assert meta["format"] == FORMAT
    assert json.loads(meta["checkpoints"]) == {"vae": VAE_A}
    assert json.loads(meta["tensors"]) == {"__tensor__": {"dtype": "float32", "shape": [3, 4]}}
    assert (float(meta["rtol"]), float(meta["atol"])) == (1e-5, 1e-8)
    assert [p.name for p in path.parent.iterdir()] == ["out.safetensors"]  # no temp left
    checker(tmp_path).check("out", t.clone())
    checker(tmp_path).check("out", t + 1e-9)  # within tolerance


def test_bytes_are_canonical(tmp_path: Path) -> None:
    """Same tensors and checkpoints -> same bytes, with sorted metadata (no hash-map order)."""
    value = {"z": torch.ones(2, dtype=torch.float16), "a": torch.arange(3)}
    shas = {"vae": VAE_A, "ldm": LDM}
    blobs = []
    for i in range(3):
        c = BaselineChecker(
            directory=tmp_path / str(i), update=True, checkpoint_shas=lambda: shas, atol=1e-6
        )
        c.check("d", value)
        blobs.append((tmp_path / str(i) / "d.safetensors").read_bytes())
    assert blobs[0] == blobs[1] == blobs[2]
    (size,) = struct.unpack("<Q", blobs[0][:8])
    assert (8 + size) % 8 == 0
    meta = json.loads(blobs[0][8 : 8 + size])["__metadata__"]
    assert list(meta) == sorted(meta)
    assert json.loads(meta["tensors"]) == {
        "a": {"dtype": "int64", "shape": [3]},
        "z": {"dtype": "float16", "shape": [2]},
    }
    assert float(meta["atol"]) == 1e-6


def test_half_precision_is_stored_as_is_and_compared_in_float(tmp_path: Path) -> None:
    bf = torch.tensor([1.0, 2.0, 3.0], dtype=torch.bfloat16)
    path = written(tmp_path, "bf", {"bf": bf, "fp16": bf.to(torch.float16)})
    stored = read_baseline(path)[0]
    assert stored["bf"].dtype == torch.bfloat16
    assert stored["fp16"].dtype == torch.float16
    checker(tmp_path).check("bf", {"bf": bf.clone(), "fp16": bf.to(torch.float16)})
    report = mismatch(tmp_path, "bf", {"bf": bf * 2, "fp16": bf.to(torch.float16)})
    assert "'bf': 3 of 3 elements differ" in report
    assert "max abs diff 3 at index (2,)" in report
    assert "'fp16'" not in report


def test_numpy_input(tmp_path: Path) -> None:
    arr = np.arange(6, dtype=np.float64).reshape(2, 3)
    path = written(tmp_path, "np", arr)
    assert read_baseline(path)[0]["__tensor__"].dtype == torch.float64
    checker(tmp_path).check("np", arr.copy())
    checker(tmp_path).check("np", torch.from_numpy(arr.copy()))  # torch or numpy, same data
    bad = arr.copy()
    bad[1, 2] = 7.5
    assert "max abs diff 2.5 at index (1, 2)" in mismatch(tmp_path, "np", bad)


# ---------------------------------------------------------------- the report


def test_mismatch_report(tmp_path: Path) -> None:
    base = torch.zeros(4, 5)
    path = written(tmp_path, "out", base)
    bad = base.clone()
    bad[2, 3] = 0.5
    bad[1, 1] = -0.25
    report = mismatch(tmp_path, "out", bad, atol=1e-3)
    lines = report.splitlines()
    assert lines[0] == "pytest-ckpts: baseline 'out' does not match the output."
    assert "tensor: 2 of 20 elements differ (10.00%)" in report
    assert "max abs diff 0.5 at index (2, 3)" in report
    assert "max rel diff inf at index" in report  # baseline 0: relative diff is infinite
    table = report.split("worst elements:")[1].splitlines()
    assert table[1].split() == ["index", "baseline", "actual", "abs", "diff"]
    assert table[2].split() == ["(2,", "3)", "0", "0.5", "0.5"]  # worst first
    assert table[3].split() == ["(1,", "1)", "0", "-0.25", "0.25"]
    assert "(rtol=1e-05, atol=0.001)" in report
    assert (
        lines[-1]
        == f"If the change is intended, re-run with --ckpts-update-baselines to rewrite {path}."
    )
    assert "changed since" not in report


def test_relative_diff_and_multidim_index(tmp_path: Path) -> None:
    base = torch.full((2, 3, 4), 2.0)
    written(tmp_path, "r", base)
    bad = base.clone()
    bad[1, 2, 3] = 3.0  # abs 1.0, rel 0.5
    bad[0, 1, 2] = 2.5  # abs 0.5, rel 0.25
    bad[1, 0, 0] = 2.0 + 1e-6  # within tolerance (atol 1e-8 + rtol 1e-5 * 2)
    report = mismatch(tmp_path, "r", bad)
    assert "2 of 24 elements differ (8.33%)" in report
    assert "max abs diff 1 at index (1, 2, 3)" in report
    assert "max rel diff 0.5 at index (1, 2, 3)" in report
    assert "(1, 0, 0)" not in report


def test_table_is_capped(tmp_path: Path) -> None:
    written(tmp_path, "big", torch.zeros(100))
    report = mismatch(tmp_path, "big", torch.arange(100, dtype=torch.float32))
    table = report.split("worst elements:")[1].splitlines()[2:]
    rows = [row for row in table if row.startswith("    (")]
    assert len(rows) == 10
    assert rows[0].split()[0] == "(99,)"  # sorted worst first
    assert "... and 89 more" in report  # 99 differ (index 0 is equal)


def test_changed_checkpoint_is_named_first(tmp_path: Path) -> None:
    written(tmp_path, "out", torch.ones(3), vae=VAE_A, ldm=LDM)
    with pytest.raises(BaselineMismatch) as info:
        checker(tmp_path, shas={"vae": VAE_B, "ldm": LDM}).check("out", torch.ones(3) * 2)
    lines = str(info.value).splitlines()
    assert lines[1] == (
        f"checkpoint 'vae' changed since the baseline was written: was {VAE_A[:12]}… "
        f"now {VAE_B[:12]}…; this is the likely cause."
    )
    assert lines[2].startswith("  tensor: 3 of 3 elements differ")
    assert "ldm" not in str(info.value)  # unchanged checkpoints are not blamed


def test_different_checkpoint_set_is_mentioned(tmp_path: Path) -> None:
    written(tmp_path, "out", torch.ones(3), vae=VAE_A)
    with pytest.raises(BaselineMismatch) as info:
        checker(tmp_path, shas={"ldm": LDM}).check("out", torch.zeros(3))
    assert (
        "the baseline was written by a test that used checkpoints ['vae']; "
        "this run used ['ldm']." in str(info.value)
    )


def test_changed_checkpoint_with_equal_output_passes(tmp_path: Path) -> None:
    path = written(tmp_path, "out", torch.ones(3), vae=VAE_A)
    before = path.read_bytes()
    checker(tmp_path, shas={"vae": VAE_B}).check("out", torch.ones(3))
    assert path.read_bytes() == before


def test_keys_dtype_shape_checked_before_tolerance(tmp_path: Path) -> None:
    written(
        tmp_path,
        "d",
        {"a": torch.zeros(2), "b": torch.zeros(3), "c": torch.zeros(1), "n": torch.zeros(2)},
    )
    report = mismatch(
        tmp_path,
        "d",
        {
            "a": torch.zeros(2, dtype=torch.float64),
            "b": torch.zeros(4),
            "n": torch.ones(2),
            "x": torch.zeros(1),
        },
    )
    lines = report.splitlines()
    expected = [
        "  'c': in the baseline, missing from the output",
        "  'x': in the output, not in the baseline",
        "  'a': baseline float32[2], output float64[2]",
        "  'b': baseline float32[3], output float32[4]",
        "  'n': 2 of 2 elements differ (100.00%)",
    ]
    assert [line for line in lines if line in expected] == expected  # structure first


def test_single_tensor_against_dict_baseline(tmp_path: Path) -> None:
    written(tmp_path, "d", {"a": torch.zeros(2)})
    report = mismatch(tmp_path, "d", torch.zeros(2))
    assert "'a': in the baseline, missing from the output" in report
    assert "tensor: in the output, not in the baseline" in report


# ---------------------------------------------------------------- value semantics


def test_nan_matches_nan_in_the_same_place(tmp_path: Path) -> None:
    arr = np.array([1.0, np.nan, 3.0], dtype=np.float32)
    written(tmp_path, "nan", arr)
    checker(tmp_path).check("nan", arr.copy())  # fast path: same bits
    bits = torch.from_numpy(arr.copy()).view(torch.int32)
    bits[1] ^= 1  # another NaN payload: the bytes differ, the values do not
    other = bits.view(torch.float32)
    assert torch.isnan(other[1])
    assert other.numpy().tobytes() != arr.tobytes()
    checker(tmp_path).check("nan", other)
    report = mismatch(tmp_path, "nan", np.array([1.0, 2.0, 3.0], dtype=np.float32))
    assert "1 of 3 elements differ" in report
    assert "max abs diff inf at index (1,)" in report
    report = mismatch(tmp_path, "nan", np.array([np.nan, np.nan, 3.0], dtype=np.float32))
    assert "1 of 3 elements differ" in report
    assert "at index (0,)" in report


def test_infinities(tmp_path: Path) -> None:
    inf = float("inf")
    written(tmp_path, "inf", torch.tensor([inf, -inf, 1.0]))
    checker(tmp_path).check("inf", torch.tensor([inf, -inf, 1.0]))
    report = mismatch(tmp_path, "inf", torch.tensor([-inf, -inf, 1e30]))
    assert "2 of 3 elements differ" in report  # -inf vs inf, and 1e30 vs 1.0
    report = mismatch(tmp_path, "inf", torch.tensor([1e38, -inf, 1.0]))
    assert "1 of 3 elements differ" in report  # finite never matches inf, whatever rtol


def test_negative_zero_equals_zero(tmp_path: Path) -> None:
    written(tmp_path, "z", torch.zeros(3))
    checker(tmp_path).check("z", torch.tensor([-0.0, 0.0, -0.0]))  # bytes differ, values not


def test_integer_and_bool_tensors_compare_exactly(tmp_path: Path) -> None:
    written(tmp_path, "i", {"i": torch.arange(6), "b": torch.tensor([True, False])})
    report = mismatch(
        tmp_path, "i", {"i": torch.tensor([0, 1, 2, 3, 4, 6]), "b": torch.tensor([True, True])}
    )
    assert "'i': 1 of 6 elements differ" in report
    assert "max abs diff 1 at index (5,)" in report
    assert "'b': 1 of 2 elements differ" in report


def test_zero_dim_and_empty_tensors(tmp_path: Path) -> None:
    written(tmp_path, "s", {"s": torch.tensor(1.5), "e": torch.zeros(0, 3)})
    checker(tmp_path).check("s", {"s": torch.tensor(1.5), "e": torch.zeros(0, 3)})
    report = mismatch(tmp_path, "s", {"s": torch.tensor(2.5), "e": torch.zeros(0, 3)})
    assert "max abs diff 1 at index ()" in report


# ---------------------------------------------------------------- update semantics


def test_update_rewrites_only_missing_or_mismatching(tmp_path: Path) -> None:
    t = torch.ones(3)
    checker(tmp_path, update=True).check("u", t)  # missing + update: written, passes
    path = tmp_path / "baselines" / "u.safetensors"
    stat = path.stat()
    checker(tmp_path, update=True, shas={"vae": VAE_B}).check("u", t.clone())
    after = path.stat()
    assert (after.st_mtime_ns, after.st_ino) == (stat.st_mtime_ns, stat.st_ino)  # untouched
    checker(tmp_path, update=True, shas={"vae": VAE_B}).check("u", t * 3)
    tensors, meta = read_baseline(path)
    assert torch.equal(tensors["__tensor__"], t * 3)
    assert json.loads(meta["checkpoints"]) == {"vae": VAE_B}
    checker(tmp_path).check("u", t * 3)


def test_unreadable_baseline(tmp_path: Path) -> None:
    path = tmp_path / "baselines" / "bad.safetensors"
    path.parent.mkdir()
    path.write_bytes(b"not a safetensors file")
    report = mismatch(tmp_path, "bad", torch.ones(2))
    assert f"baseline 'bad' at {path} could not be read" in report
    assert "--ckpts-update-baselines" in report
    checker(tmp_path, update=True).check("bad", torch.ones(2))
    checker(tmp_path).check("bad", torch.ones(2))


def test_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="torch tensor, a numpy array"):
        checker(tmp_path).check("x", [1, 2, 3])
    with pytest.raises(ValueError, match="empty dict"):
        checker(tmp_path).check("x", {})
    with pytest.raises(ValueError, match="'__metadata__' is not allowed"):
        checker(tmp_path).check("x", {"__metadata__": torch.ones(1)})
    for name in ("", "a/b", "..", ".hidden"):
        with pytest.raises(ValueError, match="invalid baseline name"):
            checker(tmp_path).check(name, torch.ones(1))
    assert not (tmp_path / "baselines").exists()


# ---------------------------------------------------------------- through the fixture
