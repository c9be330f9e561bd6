"""Test doubles and helpers for suites that use pytest-ckpts.

``LocalHub`` is a Hugging Face Hub stand-in the real ``huggingface_hub`` client
downloads from and uploads to, on 127.0.0.1, with a request log and fault injection
(``FaultPlan``/``RequestLog``, shared with the MLflow test server).
Names are loaded on first use, so ``python -m pytest_ckpts.testing.hub`` runs cleanly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .faults import FaultPlan, RequestLog
    from .hub import FaultInjector, HubStats, LocalHub, RequestRecord

__all__ = ["FaultInjector", "FaultPlan", "HubStats", "LocalHub", "RequestLog", "RequestRecord"]


def __getattr__(name: str) -> Any:
    if name in ("FaultPlan", "RequestLog"):
        from . import faults

        return getattr(faults, name)
    if name in __all__:
        from . import hub

        return getattr(hub, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
