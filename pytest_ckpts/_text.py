"""Words for counts, shared by every front end that prints one (CLI, terminal summary)."""

from __future__ import annotations

__all__ = ["plural"]


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 file``, ``2 files``, ``0 files``; ``many`` for irregular words (``entries``)."""
    return f"{n} {word if n == 1 else (many or word + 's')}"
