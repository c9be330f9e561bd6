"""``pytest_ckpts.testing.experiments``: layout and state assertions, and the fixture."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pytest_ckpts.experiments import CheckpointManager
from pytest_ckpts.testing.experiments import assert_experiment_layout, assert_state_equal
from tests.experiment_models import CONFIG, UIDS, make_model


def test_layout_assertion_lists_every_problem(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path)
    model = make_model()
    h, _ = mgr.update_experiment_hash(model, CONFIG, UIDS)
    path = mgr.save_model_checkpoint(model, step=100)
    assert_experiment_layout(tmp_path, h, steps=[100], config=True)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes
    path.write_bytes(bytes(data))
    (path.parent / f".{path.name}.abc.tmp").write_bytes(b"partial")
    with pytest.raises(AssertionError) as exc_info:
        assert_experiment_layout(tmp_path, h, steps=[100, 200], data_backup=True)
    message = str(exc_info.value)
    assert f"no data backup in checkpoints/{h}/data" in message
    assert "temp files left by an interrupted write" in message
    assert f"expected ['{h}_step_000100.pt', '{h}_step_000200.pt']" in message
    assert f"{path.name}: sha256" in message


def test_checkpoint_manager_fixture(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import torch
        from torch import nn
        from pytest_ckpts.testing.experiments import assert_experiment_layout, assert_state_equal

        def test_loop(checkpoint_manager, tmp_path):
            model = nn.Linear(2, 2)
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            h, is_new = checkpoint_manager.update_experiment_hash(model, {"lr": 0.1}, ["a"])
            assert is_new
            for step in (100, 200):
                checkpoint_manager.save_model_checkpoint(
                    model, step=step, optimizer=opt, metadata={"loss": 1 / step}
                )
            assert checkpoint_manager.root == tmp_path / "logs"
            assert_experiment_layout(checkpoint_manager.root, h, steps=[100, 200], config=True)
            assert checkpoint_manager.best("loss")["step"] == 200

        def test_layout_failure_is_readable(checkpoint_manager):
            h, _ = checkpoint_manager.update_experiment_hash(nn.Linear(2, 2), {"lr": 0.1}, ["a"])
            assert_experiment_layout(checkpoint_manager.root, h, steps=[100])
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*AssertionError: experiment * is not laid out as expected:*", "*step checkpoints*"]
    )
    result.stdout.no_fnmatch_line("*def _index_problems*")


def test_state_assertion_lists_differences_by_key_path() -> None:
    w = torch.tensor([1.0, 2.0, 0.0])
    expected = {"w": w, "groups": [{"lr": 0.1, "betas": (0.9, 0.99)}]}
    same = {"w": torch.tensor([1.0, 2.0, 0.0]), "groups": [{"lr": 0.1, "betas": [0.9, 0.99]}]}
    assert_state_equal(same, expected)
    bad = {
        "w": torch.tensor([1.0, 2.5, -0.0]),
        "groups": [{"lr": 0.2, "betas": (0.9, 0.99)}],
        "extra": 1,
    }
    with pytest.raises(AssertionError) as exc_info:
        assert_state_equal(bad, expected, name="opt")
    message = str(exc_info.value)
    assert "opt: unexpected keys ['extra']" in message
    assert "opt['w']: 2 of 3 elements differ (first at flat index 1, max abs diff 0.5)" in message
    assert "opt['groups'][0]['lr']: 0.2 vs expected 0.1" in message
    with pytest.raises(AssertionError, match=r"dtype torch.float64 vs expected torch.float32"):
        assert_state_equal({"w": w.double()}, {"w": w})
