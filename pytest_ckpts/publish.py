"""``pytest-ckpts lock`` and ``pytest-ckpts upload``: write hashes back into the manifest.

Both edit only the values they change (``yamledit``), so a reviewer sees a one-line
diff per checkpoint and the user's comments, order and quoting survive. The manifest
is edited under a lock (concurrent ``lock`` runs on different entries all land), re-read
inside it, written atomically with its file mode kept, and through a symlink to its
target (the link stays a link).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TextIO

from ._text import plural
from .errors import CheckpointDownloadError, UsageFailure
from .hub_client import HubClient, create_commit
from .integrity import atomic_write_bytes, atomic_write_stream, calculate_sha256
from .manifest import CheckpointSpec, Manifest
from .settings import ENV
from .store import Store

if TYPE_CHECKING:
    from .tensor_index import IndexBuild

__all__ = ["lock", "lock_tensors", "upload"]


def _local_file(source_dir: Path, spec: CheckpointSpec) -> Path:
    """``--from DIR``: the local copy of ``spec`` at ``DIR/<hf_path>``, or a usage error."""
    local = source_dir / spec.hf_path
    if not local.is_file():
        raise UsageFailure(
            f"pytest-ckpts: {local} not found for checkpoint '{spec.name}' "
            f"(--from {source_dir} must mirror hf_path)"
        )
    return local


def _apply_edits(
    manifest: Manifest, edits: dict[str, dict[str, str]], store: Store, out: TextIO
) -> int:
    """Write ``edits`` into the manifest in place, under a lock, and say what changed."""
    from filelock import FileLock

    from .yamledit import set_entry_values

    if edits:
        target = manifest.path.resolve()  # a symlinked manifest: edit what it points at
        key = hashlib.sha256(str(target).encode()).hexdigest()[:24]
        lock_path = store.layout.root / ".ckpts" / "locks" / f"manifest-{key}.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(lock_path), timeout=60):
            text = target.read_bytes().decode("utf-8")  # re-read: another lock may have run
            try:
                new = set_entry_values(text, edits)
            except ValueError as exc:
                raise UsageFailure(f"pytest-ckpts: cannot edit {manifest.path}: {exc}") from None
            mode = os.stat(target).st_mode & 0o7777
            atomic_write_bytes(target, new.encode("utf-8"), mode=mode)
    for name, values in edits.items():
        for key_name, value in values.items():
            out.write(f"set {name}.{key_name} = {value}\n")
    out.write(f"locked {plural(len(edits), 'entry', 'entries')} in {manifest.path}\n")
    return 0


def _needs(spec: CheckpointSpec, *, pin: bool, update: bool) -> list[str]:
    keys = []
    if spec.sha256 is None or update:
        keys.append("sha256")
    if pin and not spec.pinned:
        keys.append("revision")
    return keys


def lock(
    manifest: Manifest,
    *,
    names: Sequence[str],
    pin: bool,
    check: bool,
    source_dir: Path | None,
    store: Store,
    out: TextIO,
    update: bool = False,
    as_json: bool = False,
) -> int:
    """Fill in missing sha256 (``update``: replace the named ones; ``pin``: pin commits).

    Returns 1 when ``check`` finds something to do, or when a pinned commit is gone.
    ``as_json``: ``check`` prints ``{"checkpoints": [...]}`` (see :func:`_check_states`).
    """
    specs = manifest.select(names)
    todo = [s for s in specs if _needs(s, pin=pin, update=update)]
    if check:
        stale = _stale_indexes(manifest, specs)
        if as_json:
            json.dump(
                {"checkpoints": _check_states(specs, stale, pin=pin, update=update)}, out, indent=2
            )
            out.write("\n")
            return 1 if todo or stale else 0
        for spec in todo:
            out.write(f"would set {spec.name}: {', '.join(_needs(spec, pin=pin, update=update))}\n")
        for spec, reason in stale.items():
            out.write(f"would set {spec.name}: tensor_index ({reason})\n")
        n = len(set(todo) | set(stale))
        out.write(
            "manifest is locked\n"
            if not n
            else f"{plural(n, 'entry', 'entries')} {'needs' if n == 1 else 'need'} "
            "`pytest-ckpts lock`\n"
        )
        return 1 if todo or stale else 0
    if pin:
        gone = _missing_commits(store, [s for s in specs if s.pinned])
        if gone:
            for line in gone:
                out.write(line + "\n")
            return 1
    edits: dict[str, dict[str, str]] = {}
    for spec in todo:
        keys = _needs(spec, pin=pin, update=update)
        values: dict[str, str] = {}
        if source_dir is not None and "revision" not in keys:
            local = _local_file(source_dir, spec)
            sha = calculate_sha256(local)
        else:
            unverified = dataclasses.replace(spec, sha256=None)  # --update: take the hub's bytes
            ckpt = store.resolve(unverified, force_download=update)
            sha = ckpt.sha256
            if "revision" in keys:
                values["revision"] = ckpt.revision
        if "sha256" in keys and sha != spec.sha256:
            values["sha256"] = sha
        if values:
            edits[spec.name] = values
    return _apply_edits(manifest, edits, store, out)


def _check_states(
    specs: list[CheckpointSpec],
    stale: dict[CheckpointSpec, str],
    *,
    pin: bool,
    update: bool,
) -> list[dict[str, Any]]:
    """One entry of ``lock --check --json`` per checkpoint: what lock would set, and why
    for a tensor index (the shape of ``list --json``: name, sha256, revision first)."""
    states = []
    for spec in specs:
        needs = _needs(spec, pin=pin, update=update)
        if spec in stale:
            needs.append("tensor_index")
        states.append(
            {
                "name": spec.name,
                "sha256": spec.sha256,
                "revision": spec.revision,
                "locked": not needs,
                "needs": needs,
                "reason": stale.get(spec),
            }
        )
    return states


def _stale_indexes(manifest: Manifest, specs: list[CheckpointSpec]) -> dict[CheckpointSpec, str]:
    """Entries whose tensor index is missing, edited or made from another file, with why
    (no network)."""
    from .errors import TensorIndexError
    from .tensor_index import load_index

    stale = {}
    for spec in specs:
        if spec.tensor_index is not None:
            try:
                load_index(manifest, spec)
            except TensorIndexError as exc:
                stale[spec] = exc.summary
    return stale


def lock_tensors(
    manifest: Manifest,
    *,
    names: Sequence[str],
    source_dir: Path | None,
    store: Store,
    out: TextIO,
) -> int:
    """Write ``checkpoints/tensors/<name>.json`` and record its sha256 as ``tensor_index``.

    The whole file is read once (``--from DIR``, the cache or the hub) and verified
    against the entry's sha256 (filled in when missing) before anything is indexed.
    """
    from .errors import ChecksumMismatchError, TensorIndexError
    from .tensor_index import build, index_path

    edits: dict[str, dict[str, str]] = {}
    for spec in manifest.select(names):
        if source_dir is not None:
            local = _local_file(source_dir, spec)
            sha = calculate_sha256(local)
            if spec.sha256 is not None and sha != spec.sha256:
                raise ChecksumMismatchError(
                    f"pytest-ckpts: Checksum mismatch for {local} (checkpoint '{spec.name}'): "
                    f"sha256 {sha}, the manifest records {spec.sha256}; nothing was indexed",
                    name=spec.name,
                    path=local,
                    expected=spec.sha256,
                    actual=sha,
                )
        else:
            ckpt = store.resolve(spec)
            local, sha = ckpt.path, ckpt.sha256
        try:
            built = build(local, sha)  # checked as safetensors checks it, before any write
        except TensorIndexError as exc:
            raise UsageFailure(
                f"pytest-ckpts: cannot index checkpoint '{spec.name}': {exc} "
                "(partial reads need a .safetensors file that safetensors itself accepts)"
            ) from None
        target = index_path(manifest, spec.name)
        values = {"tensor_index": _write_index(target, built)}
        out.write(f"indexed {spec.name}: {plural(built.count, 'tensor')} -> {target}\n")
        if spec.sha256 is None:
            values["sha256"] = sha
        changed = {k: v for k, v in values.items() if getattr(spec, k) != v}
        if changed:
            edits[spec.name] = changed
    return _apply_edits(manifest, edits, store, out)


def _write_index(target: Path, built: IndexBuild) -> str:
    """Stream the index to ``target`` atomically; its sha256, hashed on the way (an
    index is never whole in memory)."""
    digest = hashlib.sha256()

    def write(f: BinaryIO) -> None:
        def feed(chunk: bytes) -> None:
            digest.update(chunk)
            f.write(chunk)

        built.write(feed)

    atomic_write_stream(target, write)
    return digest.hexdigest()


def _missing_commits(store: Store, specs: list[CheckpointSpec]) -> list[str]:
    """Pinned commits the hub no longer has (``lock --pin`` must not call them locked)."""
    lines = []
    for spec in specs:
        try:
            store.hub.probe(spec)
        except CheckpointDownloadError as exc:
            if exc.status == 404:
                lines.append(
                    f"MISSING     {spec.name}: commit {spec.revision} is not on the hub "
                    f"({exc.cause or exc.summary}); set "
                    "revision to a branch and run `pytest-ckpts lock --pin` again"
                )
            else:
                raise
    return lines


def upload(
    manifest: Manifest,
    *,
    names: Sequence[str],
    source_dir: Path,
    pin: bool,
    message: str | None,
    store: Store,
    out: TextIO,
) -> int:
    """Push ``source_dir/<hf_path>`` files to the hub in one commit per repo, then lock."""
    specs = manifest.select(names)
    client = store.hub
    if not client.has_token():
        raise UsageFailure(
            "pytest-ckpts: uploading needs a Hugging Face token with write access: "
            "set HF_TOKEN or run `hf auth login` (for an endpoint named only in the "
            f"manifest, also set {ENV['trust_manifest_endpoint']}=1)."
        )
    missing = [str(source_dir / s.hf_path) for s in specs if not (source_dir / s.hf_path).is_file()]
    if missing:
        raise UsageFailure(
            "pytest-ckpts: local files not found (--from DIR must mirror hf_path): "
            + ", ".join(missing)
        )
    _check_reachable(store, specs)
    edits = _upload_groups(client, specs, source_dir, pin, message, out)
    return _apply_edits(manifest, edits, store, out)


def _check_reachable(store: Store, specs: list[CheckpointSpec]) -> None:
    """One bounded probe per repo first: the upload client's own retries take ~25 s
    and print a line per attempt before it gives up on a hub that is down."""
    seen: set[tuple[str, str]] = set()
    for spec in specs:
        if (spec.repo_type, spec.repo) in seen:
            continue
        seen.add((spec.repo_type, spec.repo))
        try:
            store.hub.probe(spec)
        except CheckpointDownloadError as exc:
            if exc.unreachable:  # a missing branch or commit is fine: uploads make it
                cause = exc.cause or exc.summary
                raise UsageFailure(
                    f"pytest-ckpts: cannot upload: {cause}. Nothing in the manifest was "
                    "changed; re-run when the hub is reachable."
                ) from None


def _upload_groups(
    client: HubClient,
    specs: list[CheckpointSpec],
    source_dir: Path,
    pin: bool,
    message: str | None,
    out: TextIO,
) -> dict[str, dict[str, str]]:
    """One commit per (repo, type, branch); returns the manifest edits to make."""
    groups: dict[tuple[str, str, str], list[CheckpointSpec]] = {}
    for spec in specs:
        branch = "main" if spec.pinned else spec.revision
        groups.setdefault((spec.repo, spec.repo_type, branch), []).append(spec)
    edits: dict[str, dict[str, str]] = {}
    for (repo, repo_type, branch), group in groups.items():
        files = {s.hf_path: source_dir / s.hf_path for s in group}
        commit = create_commit(
            client,
            repo=repo,
            repo_type=repo_type,
            branch=branch,
            files=files,
            message=message or f"Upload {', '.join(s.name for s in group)}",
        )
        for s in group:
            values = {"sha256": calculate_sha256(source_dir / s.hf_path)}
            if commit and (pin or s.pinned):
                values["revision"] = commit
            out.write(f"uploaded {s.name} -> {repo}/{s.hf_path} @ {commit[:12] or branch}\n")
            changed = {k: v for k, v in values.items() if getattr(s, k) != v}
            if changed:
                edits[s.name] = changed
    return edits
