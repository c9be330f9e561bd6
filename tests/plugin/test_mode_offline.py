"""--ckpts=offline (and HF_HUB_OFFLINE): cached checkpoints only, never the network."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pytest_ckpts.testing import LocalHub
from tests.helpers import make_manifest
from tests.plugin.suites import FILES, TESTS


def test_offline_never_touches_network(
    pytester: pytest.Pytester, hub: LocalHub, run: Callable[..., pytest.RunResult]
) -> None:
    make_manifest(pytester.path, hub, FILES)
    pytester.makepyfile(test_it=TESTS)
    result = run("--ckpts=offline")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(["*checkpoint 'vae'*not cached*offline*"])
    assert hub.stats.request_count == 0
    # warm the cache, then offline runs green, still with zero requests
    assert run("--ckpts=auto").ret == 0
    hub.stats.reset()
    run("--ckpts=offline").assert_outcomes(passed=3)
    assert hub.stats.request_count == 0
