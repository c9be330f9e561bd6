"""Every setting of pytest-ckpts, resolved in one place, with where each value came from.

Precedence, highest first, for every setting that has all four sources:

1. the command line (``--ckpts-*`` inside pytest, the CLI's own flags outside),
2. the environment (``PYTEST_CKPTS_*``; the empty string counts as unset),
3. the ini file (``ckpts_*`` keys in ``pytest.ini`` / ``pyproject.toml``),
4. the default.

The run mode has one extra level: ``SKIP_CHECKPOINT_DOWNLOAD=true`` sits between the
command line and ``PYTEST_CKPTS_MODE`` (it is CI's kill switch: only an explicit
``--ckpts`` beats it), and ``HF_HUB_OFFLINE=1`` turns the *default* into ``offline``.
docs/reference/options.md "Precedence" is generated from this docstring.

One frozen :class:`Settings` is built by :meth:`Settings.from_pytest` (the plugin),
:meth:`Settings.from_args` (the ``pytest-ckpts`` CLI) or :meth:`Settings.from_env`
(``get_checkpoint()`` outside pytest). ``sources`` records where each value came from,
so messages say "--ckpts" or "PYTEST_CKPTS_MODE" rather than guessing. This module is
the only one that names a ``PYTEST_CKPTS_*`` variable.
"""

from __future__ import annotations

import enum
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_MANIFEST",
    "ENV",
    "MODES",
    "Mode",
    "Settings",
    "add_pytest_options",
    "env_value",
    "find_manifest",
    "hf_cache_dirs",
    "mode_option",
    "parse_mode",
    "resolve_mode",
]

#: Where the manifest lives relative to the project root.
DEFAULT_MANIFEST = Path("checkpoints") / "checkpoints.yaml"

#: The environment variables of pytest-ckpts, by setting.
ENV = {
    "mode": "PYTEST_CKPTS_MODE",
    "manifest": "PYTEST_CKPTS_MANIFEST",
    "cache_dir": "PYTEST_CKPTS_CACHE_DIR",
    "retry_budget": "PYTEST_CKPTS_RETRY_BUDGET",
    "prefetch": "PYTEST_CKPTS_PREFETCH",
    "trust_manifest_endpoint": "PYTEST_CKPTS_TRUST_MANIFEST_ENDPOINT",
    "mirrors": "PYTEST_CKPTS_MIRRORS",
}
SKIP_SWITCH = "SKIP_CHECKPOINT_DOWNLOAD"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")

DEFAULT_RETRY_BUDGET = 60.0
DEFAULT_PREFETCH = 4


class Mode(str, enum.Enum):
    """What a run does with tests that need checkpoints."""

    AUTO = "auto"  # download what is missing; hub down -> stale copy, else skip
    OFFLINE = "offline"  # cache only; missing -> skip; never touches the network
    SKIP = "skip"  # skip every requires_checkpoints test at collection, no I/O
    REQUIRE = "require"  # download what is missing; any failure -> error

    def __str__(self) -> str:
        return self.value


MODES = tuple(m.value for m in Mode)


def env_value(name: str, env: Mapping[str, str] | None = None) -> str | None:
    """The environment variable ``name``; the empty string counts as unset."""
    value = (os.environ if env is None else env).get(name)
    return value if value else None


def env_true(name: str, env: Mapping[str, str] | None = None) -> bool:
    """Whether the switch ``name`` is on (``1``/``true``/``yes``/``on``, any case)."""
    return (env_value(name, env) or "").strip().lower() in _TRUE


def parse_mode(value: str, *, source: str) -> Mode:
    """Turn ``value`` into a Mode or raise ValueError naming where it came from."""
    try:
        return Mode(value.strip().lower())
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


def _number(value: str, *, source: str, kind: type[float] | type[int]) -> float:
    try:
        number = kind(value.strip())
    except ValueError:
        raise ValueError(
            f"pytest-ckpts: invalid value {value!r} from {source}: expected a "
            f"{'whole ' if kind is int else ''}number >= 0"
        ) from None
    if not math.isfinite(number) or number < 0:  # nan and inf: a budget that never ends
        raise ValueError(
            f"pytest-ckpts: invalid value {value!r} from {source}: must be >= 0 and finite"
        )
    return number


def seconds_option(value: str) -> float:
    """argparse ``type=`` for ``--ckpts-retry-budget``."""
    import argparse

    try:
        return _number(value, source="--ckpts-retry-budget", kind=float)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def count_option(value: str) -> int:
    """argparse ``type=`` for ``--ckpts-prefetch`` and ``fetch --jobs``."""
    import argparse

    try:
        return int(_number(value, source="the command line", kind=int))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def resolve_mode(
    cli: str | None, ini: str | None, env: Mapping[str, str] | None = None
) -> tuple[Mode, str]:
    """The mode and where it came from (see the module docstring for the order)."""
    if cli:
        return parse_mode(cli, source="--ckpts"), "--ckpts"
    if (env_value(SKIP_SWITCH, env) or "").strip().lower() in _TRUE:
        return Mode.SKIP, f"{SKIP_SWITCH}=true"
    env_mode = env_value(ENV["mode"], env)
    if env_mode:
        return parse_mode(env_mode, source=f"env {ENV['mode']}"), ENV["mode"]
    if ini:
        return parse_mode(ini, source="ini ckpts_mode"), "ini ckpts_mode"
    if (env_value("HF_HUB_OFFLINE", env) or "").strip().lower() in _TRUE:
        return Mode.OFFLINE, "HF_HUB_OFFLINE=1"
    return Mode.AUTO, "default"


def find_manifest(start: Path | None = None, env: Mapping[str, str] | None = None) -> Path | None:
    """Outside pytest: ``PYTEST_CKPTS_MANIFEST``, else walk up as git finds ``.git``."""
    explicit = env_value(ENV["manifest"], env)
    if explicit is not None:
        return Path(explicit).expanduser().absolute()
    here = (start or Path.cwd()).absolute()
    for directory in (here, *here.parents):
        candidate = directory / DEFAULT_MANIFEST
        if candidate.is_file():
            return candidate
    return None


def hf_cache_dirs(env: Mapping[str, str] | None = None) -> tuple[Path, Path | None]:
    """huggingface_hub's own cache, read from the environment now (the client reads it once,
    at import): the cache of a manifest without ``cache_dir`` (docs/manifest.md "The manifest").

    ``(home, hub)``: ``home`` is ``HF_HOME`` (else ``$XDG_CACHE_HOME/huggingface``, else
    ``~/.cache/huggingface``), where pytest-ckpts keeps its own state (``.ckpts/``); ``hub``
    is ``HF_HUB_CACHE`` (else the legacy ``HUGGINGFACE_HUB_CACHE``) when set and not
    ``home/hub``, else None: the hub cache is ``home/hub``, as for huggingface_hub.
    """

    def path(text: str) -> Path:
        return Path(os.path.expandvars(os.path.expanduser(text))).absolute()

    home_text = env_value("HF_HOME", env)
    if home_text is None:
        xdg = env_value("XDG_CACHE_HOME", env) or os.path.join("~", ".cache")
        home_text = os.path.join(xdg, "huggingface")
    home = path(home_text)
    hub_text = env_value("HF_HUB_CACHE", env) or env_value("HUGGINGFACE_HUB_CACHE", env)
    hub = None if hub_text is None else path(hub_text)
    return home, (None if hub is None or hub == home / "hub" else hub)


def _pick(
    name: str,
    cli: Any,
    cli_label: str,
    ini: Any,
    env: Mapping[str, str] | None,
) -> tuple[str | None, str]:
    """The first of command line > env > ini that is set, as text, with its source."""
    if cli is not None and cli != "":
        return str(cli), cli_label
    value = env_value(ENV[name], env) if name in ENV else None
    if value is not None:
        return value, ENV[name]
    if ini is not None and ini != "":
        return str(ini), f"ini ckpts_{name}"
    return None, "default"


def resolve_mirrors(
    cli: list[str] | None, cli_label: str, env: Mapping[str, str] | None = None
) -> tuple[tuple[str, ...] | None, str]:
    """Mirror templates and their source: command line > env > (None: the manifest's
    ``config.mirrors``). A higher source replaces the lower list; an empty value (the
    variable set to "", ``--ckpts-mirror ""``) turns mirrors off (docs/mirrors.md "What happens on a fetch")."""
    from .sources.template import SecretText, parse_mirror

    raw = (os.environ if env is None else env).get(ENV["mirrors"])
    if cli is not None:
        texts, source = [w for value in cli for w in value.split()], cli_label
    elif raw is not None:
        texts, source = raw.split(), f"env {ENV['mirrors']}"
    else:
        return None, "manifest config.mirrors"
    for text in texts:
        parse_mirror(text, source=source)  # ValueError naming the source
    return tuple(SecretText(t) for t in texts), source.removeprefix("env ")


def _flag(text: str, source: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"pytest-ckpts: invalid value {text!r} from {source}: expected true or false")


@dataclass(frozen=True)
class Settings:
    """Everything a run (or a CLI call, or a library call) decided, once, up front.

    ``manifest``/``cache_dir`` are absolute or None (None: no manifest configured or
    found; the manifest's own ``cache_dir``). ``sources`` maps a field name to where its
    value came from ("--ckpts", "PYTEST_CKPTS_MODE", "ini ckpts_mode", "default", ...).
    """

    mode: Mode = Mode.AUTO
    manifest: Path | None = None
    cache_dir: Path | None = None
    strict: bool = False
    rehash: bool = False
    retry_budget: float = DEFAULT_RETRY_BUDGET
    prefetch: int = DEFAULT_PREFETCH
    report: Path | None = None
    trust_manifest_endpoint: bool = False
    update_baselines: bool = False
    baselines_dir: Path = Path("tests/baselines")
    #: mirror URL templates; None: the manifest's ``config.mirrors`` (docs/mirrors.md "What happens on a fetch")
    mirrors: tuple[str, ...] | None = None
    sources: Mapping[str, str] = field(default_factory=dict)

    @property
    def downloads(self) -> bool:
        """Whether this run may touch the network."""
        return self.mode in (Mode.AUTO, Mode.REQUIRE)

    def source(self, name: str) -> str:
        """Where setting ``name`` came from."""
        return self.sources.get(name, "default")

    # ------------------------------------------------------------------ builders
    @classmethod
    def from_pytest(cls, config: Any, *, discover: bool = False) -> Settings:
        """The plugin's settings: ``--ckpts-*`` > ``PYTEST_CKPTS_*`` > ini > default.

        The environment is read as it is now. ``discover=True`` is a library call inside
        a test (docs/how-to/writing-tests.md "The library API"): with no manifest from the option, the environment
        or ini, it is the first ``checkpoints/checkpoints.yaml`` walking up from the
        current directory (a test may ``chdir`` into another project), else the run's
        ``<rootdir>/checkpoints/checkpoints.yaml``.

        Raises ValueError naming the source of a bad value (the plugin turns it into a
        ``pytest.UsageError``; a library call raises it as it is).
        """
        sources: dict[str, str] = {}
        mode, sources["mode"] = resolve_mode(
            config.getoption("ckpts_mode"), str(config.getini("ckpts_mode") or "")
        )
        invocation = Path(config.invocation_params.dir)
        ini_base = Path(config.inipath).parent if config.inipath else Path(config.rootpath)

        def path_setting(name: str, option: str, flag: str) -> Path | None:
            text, src = _pick(name, config.getoption(option), flag, config.getini(option), None)
            sources[name] = src
            if text is None:
                return None
            base = invocation if src == flag else ini_base if src.startswith("ini") else None
            path = Path(os.path.expanduser(text))
            return (base / path) if base is not None else path.absolute()

        manifest = path_setting("manifest", "ckpts_manifest", "--ckpts-manifest")
        if manifest is None and discover:
            manifest = find_manifest(env={})
            sources["manifest"] = "found" if manifest is not None else "default"
        if manifest is None:
            default = Path(config.rootpath) / DEFAULT_MANIFEST
            manifest = default if default.is_file() else None
        cache_dir = path_setting("cache_dir", "ckpts_cache_dir", "--ckpts-cache-dir")

        strict_cli = config.getoption("ckpts_strict")
        strict = bool(strict_cli) if strict_cli is not None else bool(config.getini("ckpts_strict"))
        sources["strict"] = (
            "--ckpts-strict" if strict_cli else "ini ckpts_strict" if strict else "default"
        )

        text, sources["retry_budget"] = _pick(
            "retry_budget",
            config.getoption("ckpts_retry_budget"),
            "--ckpts-retry-budget",
            config.getini("ckpts_retry_budget"),
            None,
        )
        budget = (
            DEFAULT_RETRY_BUDGET
            if text is None
            else _number(text, source=sources["retry_budget"], kind=float)
        )
        text, sources["prefetch"] = _pick(
            "prefetch",
            config.getoption("ckpts_prefetch"),
            "--ckpts-prefetch",
            config.getini("ckpts_prefetch"),
            None,
        )
        prefetch = (
            DEFAULT_PREFETCH
            if text is None
            else int(_number(text, source=sources["prefetch"], kind=int))
        )
        text, sources["trust_manifest_endpoint"] = _pick(
            "trust_manifest_endpoint",
            None,
            "",
            config.getini("ckpts_trust_manifest_endpoint"),
            None,
        )
        trust = text is not None and _flag(text, sources["trust_manifest_endpoint"])
        mirrors, sources["mirrors"] = resolve_mirrors(
            config.getoption("ckpts_mirrors"), "--ckpts-mirror"
        )
        report = config.getoption("ckpts_report")
        baselines = Path(str(config.getini("ckpts_baselines_dir") or "tests/baselines"))
        return cls(
            mode=mode,
            manifest=manifest,
            cache_dir=cache_dir,
            strict=strict,
            rehash=bool(config.getoption("ckpts_rehash")),
            retry_budget=budget,
            prefetch=prefetch,
            report=(invocation / report) if report else None,
            trust_manifest_endpoint=trust,
            update_baselines=bool(config.getoption("ckpts_update_baselines")),
            baselines_dir=baselines
            if baselines.is_absolute()
            else Path(config.rootpath) / baselines,
            mirrors=mirrors,
            sources=sources,
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, offline: bool = False) -> Settings:
        """Settings outside pytest: the environment, else defaults (``--offline`` wins)."""
        sources: dict[str, str] = {}
        mode, sources["mode"] = resolve_mode("offline" if offline else None, None, env)
        if offline:
            sources["mode"] = "--offline"
        manifest = find_manifest(env=env)
        sources["manifest"] = ENV["manifest"] if env_value(ENV["manifest"], env) else "found"
        cache = env_value(ENV["cache_dir"], env)
        sources["cache_dir"] = ENV["cache_dir"] if cache else "default"
        budget_text = env_value(ENV["retry_budget"], env)
        prefetch_text = env_value(ENV["prefetch"], env)
        trust_text = env_value(ENV["trust_manifest_endpoint"], env)
        mirrors, sources["mirrors"] = resolve_mirrors(None, "", env)
        for name, text in (
            ("retry_budget", budget_text),
            ("prefetch", prefetch_text),
            ("trust_manifest_endpoint", trust_text),
        ):
            sources[name] = ENV[name] if text else "default"
        return cls(
            mode=mode,
            manifest=manifest,
            cache_dir=Path(cache).expanduser().absolute() if cache else None,
            retry_budget=(
                _number(budget_text, source=ENV["retry_budget"], kind=float)
                if budget_text
                else DEFAULT_RETRY_BUDGET
            ),
            prefetch=(
                int(_number(prefetch_text, source=ENV["prefetch"], kind=int))
                if prefetch_text
                else DEFAULT_PREFETCH
            ),
            trust_manifest_endpoint=bool(trust_text)
            and _flag(str(trust_text), ENV["trust_manifest_endpoint"]),
            mirrors=mirrors,
            sources=sources,
        )

    @classmethod
    def from_args(cls, args: Any, env: Mapping[str, str] | None = None) -> Settings:
        """The CLI's settings: its flags (``--manifest``, ``--cache-dir``, ``--offline``) > env."""
        base = cls.from_env(env, offline=bool(getattr(args, "offline", False)))
        changes: dict[str, Any] = {}
        sources = dict(base.sources)
        if getattr(args, "manifest", None):
            changes["manifest"] = Path(args.manifest).expanduser().absolute()
            sources["manifest"] = "--manifest"
        if getattr(args, "cache_dir", None):
            changes["cache_dir"] = Path(args.cache_dir).expanduser().absolute()
            sources["cache_dir"] = "--cache-dir"
        if getattr(args, "mirror", None) is not None:
            changes["mirrors"], sources["mirrors"] = resolve_mirrors(args.mirror, "--mirror", env)
        return cls(**{**base.__dict__, **changes, "sources": sources})


def add_pytest_options(parser: Any) -> None:
    """Declare every ``--ckpts-*`` option and ``ckpts_*`` ini key (the plugin calls this)."""
    group = parser.getgroup("ckpts", "checkpoints (pytest-ckpts)")
    group.addoption(
        "--ckpts",
        dest="ckpts_mode",
        metavar="MODE",
        type=mode_option,
        default=None,
        help=f"what to do with tests that need checkpoints: {', '.join(MODES)}. "
        "auto: download missing, skip if the hub is down; offline: cache only; "
        "skip: skip them all; require: any failure is an error. "
        "Precedence: this flag > SKIP_CHECKPOINT_DOWNLOAD=true > PYTEST_CKPTS_MODE > "
        "ini ckpts_mode > auto.",
    )
    group.addoption(
        "--ckpts-manifest",
        dest="ckpts_manifest",
        metavar="PATH",
        default=None,
        help="checkpoint manifest (default: <rootdir>/checkpoints/checkpoints.yaml; "
        f"env {ENV['manifest']}, ini ckpts_manifest).",
    )
    group.addoption(
        "--ckpts-cache-dir",
        dest="ckpts_cache_dir",
        metavar="DIR",
        default=None,
        help="where checkpoints are cached (overrides the manifest's cache_dir; "
        f"env {ENV['cache_dir']}, ini ckpts_cache_dir).",
    )
    group.addoption(
        "--ckpts-retry-budget",
        dest="ckpts_retry_budget",
        metavar="SECONDS",
        type=seconds_option,
        default=None,
        help="total seconds one process may spend retrying transient hub errors "
        "(429, 5xx, resets) in this run, waits and failed requests included; a finite "
        f"number >= 0 (default 60; env {ENV['retry_budget']}, ini ckpts_retry_budget).",
    )
    group.addoption(
        "--ckpts-prefetch",
        dest="ckpts_prefetch",
        metavar="N",
        type=count_option,
        default=None,
        help="after collection, fetch the checkpoints the selected tests need, N at a time, "
        "while tests run; stops when the session ends, keeping partial files the next "
        f"download continues (default 4, 0 off; env {ENV['prefetch']}, ini ckpts_prefetch).",
    )
    group.addoption(
        "--ckpts-mirror",
        dest="ckpts_mirrors",
        metavar="URL",
        action="append",
        default=None,
        help="fetch checkpoints from this mirror before the hub (repeatable, tried in order; "
        "a folder, file://, http(s)://, s3://, gs:// URL template with {sha256} {name} {repo} "
        "{revision} {path} {filename}; default layout {sha256}). Replaces "
        f"{ENV['mirrors']} (whitespace separated) and the manifest's config.mirrors; "
        '--ckpts-mirror "" turns mirrors off. Bytes are trusted only if their sha256 matches.',
    )
    group.addoption(
        "--ckpts-report",
        dest="ckpts_report",
        metavar="PATH",
        default=None,
        help="write a JSON report of every checkpoint (status, sha256, commit, bytes, "
        "seconds, reason) to PATH; a GitHub step summary is appended when "
        "GITHUB_STEP_SUMMARY is set. Write it as --ckpts-report=PATH: after a space, an "
        "existing PATH is taken for a test path when pytest picks rootdir.",
    )
    group.addoption(
        "--ckpts-strict",
        dest="ckpts_strict",
        action="store_true",
        default=None,
        help="error (not warn) when a used checkpoint has no sha256 in the manifest.",
    )
    group.addoption(
        "--ckpts-rehash",
        dest="ckpts_rehash",
        action="store_true",
        default=False,
        help="re-hash every checkpoint instead of trusting verification stamps.",
    )
    group.addoption(
        "--ckpts-update-baselines",
        dest="ckpts_update_baselines",
        action="store_true",
        default=False,
        help="rewrite ckpt_baseline files that are missing or do not match, and pass.",
    )
    parser.addini("ckpts_mode", f"default checkpoint mode ({', '.join(MODES)})", default="")
    parser.addini("ckpts_manifest", "path of the checkpoint manifest, relative to rootdir")
    parser.addini("ckpts_cache_dir", "checkpoint cache directory, relative to rootdir")
    parser.addini("ckpts_retry_budget", "retry budget in seconds (default 60)", default="")
    parser.addini("ckpts_prefetch", "checkpoints fetched in parallel ahead of tests (default 4)")
    parser.addini(
        "ckpts_trust_manifest_endpoint",
        "send HF_TOKEN to the manifest's config.endpoint (default false: only to the public "
        f"hub or HF_ENDPOINT; env {ENV['trust_manifest_endpoint']})",
        default="",
    )
    parser.addini(
        "ckpts_strict", "error when a used checkpoint has no sha256", type="bool", default=False
    )
    parser.addini(
        "ckpts_baselines_dir",
        "directory of ckpt_baseline files, relative to rootdir (default: tests/baselines)",
        default="tests/baselines",
    )
