"""--ckpts-cache-dir (PYTEST_CKPTS_CACHE_DIR, ini ckpts_cache_dir)."""

from __future__ import annotations

import pytest

from pytest_ckpts.testing import LocalHub
from tests.helpers import make_manifest
from tests.plugin.suites import FILES, TESTS


def test_cache_dir_option_and_env(
    pytester: pytest.Pytester, hub: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_manifest(pytester.path, hub, FILES)
    pytester.makepyfile(test_it=TESTS)
    pytester.runpytest("-p", "no:cacheprovider", "--ckpts-cache-dir", "cli-cache").assert_outcomes(
        passed=3
    )
    assert any((pytester.path / "cli-cache").rglob("vae.ckpt"))
    monkeypatch.setenv("PYTEST_CKPTS_CACHE_DIR", str(pytester.path / "env-cache"))
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=3)
    assert any((pytester.path / "env-cache").rglob("vae.ckpt"))
