"""--ckpts=require: a checkpoint that cannot be had is an error, never a skip."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.helpers import dead_endpoint, make_manifest
from tests.plugin.suites import FILES, TESTS


def test_hub_down_require_errors(
    pytester: pytest.Pytester, run: Callable[..., pytest.RunResult]
) -> None:
    make_manifest(pytester.path, None, FILES, endpoint=dead_endpoint())
    pytester.makepyfile(test_it=TESTS)
    result = run("--ckpts=require")
    result.assert_outcomes(passed=1, errors=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*hub unreachable*", "*--ckpts=require turns hub failures into errors*"]
    )
    assert "Traceback" not in result.stdout.str()
