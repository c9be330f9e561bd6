"""Run modes and their precedence, resolved once per run into a frozen ``Policy``.

Precedence, highest first (SPEC §3): ``--ckpts``, ``SKIP_CHECKPOINT_DOWNLOAD=true``,
``PYTEST_CKPTS_MODE``, ini ``ckpts_mode``, default ``auto``. The kill switch sits
above the env/ini mode because CI sets it to turn every download off, whatever a
project's config says; only an explicit command line beats it.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "Mode",
    "Policy",
    "library_mode",
    "mode_option",
    "parse_mode",
    "resolve_mode",
    "skip_switch_on",
]

_TRUE = ("1", "true", "yes", "on")


class Mode(str, enum.Enum):
    """What a run does with tests that need checkpoints."""

    AUTO = "auto"  # download what is missing; hub down -> skip
    OFFLINE = "offline"  # cache only; missing -> skip; never touches the network
    SKIP = "skip"  # skip every requires_checkpoints test at collection, no I/O
    REQUIRE = "require"  # download what is missing; any failure -> error

    def __str__(self) -> str:
        return self.value


MODES = tuple(m.value for m in Mode)


def parse_mode(value: str, *, source: str) -> Mode:
    """Turn ``value`` into a Mode or raise ValueError naming where it came from."""
    text = value.strip().lower()
    try:
        return Mode(text)
    except ValueError:
        raise ValueError(
            f"pytest-ckpts: invalid checkpoint mode {value!r} from {source}; "
            f"valid modes: {', '.join(MODES)}"
        ) from None


def mode_option(value: str) -> str:
    """argparse ``type=`` for ``--ckpts``: a bad value is a usage error listing the modes."""
    import argparse

    try:
        return parse_mode(value, source="--ckpts").value
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def skip_switch_on(env: Mapping[str, str] | None = None) -> bool:
    """``SKIP_CHECKPOINT_DOWNLOAD`` is set to a true value (seed 004's CI switch)."""
    env = os.environ if env is None else env
    return env.get("SKIP_CHECKPOINT_DOWNLOAD", "").strip().lower() in _TRUE


def resolve_mode(
    cli: str | None, ini: str | None, env: Mapping[str, str] | None = None
) -> tuple[Mode, str]:
    """Return the mode and a short description of where it came from."""
    env = os.environ if env is None else env
    if cli:
        return parse_mode(cli, source="--ckpts"), "--ckpts"
    if skip_switch_on(env):
        return Mode.SKIP, "SKIP_CHECKPOINT_DOWNLOAD=true"
    env_mode = env.get("PYTEST_CKPTS_MODE", "")
    if env_mode:
        return parse_mode(env_mode, source="env PYTEST_CKPTS_MODE"), "PYTEST_CKPTS_MODE"
    if ini:
        return parse_mode(ini, source="ini ckpts_mode"), "ini ckpts_mode"
    mode, source = Mode.AUTO, "default"
    if env.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
        mode, source = Mode.OFFLINE, "HF_HUB_OFFLINE=1"
    return mode, source


def library_mode(env: Mapping[str, str] | None = None) -> Mode:
    """The mode for ``get_checkpoint()`` called outside a pytest run (env only)."""
    return resolve_mode(None, None, env)[0]


@dataclass(frozen=True)
class Policy:
    """Everything a run decided about checkpoints, once, before collection."""

    mode: Mode
    source: str
    strict: bool = False
    rehash: bool = False

    @property
    def downloads(self) -> bool:
        return self.mode in (Mode.AUTO, Mode.REQUIRE)
