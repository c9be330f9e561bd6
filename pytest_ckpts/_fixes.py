"""Ways out of an error, as data, and the library's words for them.

A :class:`Fix` is a setting of :mod:`pytest_ckpts.settings` with a value, a
``pytest-ckpts`` command with its arguments (and the cache directory in force), or a
sentence no front end has an option for. :mod:`pytest_ckpts.errors` carries them; each
front end says them in its own words (``env_words`` here for the library; the plugin's
and the CLI's in ``session`` and ``cli``). Also the two readers of another library's
exception text (``foreign_line``, ``hub_error_cause``): the only places such text is cut.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass

from .settings import ENV

__all__ = [
    "METAVAR",
    "Fix",
    "Words",
    "env_words",
    "fixes_sentence",
    "foreign_line",
    "hub_error_cause",
]

#: What a setting's value is called where a fix cannot know it (``--cache-dir DIR``).
METAVAR = {
    "mode": "MODE",
    "manifest": "PATH",
    "cache_dir": "DIR",
    "retry_budget": "SECONDS",
    "prefetch": "N",
    "trust_manifest_endpoint": "1",
}


@dataclass(frozen=True)
class Fix:
    """One way out of an error, as data; each front end says it in its own words.

    Exactly one of: ``setting`` (a key of ``settings.ENV``) with ``value`` (None: the
    user picks, shown as the setting's metavar); ``command`` (a ``pytest-ckpts``
    command and its arguments) with the ``cache_dir`` in force when it is not the
    manifest's default; ``text`` (a way out no front end has an option for, said as
    is). ``why`` follows the fix ("to run from the cache").
    """

    setting: str | None = None
    value: str | None = None
    command: tuple[str, ...] = ()
    cache_dir: str | None = None
    text: str = ""
    why: str = ""

    @classmethod
    def set(cls, setting: str, value: str | None = None, *, why: str = "") -> Fix:
        assert setting in ENV, setting
        return cls(setting=setting, value=value, why=why)

    @classmethod
    def run(cls, *command: str, cache_dir: object = None, why: str = "") -> Fix:
        return cls(
            command=command, cache_dir=None if cache_dir is None else str(cache_dir), why=why
        )

    @classmethod
    def say(cls, text: str) -> Fix:
        return cls(text=text)

    @property
    def command_line(self) -> str:
        """The command as a shell line: the same words in every front end."""
        words = ["pytest-ckpts", *self.command]
        if self.cache_dir is not None:
            words += ["--cache-dir", self.cache_dir]
        return " ".join(shlex.quote(w) for w in words)

    @property
    def shown_value(self) -> str:
        return self.value if self.value is not None else METAVAR.get(self.setting or "", "VALUE")


#: A front end's words for a fix: ``Fix -> phrase`` ("set PYTEST_CKPTS_MODE=auto").
Words = Callable[[Fix], str]


def env_words(fix: Fix) -> str:
    """The library's words: settings are environment variables (a script has no flags)."""
    if fix.command:
        phrase = f"run `{fix.command_line}`"
    elif fix.setting is not None:
        phrase = f"set {ENV[fix.setting]}={fix.shown_value}"
    else:
        phrase = fix.text
    return f"{phrase} {fix.why}" if fix.why else phrase


def foreign_line(exc: BaseException) -> str:
    """The first line of another library's exception (yaml, int(), ...), whose text is its
    only data; never used on pytest-ckpts' own errors, which carry fields."""
    return str(exc).partition("\n")[0] or type(exc).__name__


def hub_error_cause(exc: BaseException) -> str:
    """A huggingface_hub error as a short cause, from its fields (class, status, the
    server's message), not from its text."""
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    server = getattr(exc, "server_message", None)
    cause = type(exc).__name__ + (f" (HTTP {status})" if status else "")
    return f"{cause}: {server}" if server else cause


def fixes_sentence(fixes: tuple[Fix, ...], words: Words) -> str:
    """``fixes`` as one sentence: "Run `...`, or set X=1."."""
    phrases = [words(f) for f in fixes]
    text = ", or ".join(p for p in phrases if p)
    return (text[:1].upper() + text[1:] + ".") if text else ""
