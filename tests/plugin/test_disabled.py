"""A suite that uses the marker and ini keys also runs with ``-p no:ckpts`` (issue 18):
the recipe of docs/how-to/writing-tests.md, extracted from the page and run as written."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from pytest_ckpts.testing import LocalHub
from tests.helpers import make_manifest
from tests.plugin.suites import FILES
from tests.plugin.suites import TESTS as PLUGIN_TESTS

pytest_plugins = ["pytester"]

PAGE = Path(__file__).resolve().parents[2] / "docs" / "how-to" / "writing-tests.md"

INI = """\
[pytest]
ckpts_baselines_dir = tests/baselines
ckpts_mode = offline
ckpts_strict = true
"""

TESTS = """\
import pytest

@pytest.mark.requires_checkpoints("vae")
def test_needs_a_checkpoint(checkpoints):
    pass

def test_plain():
    pass
"""


# On the command line: pytest 9.0.3 here ignores --strict-markers given in an ini addopts
STRICT = ("--strict-markers", "--strict-config", "-p", "no:cacheprovider", "-p", "no:randomly")
# the warnings these runs must not give (not "-W error": other plugins warn under xdist)
NO_WARNINGS = (
    "-W",
    "error::pytest.PytestConfigWarning",
    "-W",
    "error::pytest.PytestUnknownMarkWarning",
)


def _recipe() -> str:
    """The documented conftest for ``-p no:ckpts`` runs."""
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), re.S)
    (recipe,) = [b for b in blocks if "-p no:ckpts" in b and "pytest_addoption" in b]
    return textwrap.dedent(recipe)


def test_without_the_recipe_strict_runs_stop(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_it=TESTS)
    result = pytester.runpytest_subprocess("-p", "no:ckpts", *STRICT)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*Unknown config option: ckpts_baselines_dir*"])
    result = pytester.runpytest_subprocess("-p", "no:ckpts", *STRICT[:1])
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*'requires_checkpoints' not found in `markers`*"])


def test_documented_recipe_runs_with_the_plugin_disabled(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makeconftest(_recipe())
    pytester.makepyfile(test_it=TESTS)
    result = pytester.runpytest_subprocess(
        "-p", "no:ckpts", *STRICT, "-m", "not requires_checkpoints", *NO_WARNINGS
    )
    assert result.ret == pytest.ExitCode.OK, result.stdout.str() + result.stderr.str()
    result.assert_outcomes(passed=1, deselected=1)


def test_documented_recipe_marker_registered_without_the_plugin(pytester: pytest.Pytester) -> None:
    """--strict-markers alone: the marker the recipe registers is known."""
    pytester.makeconftest(_recipe())
    pytester.makepyfile(test_it=TESTS.replace("(checkpoints)", "()"))
    result = pytester.runpytest_subprocess("-p", "no:ckpts", *STRICT[:1], *STRICT[2:])
    result.assert_outcomes(passed=2)


def test_documented_recipe_changes_nothing_with_the_plugin(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makeconftest(_recipe())
    pytester.makepyfile(test_it=TESTS)
    manifest = pytester.path / "checkpoints" / "checkpoints.yaml"
    manifest.parent.mkdir()
    manifest.write_text(
        "checkpoints:\n  vae:\n    hf_path: w/vae.ckpt\n    sha256: " + "a" * 64 + "\n"
        "config:\n  hf_repo: acme/ckpts\n"
    )
    result = pytester.runpytest_subprocess(*STRICT, "-rs", *NO_WARNINGS)
    assert result.ret == pytest.ExitCode.OK, result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines(["ckpts: mode=offline (ini ckpts_mode)*"])  # the plugin's ini
    result.assert_outcomes(passed=1, skipped=1)


def test_autoload_off_with_pytest_plugins_env(
    pytester: pytest.Pytester, hub: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_manifest(pytester.path, hub, FILES)
    pytester.makepyfile(test_it=PLUGIN_TESTS)
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.setenv("PYTEST_PLUGINS", "pytest_ckpts.plugin")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(passed=3)


def test_disabled_with_p_no_ckpts(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_it="def test_x(): pass")
    result = pytester.runpytest_subprocess("-p", "no:ckpts", "--help")
    assert "--ckpts-manifest" not in result.stdout.str()
    result = pytester.runpytest_subprocess("--help")
    result.stdout.fnmatch_lines(["*checkpoints (pytest-ckpts)*", "*--ckpts=MODE*"])


def test_optional_hook_impls_keep_working_with_the_plugin_disabled(
    pytester: pytest.Pytester,
) -> None:
    """docs/how-to/writing-tests.md "Hooks": a conftest implementing our hooks must not break ``-p no:ckpts``."""
    pytester.makeconftest(
        """
        import pytest

        @pytest.hookimpl(optionalhook=True)
        def pytest_ckpts_downloaded(config, name, path, nbytes, seconds):
            pass
        """
    )
    pytester.makepyfile(test_it="def test_x(): pass")
    pytester.runpytest("-p", "no:ckpts").assert_outcomes(passed=1)
    pytester.makeconftest(
        """
        def pytest_ckpts_downloaded(config, name, path, nbytes, seconds):
            pass
        """
    )
    result = pytester.runpytest("-p", "no:ckpts")
    assert result.ret != 0  # why the README says optionalhook=True
    result.stdout.fnmatch_lines(["*unknown hook*pytest_ckpts_downloaded*"])
