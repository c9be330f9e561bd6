"""The ckpt_baseline fixture in pytest runs: the five-step workflow with
--ckpts-update-baselines (under xdist too), the ckpts_baselines_dir ini key, the checkpoint
named when it changed, repetitions sharing one baseline."""

from __future__ import annotations

import os

import pytest
import torch

from pytest_ckpts.baseline import read_baseline
from pytest_ckpts.testing import LocalHub
from tests.helpers import make_manifest

WORKFLOW_TEST = """
import pytest
import torch

SCALE = {scale}


def test_output(ckpt_baseline):
    out = torch.linspace(0, 1, 10) * SCALE
    ckpt_baseline.check("output", {{"out": out, "sum": out.sum().reshape(1)}})


@pytest.mark.parametrize("n", [2, 3])
def test_stable(ckpt_baseline, n):
    ckpt_baseline.check("ones", torch.ones(n, dtype=torch.bfloat16))


class TestGroup:
    def test_output(self, ckpt_baseline):
        ckpt_baseline.check("output", torch.arange(4))
"""


REPEATED_TEST = """
import pytest
import torch


def test_plain(ckpt_baseline):
    ckpt_baseline.check("out", torch.arange(3))


@pytest.mark.parametrize("tag", ["a", "1-2"])
def test_param(ckpt_baseline, tag):
    ckpt_baseline.check("out", torch.full((2,), float(len(tag))))


@pytest.mark.repeat(3)
def test_marked(ckpt_baseline):
    ckpt_baseline.check("out", torch.ones(2))


class TestGroup:
    def test_method(self, ckpt_baseline):
        ckpt_baseline.check("out", torch.zeros(2))
"""


def test_five_step_workflow(pytester: pytest.Pytester) -> None:
    """pytest-regressions' workflow: fails+writes, passes, fails, update, passes.

    Steps run in-process, except step 2 (a fresh ``python -m pytest`` process reads
    what step 1 wrote, plugin loaded through its entry point) and step 4 (``-n 2``:
    xdist workers each rewrite only their own tests' files).
    """

    def write_test(scale: float) -> None:
        pytester.makepyfile(test_model=WORKFLOW_TEST.format(scale=scale))

    root = pytester.path / "tests" / "baselines" / "test_model"
    output = root / "test_output" / "output.safetensors"
    stable = [root / f"test_stable_{n}_" / "ones.safetensors" for n in (2, 3)]
    in_class = root / "TestGroup.test_output" / "output.safetensors"

    write_test(1.0)
    result = pytester.runpytest("-p", "no:cacheprovider")  # 1. missing: written, fails
    result.assert_outcomes(failed=4)
    result.stdout.fnmatch_lines(
        [f"*baseline 'output' did not exist; it was written to {output}*"], consecutive=False
    )
    for path in (output, *stable, in_class):
        assert path.is_file(), path
    assert torch.equal(read_baseline(in_class)[0]["__tensor__"], torch.arange(4))
    snapshot = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (output, *stable, in_class)}

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")  # 2. passes
    result.assert_outcomes(passed=4)
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in snapshot} == snapshot

    write_test(1.5)
    result = pytester.runpytest("-p", "no:cacheprovider")  # 3. perturbed: fails with report
    result.assert_outcomes(failed=1, passed=3)
    result.stdout.fnmatch_lines(
        [
            "*baseline 'output' does not match the output.",
            "*'out': 9 of 10 elements differ (90.00%)",
            "*max abs diff 0.5 at index (9,)",
            "*max rel diff 0.5 at index *",
            "*worst elements:",
            "*(9,)*1*1.5*0.5",
            "*'sum': 1 of 1 elements differ (100.00%)",
            "*re-run with --ckpts-update-baselines to rewrite*output.safetensors.",
        ]
    )
    assert output.read_bytes() == snapshot[output][0]  # a failure never writes

    result = pytester.runpytest_subprocess(  # 4. update under xdist: rewritten, passes
        "-p", "no:cacheprovider", "-n", "2", "--ckpts-update-baselines"
    )
    result.assert_outcomes(passed=4)
    assert output.read_bytes() != snapshot[output][0]
    assert torch.equal(read_baseline(output)[0]["out"], torch.linspace(0, 1, 10) * 1.5)
    for path in (*stable, in_class):  # matching baselines keep their bytes (and mtime)
        assert (path.read_bytes(), path.stat().st_mtime_ns) == snapshot[path]
    assert not [p for p in root.rglob("*") if p.is_file() and p.suffix != ".safetensors"]

    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=4)  # 5. passes


def test_baselines_dir_ini(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nckpts_baselines_dir = golden\n")
    pytester.makepyfile(
        test_m="""
        import numpy as np

        def test_x(ckpt_baseline):
            ckpt_baseline.check("x", np.arange(3))
        """
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(failed=1)
    assert (pytester.path / "golden" / "test_m" / "test_x" / "x.safetensors").is_file()
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


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


def test_repetitions_share_one_baseline(pytester: pytest.Pytester) -> None:
    """pytest-repeat's ``[i-n]`` id is not part of the baseline folder; user ids are.

    Baselines written by a plain run must serve ``--count 2`` runs (and the
    ``repeat`` marker) unchanged: no folder per repetition, no failure.
    """
    pytester.makepyfile(test_model=REPEATED_TEST)
    root = pytester.path / "tests" / "baselines" / "test_model"
    expected = {
        "test_plain",
        "test_param_a_",
        "test_param_1-2_",  # a user id that looks like pytest-repeat's is kept
        "test_marked",
        "TestGroup.test_method",
    }
    # each test's first run writes its baseline; test_marked's 2nd and 3rd runs match it
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(failed=5, passed=2)
    assert {p.name for p in root.iterdir()} == expected
    snapshot = {p: p.read_bytes() for p in root.rglob("*.safetensors")}
    assert len(snapshot) == len(expected)

    result = pytester.runpytest("-p", "no:cacheprovider", "--count", "2")
    result.assert_outcomes(passed=2 * 4 + 3)
    result.stdout.no_fnmatch_line("*did not exist*")
    assert {p.name for p in root.iterdir()} == expected
    assert {p: p.read_bytes() for p in root.rglob("*.safetensors")} == snapshot


def test_repetitions_write_one_baseline(pytester: pytest.Pytester) -> None:
    """A first ``--count 2`` run writes one folder per test, and the next run passes."""
    pytester.makepyfile(test_model=REPEATED_TEST)
    root = pytester.path / "tests" / "baselines" / "test_model"
    result = pytester.runpytest("-p", "no:cacheprovider", "--count", "2")
    result.assert_outcomes(failed=5, passed=2 * 4 + 3 - 5)  # the first repetition writes
    assert len(list(root.iterdir())) == 5
    pytester.runpytest("-p", "no:cacheprovider", "--count", "2").assert_outcomes(passed=11)
