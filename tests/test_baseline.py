"""Golden-tensor baselines: the engine, then the 5-step workflow through the fixture."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_manifest

from pytest_ckpts.baseline import (
    BaselineChecker,
    BaselineMismatch,
    BaselineMissing,
    read_baseline,
)
from pytest_ckpts.testing import LocalHub


def checker(
    tmp_path: Path, update: bool = False, shas: dict[str, str] | None = None
) -> BaselineChecker:
    return BaselineChecker(
        directory=tmp_path / "baselines", update=update, checkpoint_shas=lambda: shas or {}
    )


def test_missing_is_written_then_matches(tmp_path: Path) -> None:
    t = torch.linspace(0, 1, 12).reshape(3, 4)
    with pytest.raises(BaselineMissing, match="was written to"):
        checker(tmp_path, shas={"vae": "a" * 64}).check("out", t)
    path = tmp_path / "baselines" / "out.safetensors"
    tensors, meta = read_baseline(path)
    assert torch.equal(tensors["__tensor__"], t)
    assert meta["checkpoints"] == '{"vae": "' + "a" * 64 + '"}'
    assert meta["format"] == "pytest-ckpts-baseline/1"
    checker(tmp_path).check("out", t.clone())
    checker(tmp_path).check("out", t + 1e-9)  # within tolerance


def test_mismatch_report(tmp_path: Path) -> None:
    base = torch.zeros(4, 5)
    with pytest.raises(BaselineMissing):
        checker(tmp_path).check("out", base)
    bad = base.clone()
    bad[2, 3] = 0.5
    bad[1, 1] = -0.25
    with pytest.raises(BaselineMismatch) as info:
        checker(tmp_path).check("out", bad, atol=1e-3)
    report = str(info.value)
    assert "2 of 20 elements differ (10.00%)" in report
    assert "max abs diff 0.5 at index (2, 3)" in report
    assert "max rel diff" in report
    assert "(2, 3)" in report.split("worst elements:")[1]
    assert "--ckpts-update-baselines" in report
    assert "changed since" not in report


def test_changed_checkpoint_is_named_first(tmp_path: Path) -> None:
    with pytest.raises(BaselineMissing):
        checker(tmp_path, shas={"vae": "a" * 64, "ldm": "b" * 64}).check("out", torch.ones(3))
    with pytest.raises(BaselineMismatch) as info:
        checker(tmp_path, shas={"vae": "c" * 64, "ldm": "b" * 64}).check("out", torch.ones(3) * 2)
    lines = str(info.value).splitlines()
    assert lines[1].startswith(
        "checkpoint 'vae' changed since the baseline was written: was aaaaaaaaaaaa"
    )
    assert "likely cause" in lines[1]
    assert "ldm" not in str(info.value)


def test_keys_dtype_shape_checked_before_tolerance(tmp_path: Path) -> None:
    with pytest.raises(BaselineMissing):
        checker(tmp_path).check(
            "d", {"a": torch.zeros(2), "b": torch.zeros(3), "c": torch.zeros(1)}
        )
    with pytest.raises(BaselineMismatch) as info:
        checker(tmp_path).check(
            "d",
            {"a": torch.zeros(2, dtype=torch.float64), "b": torch.zeros(4), "x": torch.zeros(1)},
        )
    report = str(info.value)
    assert "'c': in the baseline, missing from the output" in report
    assert "'x': in the output, not in the baseline" in report
    assert "'a': baseline float32[2], output float64[2]" in report
    assert "'b': baseline float32[3], output float32[4]" in report


def test_nan_positions_and_numpy_and_half_precision(tmp_path: Path) -> None:
    arr = np.array([1.0, np.nan, 3.0], dtype=np.float32)
    with pytest.raises(BaselineMissing):
        checker(tmp_path).check("np", arr)
    checker(tmp_path).check("np", arr.copy())  # NaN == NaN at the same place
    with pytest.raises(BaselineMismatch, match="1 of 3 elements differ"):
        checker(tmp_path).check("np", np.array([1.0, 2.0, 3.0], dtype=np.float32))
    bf = torch.tensor([1.0, 2.0, 3.0], dtype=torch.bfloat16)
    with pytest.raises(BaselineMissing):
        checker(tmp_path).check("bf", bf)
    assert (
        read_baseline(tmp_path / "baselines" / "bf.safetensors")[0]["__tensor__"].dtype
        == torch.bfloat16
    )
    checker(tmp_path).check("bf", bf.clone())
    with pytest.raises(BaselineMismatch):
        checker(tmp_path).check("bf", bf * 2)


def test_integer_tensors_compare_exactly(tmp_path: Path) -> None:
    with pytest.raises(BaselineMissing):
        checker(tmp_path).check("i", torch.arange(6))
    with pytest.raises(BaselineMismatch, match="1 of 6 elements differ"):
        checker(tmp_path).check("i", torch.tensor([0, 1, 2, 3, 4, 6]))


def test_update_rewrites_only_mismatching(tmp_path: Path) -> None:
    t = torch.ones(3)
    checker(tmp_path, update=True).check("u", t)  # missing + update: written, passes
    path = tmp_path / "baselines" / "u.safetensors"
    stat = path.stat()
    checker(tmp_path, update=True).check("u", t.clone())
    assert path.stat().st_mtime_ns == stat.st_mtime_ns  # a match is not rewritten
    checker(tmp_path, update=True).check("u", t * 3)
    assert torch.equal(read_baseline(path)[0]["__tensor__"], t * 3)
    checker(tmp_path).check("u", t * 3)


def test_metadata_records_layout_and_tolerance(tmp_path: Path) -> None:
    with pytest.raises(BaselineMissing):
        checker(tmp_path, shas={"vae": "a" * 64}).check(
            "m", {"x": torch.zeros(2, 3, dtype=torch.float16), "y": np.arange(4)}, rtol=1e-3
        )
    tensors, meta = read_baseline(tmp_path / "baselines" / "m.safetensors")
    assert tensors["x"].dtype == torch.float16  # stored in the original dtype
    assert json.loads(meta["tensors"]) == {
        "x": {"dtype": "float16", "shape": [2, 3]},
        "y": {"dtype": "int64", "shape": [4]},
    }
    assert float(meta["rtol"]) == 1e-3
    assert float(meta["atol"]) == 1e-8
    assert meta["kind"] == "dict"


def test_infinities_match_only_the_same_infinity(tmp_path: Path) -> None:
    inf = float("inf")
    base = torch.tensor([1.0, inf, -inf, float("nan")])
    with pytest.raises(BaselineMissing):
        checker(tmp_path).check("inf", base)
    checker(tmp_path).check("inf", base.clone())
    with pytest.raises(BaselineMismatch) as info:
        checker(tmp_path).check("inf", torch.tensor([1.0, 1e30, inf, 0.0]))
    report = str(info.value)
    assert "3 of 4 elements differ (75.00%)" in report
    assert "max abs diff inf" in report


def test_report_sections_in_order_and_table_capped(tmp_path: Path) -> None:
    shas = {"vae": "a" * 64}
    with pytest.raises(BaselineMissing):
        checker(tmp_path, shas=shas).check("o", {"big": torch.zeros(5, 6), "gone": torch.ones(1)})
    new = {"big": torch.arange(30, dtype=torch.float32).reshape(5, 6), "new": torch.ones(1)}
    with pytest.raises(BaselineMismatch) as info:
        checker(tmp_path, shas={"vae": "d" * 64}).check("o", new)
    lines = str(info.value).splitlines()
    assert lines[0] == "pytest-ckpts: baseline 'o' does not match the output."
    assert lines[1] == (
        "checkpoint 'vae' changed since the baseline was written: "
        "was aaaaaaaaaaaa… now dddddddddddd…; this is the likely cause."
    )
    assert lines[2] == "  'gone': in the baseline, missing from the output"
    assert lines[3] == "  'new': in the output, not in the baseline"
    assert lines[4] == "  'big': 29 of 30 elements differ (96.67%)"
    assert lines[5] == "    max abs diff 29 at index (4, 5)"
    assert lines[6] == "    max rel diff inf at index (0, 1)"
    table = lines[lines.index("    worst elements:") + 2 :]
    rows = [line for line in table if line.startswith("    (")]
    assert len(rows) == 10
    assert rows[0].split()[:2] == ["(4,", "5)"]
    assert "    ... and 19 more" in lines
    assert lines[-1] == "If the change is intended, re-run with --ckpts-update-baselines."


def test_different_checkpoint_set_is_mentioned(tmp_path: Path) -> None:
    with pytest.raises(BaselineMissing):
        checker(tmp_path, shas={"vae": "a" * 64}).check("s", torch.ones(2))
    with pytest.raises(BaselineMismatch, match=r"written using checkpoints \['vae'\]; this run"):
        checker(tmp_path, shas={"ldm": "b" * 64}).check("s", torch.zeros(2))


def test_matching_within_tolerance_is_not_rewritten_on_update(tmp_path: Path) -> None:
    with pytest.raises(BaselineMissing):
        checker(tmp_path).check("t", torch.ones(3))
    path = tmp_path / "baselines" / "t.safetensors"
    before = path.read_bytes()
    checker(tmp_path, update=True).check("t", torch.ones(3) + 1e-9)
    assert path.read_bytes() == before


def test_rejects_non_tensors(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="torch tensor, a numpy array"):
        checker(tmp_path).check("x", [1, 2, 3])


WORKFLOW_TEST = """
import torch

def test_output(ckpt_baseline):
    out = torch.linspace(0, 1, 10) * SCALE
    ckpt_baseline.check("output", {"out": out, "sum": out.sum().reshape(1)})
"""


def write_test(pytester: pytest.Pytester, scale: float) -> None:
    pytester.makepyfile(test_model=f"SCALE = {scale}\n" + textwrap.dedent(WORKFLOW_TEST))


@pytest.mark.parametrize("mode", ["inprocess", "subprocess", "xdist"])
def test_five_step_workflow(pytester: pytest.Pytester, mode: str) -> None:
    def run(*args: str) -> pytest.RunResult:
        if mode == "inprocess":
            return pytester.runpytest("-p", "no:cacheprovider", *args)
        extra = ("-n", "2") if mode == "xdist" else ()
        return pytester.runpytest_subprocess("-p", "no:cacheprovider", *extra, *args)

    baseline = (
        pytester.path / "tests" / "baselines" / "test_model" / "test_output" / "output.safetensors"
    )
    write_test(pytester, 1.0)
    result = run()  # 1. missing: written, fails
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*baseline 'output' did not exist; it was written to*"])
    assert baseline.is_file()
    run().assert_outcomes(passed=1)  # 2. passes
    write_test(pytester, 1.5)
    result = run()  # 3. perturbed: fails with the report
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*'out': 9 of 10 elements differ*", "*--ckpts-update-baselines*"])
    before = baseline.read_bytes()
    run("--ckpts-update-baselines").assert_outcomes(passed=1)  # 4. rewritten
    assert baseline.read_bytes() != before
    run().assert_outcomes(passed=1)  # 5. passes


def test_changed_checkpoint_named_end_to_end(pytester: pytest.Pytester, hub: LocalHub) -> None:
    """The real chain: hub -> checkpoints fixture -> baseline metadata -> report."""
    weights = os.urandom(64)
    make_manifest(pytester.path, hub, {"vae": weights})
    pytester.makepyfile(
        test_model="""
        import pytest, torch

        @pytest.mark.requires_checkpoints("vae")
        def test_output(checkpoints, ckpt_baseline):
            data = checkpoints["vae"].path.read_bytes()
            out = torch.tensor(list(data[:8]), dtype=torch.float32)
            ckpt_baseline.check("output", out)
        """
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(failed=1)  # written
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
    retrained = bytes(255 - b for b in weights)
    make_manifest(pytester.path, hub, {"vae": retrained})  # new upload, new sha256
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*baseline 'output' does not match the output.",
            "*checkpoint 'vae' changed since the baseline was written*likely cause*",
        ]
    )
