"""Per-run state shared by hooks and fixtures (placeholder until the plugin lands)."""

from __future__ import annotations

import pytest

__all__ = ["USED_KEY", "used_checkpoint_shas"]

#: name -> sha256 of every checkpoint a test item resolved (for baselines).
USED_KEY = pytest.StashKey[dict[str, str]]()


def used_checkpoint_shas(item: pytest.Item) -> dict[str, str]:
    """Return name -> sha256 of the checkpoints ``item`` used so far."""
    return dict(item.stash.get(USED_KEY, {}))
