"""pytest_ckpts.prefetch: the pool gets only what is missing; warm entries are decided on the calling thread."""

from __future__ import annotations

from pathlib import Path

from pytest_ckpts import load_manifest
from pytest_ckpts.store import Store
from pytest_ckpts.testing import LocalHub
from tests.helpers import SMALL, fetch_quietly, make_manifest


def test_prefetch_pool_gets_only_the_missing(project: Path, hub: LocalHub) -> None:
    """Half the cache warm: the warm half resolves on the calling thread, the rest goes
    to the pool, and every checkpoint is handed out once with its events."""
    from pytest_ckpts.prefetch import Prefetcher
    from pytest_ckpts.store import NullObserver

    manifest = load_manifest(make_manifest(project, hub, SMALL, pinned=True))
    names = list(SMALL)
    fetch_quietly(project, *names[:6])

    class Seen(NullObserver):
        def __init__(self) -> None:
            self.resolved: list[tuple[str, str]] = []

        def on_resolve(self, spec: object, checkpoint: object) -> None:
            self.resolved.append((checkpoint.name, checkpoint.source))  # type: ignore[attr-defined]

    seen = Seen()
    store = Store(manifest, observer=seen)
    prefetcher = Prefetcher(store, [manifest.get(n) for n in names], workers=2)
    try:
        assert [s.name for s in prefetcher.pending] == names[6:]
        assert seen.resolved == []  # nothing reported before a test asks
        for name in names:
            assert prefetcher.result(name, store).path.is_file()
    finally:
        prefetcher.close(seen)
    assert seen.resolved == [(n, "cached") for n in names[:6]] + [
        (n, "downloaded") for n in names[6:]
    ]
