"""The plugin's hooks (pytest_ckpts_* in hookspecs.py), implemented in a conftest."""

from __future__ import annotations

import pytest

from pytest_ckpts.testing import LocalHub
from tests.helpers import make_manifest
from tests.plugin.suites import FILES, TESTS


def test_hooks_observe_events(pytester: pytest.Pytester, hub: LocalHub) -> None:
    make_manifest(pytester.path, hub, FILES)
    pytester.makeconftest(
        """
        EVENTS = []

        def pytest_ckpts_downloaded(config, name, path, nbytes, seconds):
            EVENTS.append(("downloaded", name, nbytes))

        def pytest_ckpts_verified(config, name, path, sha256, ok, seconds):
            EVENTS.append(("verified", name, ok))

        def pytest_ckpts_resolved(config, checkpoint):
            EVENTS.append(("resolved", checkpoint.name, checkpoint.source))

        def pytest_sessionfinish(session):
            print("EVENTS", sorted(EVENTS))
        """
    )
    pytester.makepyfile(test_it=TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider", "-s")
    size = len(FILES["vae"])
    expected = (
        f"EVENTS [('downloaded', 'ldm', {size}), ('downloaded', 'vae', {size}), "
        "('resolved', 'ldm', 'downloaded'), ('resolved', 'vae', 'downloaded'), "
        "('verified', 'ldm', True), ('verified', 'vae', True)]"
    )
    assert expected in result.stdout.str()
