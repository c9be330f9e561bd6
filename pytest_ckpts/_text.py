"""Words for counts and durations, shared by every front end that prints one (CLI,
terminal summary, error messages)."""

from __future__ import annotations

__all__ = ["duration", "plural"]


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 file``, ``2 files``, ``0 files``; ``many`` for irregular words (``entries``)."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def duration(seconds: float) -> str:
    """``0.3s``, ``45s``, ``12 min``, ``6 h``: a wait as a person reads it."""
    if seconds < 10:
        text = f"{seconds:.1f}"
        return (text[:-2] if text.endswith(".0") else text) + "s"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.0f} h"
