"""The terminal summary of checkpoints (the '= checkpoints =' section)."""

from __future__ import annotations

import os

import pytest

from pytest_ckpts.testing import LocalHub
from tests.helpers import make_manifest
from tests.plugin.suites import FILES, TESTS


def test_quiet_summary_is_one_line(pytester: pytest.Pytester, hub: LocalHub) -> None:
    make_manifest(pytester.path, hub, FILES)
    pytester.makepyfile(test_it=TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider", "-q")
    result.stdout.fnmatch_lines(["checkpoints: 2 downloaded (*), 0 cached, 0 skipped*"])
    assert "= checkpoints =" not in result.stdout.str()


ONE = {"vae": os.urandom(300_000) + b"vae"}


def test_header_says_1_entry(pytester: pytest.Pytester, hub: LocalHub) -> None:
    make_manifest(pytester.path, hub, ONE, sha={"vae": None})
    pytester.makepyfile(test_it="def test_plain():\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["ckpts: mode=*(1 entry, 1 unverified)*"])
    assert "1 entries" not in result.stdout.str()
