"""Per-test report data: what each test's checkpoints were, as pytest user properties.

``ckpts.<name>.status`` (downloaded, cached, stale, skipped, failed), ``ckpts.<name>.sha256``,
``ckpts.<name>.commit`` and, when there is one, ``ckpts.<name>.reason`` go to
``item.user_properties``: junit XML (``<property>``), pytest-json-report (``user_properties``)
and anything reading ``TestReport.user_properties`` get them, from xdist workers too
(docs/how-to/ci.md "Reports for fleets").
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from .manifest import CheckpointSpec, is_pinned

__all__ = ["PREFIX", "on_outcome", "record"]

PREFIX = "ckpts."


def record(
    item: pytest.Item | None,
    name: str,
    status: str,
    *,
    sha256: str | None = None,
    commit: str | None = None,
    reason: str | None = None,
) -> None:
    """Set the properties of checkpoint ``name`` on ``item`` (replacing earlier ones)."""
    if item is None:
        return
    key = f"{PREFIX}{name}."
    rows = [(f"{key}status", status)]
    rows += [(f"{key}{k}", v) for k, v in (("sha256", sha256), ("commit", commit)) if v]
    if reason:
        rows.append((f"{key}reason", reason))
    kept = [p for p in item.user_properties if not str(p[0]).startswith(key)]
    item.user_properties[:] = [*kept, *rows]


@contextmanager
def on_outcome(item: pytest.Item | None, spec: CheckpointSpec) -> Iterator[None]:
    """Record ``skipped`` / ``failed`` when the run's policy skips or fails the test."""
    __tracebackhide__ = True
    try:
        yield
    except (pytest.skip.Exception, pytest.fail.Exception) as exc:
        status = "skipped" if isinstance(exc, pytest.skip.Exception) else "failed"
        reason = getattr(exc, "ckpts_reason", None) or exc.msg or None
        commit = spec.revision if is_pinned(spec.revision) else None
        record(item, spec.name, status, sha256=spec.sha256, commit=commit, reason=reason)
        raise
