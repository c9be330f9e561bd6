"""The store's mirror step: verified cache → **mirrors** → hub (docs/mirrors.md "What happens on a fetch").

Kept beside the store rather than in it: :class:`MirrorSupport` gives ``Store`` its
``mirrors`` setting (keyword-only fields) and the ``mirror_set`` it builds on first use;
:func:`from_mirrors` runs, with the entry's lock held, just before the hub download;
:func:`unresolved` serves a branch whose commit the hub cannot tell.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from ..checkpoint import Checkpoint
from ..errors import CacheError, CheckpointDownloadError
from ..manifest import CheckpointSpec, is_pinned

if TYPE_CHECKING:
    from ..store import Store
    from .fetch import MirrorSet

__all__ = ["MirrorSupport", "from_mirrors", "may_mirror", "unresolved"]

logger = logging.getLogger("pytest_ckpts")


@dataclass
class MirrorSupport:
    """Base of ``Store``: mirror URL templates tried before the hub (keyword-only)."""

    mirrors: tuple[str, ...] = field(default=(), kw_only=True)
    _mirror_set: Any = field(default=None, repr=False, kw_only=True)

    @property
    def mirror_set(self) -> MirrorSet | None:
        """The run's mirrors (built on first use), None when there are none or offline."""
        store = cast("Store", self)
        if not self.mirrors or store.offline:
            return None
        if self._mirror_set is None:
            from ..retry import RunState
            from .fetch import MirrorSet

            self._mirror_set = MirrorSet.parse(
                self.mirrors,
                source="the settings",
                budget=store.hub.budget,
                run_state=store.run_state or RunState(),
                connect_timeout=store.hub.probe_timeout,
                read_timeout=store.hub.read_timeout,
            )
        mirrors: MirrorSet = self._mirror_set
        return mirrors


def may_mirror(store: Store, spec: CheckpointSpec) -> bool:
    """A mirror may serve ``spec`` (so a pinned entry needs no hub probe up front)."""
    return bool(store.mirrors) and spec.sha256 is not None and not store.offline


def from_mirrors(
    store: Store, spec: CheckpointSpec, commit: str | None, reuse: bool = True
) -> Checkpoint | None:
    """The file of ``spec`` from the first mirror with the right bytes, else None.

    Called with the entry's lock held, just before the hub download. The file lands in
    huggingface_hub's layout like a download: the blob (named by its sha256, hashed as
    it streamed) and the snapshot link of ``commit``, stamped. A blob already in the
    cache under that name is linked without a transfer (unless ``reuse`` is False:
    ``force_download``). A branch the hub could not resolve (``commit`` None) is kept
    under a stand-in commit, the first 40 hex of its sha256, which its ref points at,
    so the next run finds it (``stale``) without the hub; once the hub answers, the real
    commit's link reuses the blob. When the mirrors cannot serve a pinned entry, one
    short hub probe decides "is the hub there" for the run (the hub's step starts).
    """
    found = _place(store, spec, commit, reuse) if may_mirror(store, spec) else None
    if found is None and commit is not None and is_pinned(spec.revision):
        store.hub.probe(spec)
    return found


def _place(
    store: Store, spec: CheckpointSpec, commit: str | None, reuse: bool
) -> Checkpoint | None:
    from .._transfer import link_snapshot, make_dir
    from ..cache import contained

    mirrors = store.mirror_set
    assert mirrors is not None
    assert spec.sha256 is not None
    blob = contained(store.layout.blobs(spec), spec.sha256, what="blob name")
    have = store._trusted(spec, blob) if reuse and blob.exists() else None
    fetched = None
    if have is None:
        make_dir(blob.parent, spec)
        # its own temp name: the hub's partial file of this blob is continued by Range
        fetched = mirrors.fetch(spec, store.layout.incomplete_path(spec, f"mirror-{os.getpid()}"))
        if fetched is None:
            return None
        os.replace(fetched.path, blob)
    commit = commit or spec.sha256[:40]
    link = store.snapshot_path(spec, commit)
    link_snapshot(link, blob, spec)
    store.layout.write_ref(spec, commit)
    if fetched is None:
        assert have is not None
        return store._done(spec, link, commit, have, "cached")
    store.observer.on_download(spec, link, fetched.nbytes, fetched.seconds)
    logger.info(
        "pytest-ckpts: '%s' from mirror %s (%d bytes in %.2fs)",
        spec.name,
        fetched.mirror.label,
        fetched.nbytes,
        fetched.seconds,
    )
    _ok, _actual, stamp = store._hash_and_stamp(spec, link, fetched.sha256)
    return store._done(spec, link, commit, stamp, "downloaded", fetched.mirror.label)


def unresolved(store: Store, spec: CheckpointSpec, exc: CheckpointDownloadError) -> Checkpoint | None:  # fmt: skip
    """A branch whose commit the hub cannot tell (it is down): the mirrors' copy, under
    the entry's lock; None when there is none (the hub's error stands)."""
    if not exc.hub_down or is_pinned(spec.revision) or not may_mirror(store, spec):
        return None
    from filelock import FileLock, Timeout

    try:
        lock_path = store.layout.lock_path(spec)
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(lock_path), timeout=store.lock_timeout):
            return _place(store, spec, None, True)
    except CacheError:
        raise
    except (OSError, Timeout):
        return None
