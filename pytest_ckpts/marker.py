"""The ``requires_checkpoints`` marker: the names it carries and their validation.

Names are checked at collection (an unknown name is a collection error for that
test, with did-you-mean), so a typo never turns into a silent skip in CI.
"""

from __future__ import annotations

import pytest

from .session import CkptsSession

__all__ = [
    "CHECKPOINT_FIXTURES",
    "MARKER",
    "BadMarker",
    "add_implied_marker",
    "marked_names",
    "marker_problem",
]

MARKER = "requires_checkpoints"
#: Fixtures that hand out checkpoints: a test using one (even through another fixture)
#: needs checkpoints, so it carries the marker and ``-m "not requires_checkpoints"``
#: deselects it.
CHECKPOINT_FIXTURES = frozenset({"checkpoint", "checkpoints", "checkpoint_tensors"})


def add_implied_marker(item: pytest.Item) -> None:
    """Add a bare ``requires_checkpoints`` marker to tests that use a checkpoint fixture."""
    if item.get_closest_marker(MARKER) is not None:
        return
    names = getattr(item, "fixturenames", ())
    if CHECKPOINT_FIXTURES.intersection(names):
        item.add_marker(MARKER)


class BadMarker(pytest.Collector):
    """Stands in for a test whose marker names unknown checkpoints: a collection error."""

    message: str = ""

    def collect(self) -> list[pytest.Item | pytest.Collector]:
        raise self.CollectError(self.message)


def marked_names(node: pytest.Item) -> list[str]:
    names: list[str] = []
    for mark in node.iter_markers(MARKER):
        for arg in mark.args:
            if isinstance(arg, str):
                names.append(arg)
            else:
                names.extend(str(a) for a in arg)
    return list(dict.fromkeys(names))


def marker_problem(
    session: CkptsSession, item: pytest.Item, names: list[str] | None = None
) -> str | None:
    """Why ``item``'s marker cannot be served (no manifest, unknown names), else None;
    ``names``: its :func:`marked_names`, when the caller has them."""
    names = marked_names(item) if names is None else names
    if not names:
        return None
    if session.manifest is None:
        return (
            f"pytest-ckpts: {item.nodeid} requires checkpoints {names} but no manifest was "
            "found. Create checkpoints/checkpoints.yaml or pass --ckpts-manifest."
        )
    unknown = [n for n in names if n not in session.manifest]
    if unknown:
        return "pytest-ckpts: " + " ".join(
            session.manifest.unknown_name_message(n) for n in unknown
        )
    return None
