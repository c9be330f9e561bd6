"""The terminal summary of checkpoints (the '= checkpoints =' section)."""

from __future__ import annotations

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
