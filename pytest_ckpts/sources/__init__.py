"""Sources of checkpoint bytes besides the hub: mirrors (docs/mirrors.md "What happens on a fetch").

A mirror is an untrusted source: any folder, HTTP(S) server or object store may serve a
file, because the manifest's sha256 decides. ``template`` parses and fills in mirror URL
templates (and redacts them), ``backends`` reads and writes each kind of mirror,
``fetch`` streams a file from the first mirror with the right bytes, ``push`` fills a
mirror from the cache and checks it (``pytest-ckpts mirror push|verify``).

The store tries, in order: the verified cache, the mirrors, the hub.
"""

from __future__ import annotations

from typing import Any

from .template import DEFAULT_LAYOUT, PLACEHOLDERS, Mirror, parse_mirror, redact_url

__all__ = [
    "DEFAULT_LAYOUT",
    "PLACEHOLDERS",
    "Fetched",
    "Mirror",
    "MirrorSet",
    "parse_mirror",
    "redact_url",
]


def __getattr__(name: str) -> Any:
    # the fetch engine (and its imports) loads only when a mirror is used
    if name in ("Fetched", "MirrorSet"):
        from . import fetch

        return getattr(fetch, name)
    raise AttributeError(name)
