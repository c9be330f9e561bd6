"""--ckpts=skip and SKIP_CHECKPOINT_DOWNLOAD: tests that need checkpoints skip at collection, no I/O."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pytest_ckpts.testing import LocalHub
from tests.helpers import make_manifest
from tests.plugin.suites import FILES, TESTS


def test_skip_mode_skips_at_collection_with_no_io(
    pytester: pytest.Pytester, hub: LocalHub, run: Callable[..., pytest.RunResult]
) -> None:
    make_manifest(pytester.path, hub, FILES)
    pytester.makepyfile(test_it=TESTS)
    result = run("--ckpts=skip")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(["*vae: checkpoint downloads disabled (--ckpts)*"])
    assert hub.stats.request_count == 0
    assert not (pytester.path / "checkpoints" / ".ckpts").exists()


def test_skip_switch_env(
    pytester: pytest.Pytester,
    hub: LocalHub,
    monkeypatch: pytest.MonkeyPatch,
    plugin_args: list[str],
) -> None:
    make_manifest(pytester.path, hub, FILES)
    pytester.makepyfile(test_it=TESTS)
    monkeypatch.setenv("SKIP_CHECKPOINT_DOWNLOAD", "true")
    monkeypatch.setenv("PYTEST_CKPTS_MODE", "require")
    result = pytester.runpytest(*plugin_args, "-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(["*SKIP_CHECKPOINT_DOWNLOAD=true*"])
    # the command line beats the kill switch
    pytester.runpytest(*plugin_args, "-p", "no:cacheprovider", "--ckpts=auto").assert_outcomes(
        passed=3
    )
