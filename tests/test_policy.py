"""Run-mode precedence (SPEC §3): --ckpts > SKIP_CHECKPOINT_DOWNLOAD > env > ini > auto."""

from __future__ import annotations

import pytest

from pytest_ckpts.policy import Mode, library_mode, resolve_mode


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


def test_library_mode_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert library_mode() is Mode.AUTO
    monkeypatch.setenv("SKIP_CHECKPOINT_DOWNLOAD", "TRUE")
    assert library_mode() is Mode.SKIP
