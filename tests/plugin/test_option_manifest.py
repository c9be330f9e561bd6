"""--ckpts-manifest (PYTEST_CKPTS_MANIFEST, ini ckpts_manifest), and runs with a bad or no manifest."""

from __future__ import annotations

import pytest

from pytest_ckpts.testing import LocalHub
from tests.helpers import make_manifest
from tests.plugin.suites import FILES, TESTS


def test_malformed_manifest_is_a_usage_error_without_traceback(pytester: pytest.Pytester) -> None:
    (pytester.path / "checkpoints").mkdir()
    (pytester.path / "checkpoints" / "checkpoints.yaml").write_text(
        "checkpoints:\n  vae:\n    filename: v.ckpt\nconfig:\n  hf_repo: o/r\n"
    )
    pytester.makepyfile(test_it="def test_x(): pass")
    result = pytester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*checkpoints.yaml:2, entry 'vae', key 'hf_path'*"])
    assert "Traceback" not in result.stderr.str() + result.stdout.str()


def test_suite_without_manifest_runs_untouched(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_it="def test_x(): pass")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert "ckpts:" not in result.stdout.str()
    assert "= checkpoints =" not in result.stdout.str()


def test_manifest_option_env_ini(
    pytester: pytest.Pytester, hub: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = make_manifest(pytester.path, hub, FILES)
    moved = pytester.path / "conf" / "models.yaml"
    moved.parent.mkdir()
    path.rename(moved)
    pytester.makepyfile(test_it=TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider", "--ckpts-manifest", "conf/models.yaml")
    result.assert_outcomes(passed=3)
    monkeypatch.setenv("PYTEST_CKPTS_MANIFEST", str(moved))
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=3)
    monkeypatch.delenv("PYTEST_CKPTS_MANIFEST")
    pytester.makeini("[pytest]\nckpts_manifest = conf/models.yaml\n")
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=3)
    result = pytester.runpytest_subprocess("--ckpts-manifest", "conf/missing.yaml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*missing.yaml*file not found*"])


def laughs(levels: int) -> str:
    """The billion-laughs bomb: each level is a list of nine aliases of the previous one."""
    rows = ["&l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    rows += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "checkpoints:\n  a:\n    hf_path: a.ckpt\n    description: [" + ", ".join(rows) + "]\n"


def test_plugin_refuses_a_bomb_at_start_up_in_one_line(pytester: pytest.Pytester) -> None:
    (pytester.path / "checkpoints").mkdir()
    (pytester.path / "checkpoints" / "checkpoints.yaml").write_text(laughs(9))
    pytester.makepyfile(test_it="def test_plain():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=60)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: pytest-ckpts: invalid manifest *checkpoints.yaml:4: aliases expand*alias bomb*"]
    )
    assert "Traceback" not in result.stderr.str()
