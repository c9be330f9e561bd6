"""The --ckpts option (PYTEST_CKPTS_MODE, ini ckpts_mode): precedence and usage errors."""

from __future__ import annotations

import pytest

from pytest_ckpts.testing import LocalHub
from tests.helpers import make_manifest
from tests.plugin.suites import FILES, TESTS


def test_precedence_cli_over_env_over_ini(
    pytester: pytest.Pytester, hub: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_manifest(pytester.path, hub, FILES)
    pytester.makeini("[pytest]\nckpts_mode = skip\n")
    pytester.makepyfile(test_it=TESTS)
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1, skipped=2)  # ini
    monkeypatch.setenv("PYTEST_CKPTS_MODE", "offline")
    result = pytester.runpytest("-p", "no:cacheprovider")  # env beats ini
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(["ckpts: mode=offline (PYTEST_CKPTS_MODE)*"])
    assert hub.stats.request_count == 0
    result = pytester.runpytest("-p", "no:cacheprovider", "--ckpts=auto")  # CLI beats env
    result.assert_outcomes(passed=3)


def test_bad_mode_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_it="def test_x(): pass")
    result = pytester.runpytest_subprocess("--ckpts=sometimes")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*invalid checkpoint mode 'sometimes'*valid modes: auto, offline, skip, require*"]
    )
    pytester.makeini("[pytest]\nckpts_mode = nah\n")
    result = pytester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*'nah' from ini ckpts_mode*"])
