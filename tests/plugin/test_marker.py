"""The requires_checkpoints marker: registration, unknown names, -m filters."""

from __future__ import annotations

import os

import pytest

from pytest_ckpts.testing import LocalHub
from tests.helpers import make_manifest
from tests.plugin.suites import FILES, TESTS


def test_unknown_marker_name_is_a_collection_error(
    pytester: pytest.Pytester, hub: LocalHub
) -> None:
    make_manifest(pytester.path, hub, FILES)
    pytester.makepyfile(
        test_it="""
        import pytest

        @pytest.mark.requires_checkpoints("vea")
        def test_typo(checkpoints):
            pass

        def test_other():
            pass
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "--strict-markers")
    result.stdout.fnmatch_lines(
        ["*Checkpoint 'vea' not found*Did you mean: 'vae'*", "ERROR test_it.py::test_typo"]
    )
    assert "Traceback" not in result.stdout.str()
    assert result.ret != 0


def test_marker_registered_and_m_filter_works(pytester: pytest.Pytester, hub: LocalHub) -> None:
    make_manifest(pytester.path, hub, FILES)
    pytester.makepyfile(test_it=TESTS)
    result = pytester.runpytest(
        "-p", "no:cacheprovider", "--strict-markers", "-m", "not requires_checkpoints"
    )
    # test_lazy uses the `checkpoint` fixture: it needs a checkpoint, so it is deselected too
    result.assert_outcomes(passed=1, deselected=2)
    assert hub.stats.request_count == 0


VAE_LDM = {name: os.urandom(16 * 1024) + name.encode() for name in ("vae", "ldm")}


def test_fixture_users_are_deselected_by_marker_filter(
    pytester: pytest.Pytester, hub: LocalHub
) -> None:
    make_manifest(pytester.path, hub, VAE_LDM)
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture
        def model(checkpoint):          # uses a checkpoint fixture indirectly
            return checkpoint("vae")
        """
    )
    pytester.makepyfile(
        test_it="""
        def test_direct(checkpoint):
            checkpoint("ldm")

        def test_through_fixture(model):
            assert model.path.is_file()

        def test_plain():
            pass
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "-m", "not requires_checkpoints")
    result.assert_outcomes(passed=1, deselected=2)
    assert hub.stats.request_count == 0
    result = pytester.runpytest("-p", "no:cacheprovider", "-m", "requires_checkpoints")
    result.assert_outcomes(passed=2, deselected=1)
