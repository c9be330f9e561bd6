"""--ckpts-retry-budget (PYTEST_CKPTS_RETRY_BUDGET, ini ckpts_retry_budget) in real runs: the budget ends a run's retries; bad values are usage errors naming their source."""

from __future__ import annotations

import os

import pytest

from pytest_ckpts.settings import Settings
from pytest_ckpts.testing import LocalHub
from tests.helpers import make_manifest

DATA = os.urandom(16 * 1024) + b"ckpt"


def test_retry_after_zero_in_a_real_run_ends_within_the_budget(
    pytester: pytest.Pytester, hub: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From outside, as CI sees it: `PYTEST_CKPTS_RETRY_BUDGET=1` and a hub answering
    `429 Retry-After: 0` forever: the run ends (skips), in few requests."""
    make_manifest(pytester.path, hub, {"a": DATA, "b": DATA + b"b"})
    pytester.makepyfile(
        test_it="""
        import pytest

        @pytest.mark.parametrize("name", ["a", "b"])
        def test_each(checkpoint, name):
            checkpoint(name)
        """
    )
    hub.throttle(10_000, retry_after=0)
    monkeypatch.setenv("PYTEST_CKPTS_RETRY_BUDGET", "1")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rs", timeout=60)
    result.assert_outcomes(skipped=2)
    assert hub.stats.request_count <= 20
    result.stdout.fnmatch_lines(["*429*retry budget*"])


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-0.5", "NaN"])
def test_non_finite_or_negative_budgets_are_usage_errors(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    pytester.makepyfile(test_it="def test_x(): pass")
    result = pytester.runpytest_inprocess(f"--ckpts-retry-budget={value}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"invalid value {value!r} from --ckpts-retry-budget" in result.stderr.str()

    monkeypatch.setenv("PYTEST_CKPTS_RETRY_BUDGET", value)
    result = pytester.runpytest_inprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"invalid value {value!r} from PYTEST_CKPTS_RETRY_BUDGET" in result.stderr.str()
    monkeypatch.delenv("PYTEST_CKPTS_RETRY_BUDGET")

    pytester.makeini(f"[pytest]\nckpts_retry_budget = {value}\n")
    result = pytester.runpytest_inprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"invalid value {value!r} from ini ckpts_retry_budget" in result.stderr.str()

    with pytest.raises(ValueError, match="PYTEST_CKPTS_RETRY_BUDGET"):
        Settings.from_env({"PYTEST_CKPTS_RETRY_BUDGET": value})
