"""Test doubles and helpers for suites that use pytest-ckpts.

``LocalHub`` is a Hugging Face Hub stand-in the real ``huggingface_hub`` client
downloads from and uploads to, on 127.0.0.1, with counters and fault injection.
Names are loaded on first use, so ``python -m pytest_ckpts.testing.hub`` runs cleanly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .hub import FaultInjector, HubStats, LocalHub, RequestRecord

__all__ = ["FaultInjector", "HubStats", "LocalHub", "RequestRecord"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import hub

        return getattr(hub, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
