"""Run-mode precedence (SPEC §3): --ckpts > SKIP_CHECKPOINT_DOWNLOAD > env > ini > auto."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_ckpts.settings import Mode, Settings, resolve_mode


@pytest.mark.parametrize(
    ("cli", "env", "ini", "expected", "source"),
    [
        (None, {}, None, Mode.AUTO, "default"),
        (None, {}, "offline", Mode.OFFLINE, "ini ckpts_mode"),
        (None, {"PYTEST_CKPTS_MODE": "require"}, "offline", Mode.REQUIRE, "PYTEST_CKPTS_MODE"),
        (
            None,
            {"PYTEST_CKPTS_MODE": "require", "SKIP_CHECKPOINT_DOWNLOAD": "true"},
            "offline",
            Mode.SKIP,
            "SKIP_CHECKPOINT_DOWNLOAD=true",
        ),
        ("auto", {"SKIP_CHECKPOINT_DOWNLOAD": "true"}, None, Mode.AUTO, "--ckpts"),
        ("OFFLINE", {"PYTEST_CKPTS_MODE": "require"}, "skip", Mode.OFFLINE, "--ckpts"),
        (None, {"SKIP_CHECKPOINT_DOWNLOAD": "false"}, None, Mode.AUTO, "default"),
        (None, {"PYTEST_CKPTS_MODE": ""}, "skip", Mode.SKIP, "ini ckpts_mode"),  # empty = unset
        (None, {"HF_HUB_OFFLINE": "1"}, None, Mode.OFFLINE, "HF_HUB_OFFLINE=1"),
    ],
)
def test_precedence(
    cli: str | None, env: dict[str, str], ini: str | None, expected: Mode, source: str
) -> None:
    assert resolve_mode(cli, ini, env) == (expected, source)


@pytest.mark.parametrize(
    ("cli", "env", "ini", "where"),
    [
        ("sometimes", {}, None, "--ckpts"),
        (None, {"PYTEST_CKPTS_MODE": "nope"}, None, "env PYTEST_CKPTS_MODE"),
        (None, {}, "maybe", "ini ckpts_mode"),
    ],
)
def test_invalid_mode_names_source_and_valid_values(
    cli: str | None, env: dict[str, str], ini: str | None, where: str
) -> None:
    with pytest.raises(ValueError, match="valid modes: auto, offline, skip, require") as info:
        resolve_mode(cli, ini, env)
    assert where in str(info.value)


def test_library_settings_read_the_environment_and_name_the_source(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = Settings.from_env()
    assert (settings.mode, settings.source("mode")) == (Mode.AUTO, "default")
    monkeypatch.setenv("SKIP_CHECKPOINT_DOWNLOAD", "TRUE")
    settings = Settings.from_env()
    assert (settings.mode, settings.source("mode")) == (Mode.SKIP, "SKIP_CHECKPOINT_DOWNLOAD=true")
    monkeypatch.delenv("SKIP_CHECKPOINT_DOWNLOAD")
    monkeypatch.setenv("PYTEST_CKPTS_MODE", "skip")
    settings = Settings.from_env()
    assert (settings.mode, settings.source("mode")) == (Mode.SKIP, "PYTEST_CKPTS_MODE")


@pytest.mark.parametrize(
    ("env", "expected", "source"),
    [
        ({}, 60.0, "default"),
        ({"PYTEST_CKPTS_RETRY_BUDGET": "2.5"}, 2.5, "PYTEST_CKPTS_RETRY_BUDGET"),
    ],
)
def test_retry_budget_from_env(env: dict[str, str], expected: float, source: str) -> None:
    settings = Settings.from_env(env)
    assert (settings.retry_budget, settings.source("retry_budget")) == (expected, source)


def test_bad_numbers_name_their_source() -> None:
    with pytest.raises(ValueError, match="PYTEST_CKPTS_PREFETCH"):
        Settings.from_env({"PYTEST_CKPTS_PREFETCH": "many"})
    with pytest.raises(ValueError, match="must be >= 0"):
        Settings.from_env({"PYTEST_CKPTS_RETRY_BUDGET": "-1"})


# --------------------------------------------------------------------------- the table
# pytest_ckpts/settings.py TABLE drives the plugin's options, the CLI's flags and the
# environment; these tests hold each front end to it.

MANIFEST = (
    "checkpoints:\n  a:\n    hf_path: a.bin\n    sha256: <to_be_calculated>\n"
    "config:\n  hf_repo: acme/x\n"
)


def test_every_row_is_an_option_or_ini_key_pytest_knows(pytester: pytest.Pytester) -> None:
    from pytest_ckpts.settings import TABLE

    result = pytester.runpytest("--help")
    text = result.stdout.str()
    for row in TABLE:
        for name in (row.option, row.ini):
            if name is not None:
                assert name in text, f"{row.name}: {name} missing from pytest --help"
        if row.path and row.option and row.env:
            assert "Relative paths: on the command line" in text


def test_the_suite_scrubs_every_settings_variable(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tests/conftest.py's scrub list comes from the table: a variable set by the caller
    (CI exports PYTEST_CKPTS_RETRY_BUDGET, ...) never reaches a test."""
    from pytest_ckpts.settings import ENV_VARS

    conftest = Path(__file__).with_name("conftest.py").read_text()
    pytester.makeconftest(conftest)
    pytester.makepyfile(
        "import os\n"
        f"NAMES = {list(ENV_VARS)!r}\n"
        "def test_clean():\n"
        "    assert [n for n in NAMES if n in os.environ] == []\n"
    )
    manifest = pytester.path / "checkpoints" / "checkpoints.yaml"
    manifest.parent.mkdir()
    manifest.write_text(MANIFEST)
    valid = {  # values the run's own start-up accepts; "1" suits the others
        "PYTEST_CKPTS_MODE": "skip",
        "PYTEST_CKPTS_MANIFEST": str(manifest),
        "PYTEST_CKPTS_CACHE_DIR": str(pytester.path / "cache"),
        "PYTEST_CKPTS_MIRRORS": str(pytester.path / "mirror"),
    }
    for name in ENV_VARS:
        monkeypatch.setenv(name, valid.get(name, "1"))
    pytester.runpytest("-p", "no:randomly").assert_outcomes(passed=1)


def test_ini_paths_are_relative_to_the_rootdir_not_the_ini_folder(
    pytester: pytest.Pytester,
) -> None:
    """One base for ini paths, as --help and the docs say: with ``-c config/pytest.ini
    --rootdir .`` the cache is ``./cache``, not ``config/cache`` (issue #18)."""
    (pytester.path / "checkpoints").mkdir()
    (pytester.path / "checkpoints" / "checkpoints.yaml").write_text(MANIFEST)
    (pytester.path / "config").mkdir()
    (pytester.path / "config" / "pytest.ini").write_text("[pytest]\nckpts_cache_dir = cache\n")
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest(
        "-c", "config/pytest.ini", f"--rootdir={pytester.path}", "-p", "no:randomly"
    )
    result.stdout.fnmatch_lines(["ckpts: mode=auto (default), *, cache=cache/hub"])


def test_command_line_paths_are_relative_to_the_invocation_dir(
    pytester: pytest.Pytester,
) -> None:
    (pytester.path / "checkpoints").mkdir()
    (pytester.path / "checkpoints" / "checkpoints.yaml").write_text(MANIFEST)
    (pytester.path / "pytest.ini").write_text("[pytest]\n")
    sub = pytester.mkdir("sub")
    pytester.makepyfile("def test_nothing():\n    pass\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(sub)
        result = pytester.runpytest(
            str(pytester.path), "--ckpts-cache-dir=here", "-p", "no:randomly"
        )
    result.stdout.fnmatch_lines(["ckpts: *, cache=sub/here/hub"])


def test_cli_flags_env_and_defaults_come_from_the_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``from_args`` reads the CLI's flags from the rows (``--cache-dir``, ``--offline``,
    ``--mirror``), the variables below them, relative paths from the current directory."""
    import argparse

    monkeypatch.chdir(tmp_path)
    args = argparse.Namespace(
        manifest=None, cache_dir="c", offline=True, mirror=[str(tmp_path / "m")]
    )
    env = {"PYTEST_CKPTS_CACHE_DIR": "/elsewhere", "PYTEST_CKPTS_PREFETCH": "2"}
    settings = Settings.from_args(args, env)
    assert settings.cache_dir == tmp_path / "c"
    assert settings.source("cache_dir") == "--cache-dir"
    assert (settings.mode, settings.source("mode")) == (Mode.OFFLINE, "--offline")
    assert settings.mirrors == (str(tmp_path / "m"),)
    assert (settings.prefetch, settings.source("prefetch")) == (2, "PYTEST_CKPTS_PREFETCH")
    settings = Settings.from_args(argparse.Namespace(), {"PYTEST_CKPTS_CACHE_DIR": "rel"})
    assert settings.cache_dir == tmp_path / "rel"
    assert settings.source("cache_dir") == "PYTEST_CKPTS_CACHE_DIR"


def test_bad_option_value_is_a_usage_error_naming_the_flag(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest("--ckpts-retry-budget=nan")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--ckpts-retry-budget*must be >= 0 and finite*"])


def test_each_front_end_names_only_its_own_options(pytester: pytest.Pytester) -> None:
    """A fix for any setting, said by the plugin, names flags ``pytest --help`` lists; said
    by the CLI, flags ``pytest-ckpts --help`` lists (or a variable); said by the library,
    the variable (issue #18: "each front end's hints name options that exist there")."""
    import re

    from pytest_ckpts.cli import build_parser, cli_words
    from pytest_ckpts.errors import Fix, env_words
    from pytest_ckpts.session import plugin_words
    from pytest_ckpts.settings import ENV

    pytest_help = pytester.runpytest("--help").stdout.str()
    cli_help = build_parser().format_help()
    for name, variable in ENV.items():
        for value in ("auto", "offline", "x"):
            fix = Fix.set(name, value)
            for words, known in ((plugin_words, pytest_help), (cli_words(), cli_help)):
                said = words(fix)
                flags = re.findall(r"--[a-z][\w-]*", said)
                assert flags or variable in said, (name, said)
                for flag in flags:
                    assert re.search(rf"{flag}\b", known), (name, said)
            assert env_words(fix) == f"set {variable}={value}"
