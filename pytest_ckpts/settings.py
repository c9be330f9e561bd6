"""Every setting of pytest-ckpts, resolved in one place, with where each value came from.

Precedence, highest first, for every setting that has all four sources:

1. the command line (``--ckpts-*`` inside pytest, the CLI's own flags outside),
2. the environment (``PYTEST_CKPTS_*``; the empty string counts as unset),
3. the ini file (``ckpts_*`` keys in ``pytest.ini`` / ``pyproject.toml``),
4. the default.

The run mode has one extra level: ``SKIP_CHECKPOINT_DOWNLOAD=true`` sits between the
command line and ``PYTEST_CKPTS_MODE`` (it is CI's kill switch: only an explicit
``--ckpts`` beats it), and ``HF_HUB_OFFLINE=1`` turns the *default* into ``offline``.

Relative paths: on the command line from the directory pytest (or ``pytest-ckpts``) was
started in, in ini files from the rootdir, in ``PYTEST_CKPTS_*`` variables from the
current directory; paths in the manifest from the project root (docs/manifest.md).
docs/reference/options.md "Precedence" is generated from this docstring.

Every setting is one row of :data:`TABLE` (its pytest option, CLI flag, variable, ini
key, default, parser and whether it is a path); the three builders below read the rows,
``add_pytest_options`` declares them, and the docs' option reference is generated from
them. One frozen :class:`Settings` is built by :meth:`Settings.from_pytest` (the plugin),
:meth:`Settings.from_args` (the ``pytest-ckpts`` CLI) or :meth:`Settings.from_env`
(``get_checkpoint()`` outside pytest). ``sources`` records where each value came from,
so messages say "--ckpts" or "PYTEST_CKPTS_MODE" rather than guessing. This module is
the only one that names a ``PYTEST_CKPTS_*`` variable.
"""

from __future__ import annotations

import enum
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_MANIFEST",
    "ENV",
    "ENV_VARS",
    "MODES",
    "RELATIVE_PATHS",
    "SETTINGS",
    "TABLE",
    "Mode",
    "Setting",
    "Settings",
    "add_pytest_options",
    "env_value",
    "find_manifest",
    "hf_cache_dirs",
    "parse_mode",
    "resolve_mode",
]

#: Where the manifest lives relative to the project root.
DEFAULT_MANIFEST = Path("checkpoints") / "checkpoints.yaml"

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


def _path(text: str, source: str) -> Path:
    return Path(os.path.expanduser(text))


def _seconds(text: str, source: str) -> float:
    return _number(text, source=source, kind=float)


def _count(text: str, source: str) -> int:
    return int(_number(text, source=source, kind=int))


def _text_value(text: str, source: str) -> str:
    return text


#: What a front end hands the table: the raw values of its own flags (None: not given),
#: the raw ini values (pytest only), the environment, and the folders relative paths start
#: from (see "Relative paths" in the module docstring).
@dataclass(frozen=True)
class _Inputs:
    cli: Mapping[str, Any]
    cli_labels: Mapping[str, str]
    ini: Mapping[str, Any]
    env: Mapping[str, str] | None
    cli_base: Path
    ini_base: Path


@dataclass(frozen=True)
class Setting:
    """One row of the settings table: every name a setting has in every front end.

    ``option`` is the pytest flag (dest ``ckpts_<name>``), ``cli`` the ``pytest-ckpts``
    flag (dest: the flag's name), ``env`` the variable, ``ini`` the ini key
    (``ckpts_<name>``); None where a front end has none. ``parse`` turns text into the
    value or raises ValueError naming the source. ``path`` rows are relative to a base
    (module docstring, "Relative paths"). ``resolve`` replaces command line > env > ini
    for the two settings that have another level (the mode) or another shape (mirrors).
    """

    name: str
    default: Any
    parse: Callable[[str, str], Any]
    help: str
    option: str | None = None
    cli: str | None = None
    env: str | None = None
    ini: str | None = None
    ini_type: str | None = None
    ini_help: str = ""
    ini_default: Any = ""
    metavar: str | None = None
    path: bool = False
    resolve: Callable[[Setting, _Inputs], tuple[Any, str]] | None = None

    @property
    def dest(self) -> str:
        """The pytest option's dest (and the ini key's name)."""
        return f"ckpts_{self.name}"

    @property
    def cli_dest(self) -> str | None:
        """The ``pytest-ckpts`` argparse dest of :attr:`cli`."""
        return None if self.cli is None else self.cli.lstrip("-").replace("-", "_")

    def names(self) -> str:
        """Where else this setting can be given, for ``--help``: "env X, ini Y"."""
        where = [f"env {self.env}" if self.env else "", f"ini {self.ini}" if self.ini else ""]
        return ", ".join(w for w in where if w)

    def lookup(self, given: _Inputs) -> tuple[Any, str]:
        """The value and its source: command line > environment > ini > default."""
        if self.resolve is not None:
            return self.resolve(self, given)
        raw = given.cli.get(self.name)
        if raw is not None and raw != "":
            return self._value(raw, given.cli_labels[self.name], given.cli_base)
        text = env_value(self.env, given.env) if self.env else None
        if text is not None:
            return self._value(text, self.env or "", None)
        raw = given.ini.get(self.name)
        if raw is not None and raw != "" and raw is not False:
            return self._value(raw, f"ini {self.ini}", given.ini_base)
        return self.default, "default"

    def _value(self, raw: Any, source: str, base: Path | None) -> tuple[Any, str]:
        value = raw if isinstance(raw, bool) else self.parse(str(raw), source)
        if self.path and isinstance(value, Path) and not value.is_absolute():
            value = (base / value) if base is not None else value.absolute()
        return value, source


def _mode_row(row: Setting, given: _Inputs) -> tuple[Any, str]:
    raw = given.cli.get("mode")
    mode, source = resolve_mode(raw or None, str(given.ini.get("mode") or ""), given.env)
    return mode, given.cli_labels["mode"] if raw else source


def _mirrors_row(row: Setting, given: _Inputs) -> tuple[Any, str]:
    return resolve_mirrors(given.cli.get("mirrors"), given.cli_labels["mirrors"], given.env)


_MODE_HELP = (
    f"what to do with tests that need checkpoints: {', '.join(MODES)}. "
    "auto: download missing, skip if the hub is down; offline: cache only; "
    "skip: skip them all; require: any failure is an error. "
    "Precedence: this flag > SKIP_CHECKPOINT_DOWNLOAD=true > PYTEST_CKPTS_MODE > "
    "ini ckpts_mode > auto"
)

#: Every setting, once: the plugin's options and ini keys, the CLI's flags, the
#: environment variables and the library all come from these rows.
TABLE: tuple[Setting, ...] = (
    Setting(
        "mode", Mode.AUTO, lambda text, source: parse_mode(text, source=source), _MODE_HELP,
        option="--ckpts", cli="--offline", env="PYTEST_CKPTS_MODE", ini="ckpts_mode",
        ini_help=f"default checkpoint mode ({', '.join(MODES)})", metavar="MODE",
        resolve=_mode_row,
    ),
    Setting(
        "manifest", None, _path,
        "checkpoint manifest, default <rootdir>/checkpoints/checkpoints.yaml",
        option="--ckpts-manifest", cli="--manifest", env="PYTEST_CKPTS_MANIFEST",
        ini="ckpts_manifest", ini_help="path of the checkpoint manifest", metavar="PATH",
        path=True,
    ),
    Setting(
        "cache_dir", None, _path,
        "where checkpoints are cached, overriding the manifest's cache_dir",
        option="--ckpts-cache-dir", cli="--cache-dir", env="PYTEST_CKPTS_CACHE_DIR",
        ini="ckpts_cache_dir", ini_help="checkpoint cache directory", metavar="DIR", path=True,
    ),
    Setting(
        "retry_budget", DEFAULT_RETRY_BUDGET, _seconds,
        "total seconds one process may spend retrying transient hub errors (429, 5xx, "
        "resets) in this run, waits and failed requests included; a finite number >= 0, "
        "default 60",
        option="--ckpts-retry-budget", env="PYTEST_CKPTS_RETRY_BUDGET",
        ini="ckpts_retry_budget", ini_help="retry budget in seconds (default 60)",
        metavar="SECONDS",
    ),
    Setting(
        "prefetch", DEFAULT_PREFETCH, _count,
        "after collection, fetch the checkpoints the selected tests need, N at a time, "
        "while tests run; stops when the session ends, keeping partial files the next "
        "download continues; default 4, 0 off",
        option="--ckpts-prefetch", env="PYTEST_CKPTS_PREFETCH", ini="ckpts_prefetch",
        ini_help="checkpoints fetched in parallel ahead of tests (default 4)", metavar="N",
    ),
    Setting(
        "mirrors", None, _text_value,
        "fetch checkpoints from this mirror before the hub (repeatable, tried in order; "
        "a folder, file://, http(s)://, s3://, gs:// URL template with {sha256} {name} "
        "{repo} {revision} {path} {filename}; default layout {sha256}). Replaces "
        "PYTEST_CKPTS_MIRRORS (whitespace separated) and the manifest's config.mirrors; "
        '--ckpts-mirror "" turns mirrors off. Bytes are trusted only if their sha256 matches',
        option="--ckpts-mirror", cli="--mirror", env="PYTEST_CKPTS_MIRRORS", metavar="URL",
        resolve=_mirrors_row,
    ),
    Setting(
        "report", None, _path,
        "write a JSON report of every checkpoint (status, sha256, commit, bytes, seconds, "
        "reason) to PATH; a GitHub step summary is appended when GITHUB_STEP_SUMMARY is "
        "set. Write it as --ckpts-report=PATH: after a space, an existing PATH is taken "
        "for a test path when pytest picks rootdir",
        option="--ckpts-report", metavar="PATH", path=True,
    ),
    Setting(
        "strict", False, lambda text, source: _flag(text, source),
        "error (not warn) when a used checkpoint has no sha256 in the manifest",
        option="--ckpts-strict", ini="ckpts_strict", ini_type="bool", ini_default=False,
        ini_help="error when a used checkpoint has no sha256",
    ),
    Setting(
        "rehash", False, lambda text, source: _flag(text, source),
        "re-hash every checkpoint instead of trusting verification stamps",
        option="--ckpts-rehash",
    ),
    Setting(
        "update_baselines", False, lambda text, source: _flag(text, source),
        "rewrite ckpt_baseline files that are missing or do not match, and pass",
        option="--ckpts-update-baselines",
    ),
    Setting(
        "trust_manifest_endpoint", False, lambda text, source: _flag(text, source),
        "send HF_TOKEN to the manifest's config.endpoint; default false: only to the "
        "public hub or HF_ENDPOINT",
        env="PYTEST_CKPTS_TRUST_MANIFEST_ENDPOINT", ini="ckpts_trust_manifest_endpoint",
    ),
    Setting(
        "baselines_dir", Path("tests/baselines"), _path,
        "directory of ckpt_baseline files",
        ini="ckpts_baselines_dir", ini_default="tests/baselines", path=True,
    ),
)  # fmt: skip

#: The rows by setting name.
SETTINGS = {row.name: row for row in TABLE}

#: The environment variables of pytest-ckpts, by setting.
ENV = {row.name: row.env for row in TABLE if row.env}

#: Every variable a run reads for its settings (a test suite isolating itself from the
#: caller scrubs these: tests/conftest.py).
ENV_VARS = (*ENV.values(), SKIP_SWITCH, "HF_HUB_OFFLINE")

#: How relative paths are read, said the same in --help, the docs and here.
RELATIVE_PATHS = (
    "Relative paths: on the command line from the directory pytest was started in, in "
    "ini files from the rootdir, in PYTEST_CKPTS_* variables from the current directory"
)


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
    def _build(cls, given: _Inputs) -> tuple[dict[str, Any], dict[str, str]]:
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for row in TABLE:
            values[row.name], sources[row.name] = row.lookup(given)
        return values, sources

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
        rootdir = Path(config.rootpath)
        given = _Inputs(
            cli={r.name: config.getoption(r.dest) for r in TABLE if r.option},
            cli_labels={r.name: r.option for r in TABLE if r.option},
            ini={r.name: config.getini(r.ini) for r in TABLE if r.ini},
            env=None,
            cli_base=Path(config.invocation_params.dir),
            ini_base=rootdir,
        )
        values, sources = cls._build(given)
        if values["manifest"] is None and discover:
            values["manifest"] = find_manifest(env={})
            sources["manifest"] = "found" if values["manifest"] is not None else "default"
        if values["manifest"] is None:
            default = rootdir / DEFAULT_MANIFEST
            values["manifest"] = default if default.is_file() else None
        if not values["baselines_dir"].is_absolute():  # the default, relative to rootdir
            values["baselines_dir"] = rootdir / values["baselines_dir"]
        return cls(**values, sources=sources)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, offline: bool = False) -> Settings:
        """Settings outside pytest: the environment, else defaults (``--offline`` wins)."""
        return cls._outside({"mode": "offline" if offline else None}, env)

    @classmethod
    def from_args(cls, args: Any, env: Mapping[str, str] | None = None) -> Settings:
        """The CLI's settings: its flags (``--manifest``, ``--cache-dir``, ``--offline``,
        ``--mirror``) > env > defaults."""
        given = {r.name: getattr(args, r.cli_dest, None) for r in TABLE if r.cli_dest}
        given["mode"] = "offline" if given.get("mode") else None  # --offline is a switch
        return cls._outside(given, env)

    @classmethod
    def _outside(cls, cli: Mapping[str, Any], env: Mapping[str, str] | None) -> Settings:
        """Outside pytest there is no ini; relative paths start at the current directory;
        the manifest is found walking up (:func:`find_manifest`)."""
        here = Path.cwd()
        given = _Inputs(
            cli=cli,
            cli_labels={r.name: r.cli for r in TABLE if r.cli},
            ini={},
            env=env,
            cli_base=here,
            ini_base=here,
        )
        values, sources = cls._build(given)
        if values["manifest"] is None:
            values["manifest"] = find_manifest(env=env)
            sources["manifest"] = "found"
        return cls(**values, sources=sources)


def _option_type(row: Setting) -> Callable[[str], Any]:
    """argparse ``type=`` for a pytest option: a bad value is a usage error naming the flag."""

    def convert(text: str) -> Any:
        import argparse

        try:
            row.parse(text, row.option or row.name)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text  # parsed again, with its source, by Setting.lookup

    convert.__name__ = row.metavar or row.name  # argparse names it in "invalid X value"
    return convert


def add_pytest_options(parser: Any) -> None:
    """Declare every ``--ckpts-*`` option and ``ckpts_*`` ini key from :data:`TABLE`."""
    group = parser.getgroup("ckpts", "checkpoints (pytest-ckpts)")
    for row in TABLE:
        if row.option is None:
            continue
        names = row.names() if row.name != "mode" else ""  # the mode's help has its precedence
        if row.env and row.env in row.help:
            names = names.replace(f"env {row.env}", "").strip(", ")
        help_text = row.help + (f" ({names})." if names else ".")
        if row.path and row.env:
            help_text += f" {RELATIVE_PATHS}."
        if row.metavar is None:  # a switch
            group.addoption(
                row.option, dest=row.dest, action="store_true", default=None, help=help_text
            )
            continue
        kwargs: dict[str, Any] = {"action": "append"} if row.name == "mirrors" else {}
        if not row.path and row.name != "mirrors":
            kwargs["type"] = _option_type(row)
        group.addoption(
            row.option, dest=row.dest, metavar=row.metavar, default=None, help=help_text, **kwargs
        )
    for row in TABLE:
        if row.ini is None:
            continue
        help_text = (row.ini_help or row.help) + (", relative to rootdir" if row.path else "")
        if row.ini_default and row.ini_type is None and row.ini_default not in help_text:
            help_text += f" (default: {row.ini_default})"
        if row.env and row.option is None:
            help_text += f" (env {row.env})"
        parser.addini(row.ini, help_text, type=row.ini_type, default=row.ini_default)
