"""Test doubles and helpers for suites that use pytest-ckpts.

``LocalHub`` is a Hugging Face Hub stand-in the real ``huggingface_hub`` client
downloads from and uploads to, on 127.0.0.1, with counters and fault injection.
"""

from __future__ import annotations

from .hub import FaultInjector, HubStats, LocalHub, RequestRecord

__all__ = ["FaultInjector", "HubStats", "LocalHub", "RequestRecord"]
