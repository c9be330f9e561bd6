"""Run-mode precedence (SPEC §3): --ckpts > SKIP_CHECKPOINT_DOWNLOAD > env > ini > auto."""

from __future__ import annotations

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
