"""A stand-in Hugging Face Hub on 127.0.0.1 that the real ``huggingface_hub`` client talks to.

Why a server and not a mock: the behaviours that break checkpoint suites live in
the client (its cache layout, its HEAD-then-GET protocol, its retries, what it does
with a reset connection), so tests must run the real client over real HTTP. This
server speaks enough of the hub's protocol for downloads (``resolve`` HEAD/GET with
the headers the real hub sends, ``Range``), the repo-info and tree APIs, and uploads
(``preupload``, the LFS batch API, ``commit``), with a request log and fault
injection (``pytest_ckpts.testing.faults``). It answers as a plain-HTTP hub: no Xet
headers, so the client never switches to its Xet transfer path.

Modules: ``content`` (repos, commits, LFS vs regular files), ``server`` (``LocalHub``),
``routes``/``api``/``wire`` (request handling), ``__main__`` (serve directories from
the command line). Stdlib only.
"""

from __future__ import annotations

from ..faults import Fault, FaultPlan, RequestLog, RequestRecord
from .routes import ROUTE_KINDS
from .server import FaultInjector, HubStats, LocalHub

__all__ = [
    "ROUTE_KINDS",
    "Fault",
    "FaultInjector",
    "FaultPlan",
    "HubStats",
    "LocalHub",
    "RequestLog",
    "RequestRecord",
]
