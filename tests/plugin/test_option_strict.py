"""--ckpts-strict (ini ckpts_strict): unverified entries fail instead of warning."""

from __future__ import annotations

import hashlib

import pytest

from pytest_ckpts.testing import LocalHub
from tests.helpers import make_manifest
from tests.plugin.suites import FILES, LIBRARY_TESTS, SMALL_FILES, TESTS


def test_strict_fails_unverified_and_default_warns(
    pytester: pytest.Pytester, hub: LocalHub, plugin_args: list[str]
) -> None:
    make_manifest(pytester.path, hub, FILES, sha={"vae": None})
    pytester.makepyfile(test_it=TESTS)
    # a subprocess: in-process runs inherit this suite's "warnings are errors" filter
    result = pytester.runpytest_subprocess(*plugin_args, "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, warnings=1)
    result.stdout.fnmatch_lines(["*unverified checkpoints*vae*pytest-ckpts lock*"])
    result = pytester.runpytest(*plugin_args, "-p", "no:cacheprovider", "--ckpts-strict")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*'vae' has no sha256*--ckpts-strict*"])


def test_library_call_obeys_strict(pytester: pytest.Pytester, hub: LocalHub) -> None:
    """``get_checkpoint()`` inside a ``requires_checkpoints`` test ignored
    ``--ckpts-strict`` and handed out an entry with no sha256 (the marker's fixtures
    failed it)."""
    make_manifest(pytester.path, hub, SMALL_FILES, sha={"vae": None})
    pytester.makepyfile(test_it=LIBRARY_TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider", "-s", "--ckpts-strict")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*'vae' has no sha256*--ckpts-strict*"])
    assert "HANDED" not in result.stdout.str()
    assert hub.stats.bodies_served == 0
    # without --ckpts-strict the same call gets the file (and a warning)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s")
    result.assert_outcomes(passed=1, warnings=1)
    assert "HANDED" in result.stdout.str()


def test_unverified_sha_matches_hub(pytester: pytest.Pytester, hub: LocalHub) -> None:
    """Control for the strict test: the file the library hands out is the hub's."""
    make_manifest(pytester.path, hub, SMALL_FILES)
    pytester.makepyfile(
        test_it=f"""
        import hashlib, pytest
        from pytest_ckpts import get_checkpoint

        @pytest.mark.requires_checkpoints
        def test_library():
            data = get_checkpoint("vae").read_bytes()
            assert hashlib.sha256(data).hexdigest() == {hashlib.sha256(SMALL_FILES["vae"]).hexdigest()!r}
        """
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
