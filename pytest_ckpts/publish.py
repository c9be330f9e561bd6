"""``pytest-ckpts lock`` and ``pytest-ckpts upload``: write hashes back into the manifest.

Both edit only the values they change (``yamledit``), so a reviewer sees a one-line
diff per checkpoint and the user's comments, order and quoting survive.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from .integrity import atomic_write_bytes, calculate_sha256
from .manifest import CheckpointSpec, Manifest
from .store import DEFAULT_ENDPOINT, Store, hf_token, redact, resolve_endpoint

__all__ = ["lock", "upload"]


def _selected(manifest: Manifest, names: Sequence[str]) -> list[CheckpointSpec]:
    from .cli import selected

    return selected(manifest, names)


def _apply_edits(manifest: Manifest, edits: dict[str, dict[str, str]], out: TextIO) -> int:
    """Write ``edits`` into the manifest in place (atomically) and say what changed."""
    from .yamledit import set_entry_values

    if edits:
        text = manifest.path.read_bytes().decode("utf-8")
        atomic_write_bytes(manifest.path, set_entry_values(text, edits).encode("utf-8"))
    for name, values in edits.items():
        for key, value in values.items():
            out.write(f"set {name}.{key} = {value}\n")
    out.write(f"locked {len(edits)} entries in {manifest.path}\n")
    return 0


def lock(
    manifest: Manifest,
    *,
    names: Sequence[str],
    pin: bool,
    check: bool,
    source_dir: Path | None,
    cache_dir: Path,
    out: TextIO,
) -> int:
    """Fill in missing sha256 (and with ``pin`` the resolved commit); 1 if ``check`` fails."""
    from .cli import UsageFailure

    todo = [s for s in _selected(manifest, names) if s.sha256 is None or (pin and not s.pinned)]
    if check:
        for spec in todo:
            missing = [
                k
                for k, need in (
                    ("sha256", spec.sha256 is None),
                    ("revision", pin and not spec.pinned),
                )
                if need
            ]
            out.write(f"would set {spec.name}: {', '.join(missing)}\n")
        out.write(
            "manifest is locked\n"
            if not todo
            else f"{len(todo)} entries need `pytest-ckpts lock`\n"
        )
        return 1 if todo else 0
    store = Store(manifest, cache_dir=cache_dir, progress=True)
    edits: dict[str, dict[str, str]] = {}
    for spec in todo:
        values: dict[str, str] = {}
        if source_dir is not None and not (pin and not spec.pinned):
            local = source_dir / spec.hf_path
            if not local.is_file():
                raise UsageFailure(
                    f"pytest-ckpts: {local} not found for checkpoint '{spec.name}' "
                    f"(--from {source_dir} must mirror hf_path)"
                )
            sha = calculate_sha256(local)
        else:
            ckpt = store.resolve(spec)
            sha = ckpt.sha256
            if pin and not spec.pinned:
                values["revision"] = ckpt.revision
        if spec.sha256 is None:
            values["sha256"] = sha
        if values:
            edits[spec.name] = values
    return _apply_edits(manifest, edits, out)


def upload(
    manifest: Manifest,
    *,
    names: Sequence[str],
    source_dir: Path,
    pin: bool,
    message: str | None,
    out: TextIO,
) -> int:
    """Push ``source_dir/<hf_path>`` files to the hub in one commit per repo, then lock."""
    from .cli import UsageFailure
    from .store import _prepare_hf

    specs = _selected(manifest, names)
    token = hf_token()
    if not token:
        raise UsageFailure(
            "pytest-ckpts: uploading needs a Hugging Face token with write access: "
            "set HF_TOKEN or run `hf auth login`."
        )
    missing = [str(source_dir / s.hf_path) for s in specs if not (source_dir / s.hf_path).is_file()]
    if missing:
        raise UsageFailure(
            "pytest-ckpts: local files not found (--from DIR must mirror hf_path): "
            + ", ".join(missing)
        )
    hf = _prepare_hf()
    endpoint = resolve_endpoint(manifest)
    api = hf.HfApi(endpoint=endpoint, token=token)
    from huggingface_hub import constants

    # huggingface_hub uploads through Xet storage whenever hf_xet is installed; only
    # the public hub is known to run it. Other endpoints (self-hosted mirrors, the
    # local hub stand-in) get the plain LFS protocol.
    saved_xet = constants.HF_HUB_DISABLE_XET
    if endpoint.rstrip("/") != DEFAULT_ENDPOINT:
        constants.HF_HUB_DISABLE_XET = True
    try:
        edits = _upload_groups(api, hf, specs, source_dir, endpoint, token, pin, message, out)
    finally:
        constants.HF_HUB_DISABLE_XET = saved_xet
    return _apply_edits(manifest, edits, out)


def _upload_groups(
    api: Any,
    hf: Any,
    specs: list[CheckpointSpec],
    source_dir: Path,
    endpoint: str,
    token: str,
    pin: bool,
    message: str | None,
    out: TextIO,
) -> dict[str, dict[str, str]]:
    """One commit per (repo, type, branch); returns the manifest edits to make."""
    from huggingface_hub import errors as hf_errors

    from .cli import UsageFailure

    groups: dict[tuple[str, str, str], list[CheckpointSpec]] = {}
    for spec in specs:
        branch = "main" if spec.pinned else spec.revision
        groups.setdefault((spec.repo, spec.repo_type, branch), []).append(spec)
    edits: dict[str, dict[str, str]] = {}
    for (repo, repo_type, branch), group in groups.items():
        ops = [
            hf.CommitOperationAdd(
                path_in_repo=s.hf_path, path_or_fileobj=str(source_dir / s.hf_path)
            )
            for s in group
        ]
        try:
            info: Any = api.create_commit(
                repo_id=repo,
                repo_type=repo_type,
                revision=branch,
                operations=ops,
                commit_message=message or f"Upload {', '.join(s.name for s in group)}",
            )
        except hf_errors.RepositoryNotFoundError as exc:
            raise UsageFailure(
                redact(
                    f"pytest-ckpts: repo '{repo}' ({repo_type}) not found at {endpoint} or the "
                    f"token cannot write to it ({type(exc).__name__}). Create it first "
                    f"(`hf repo create {repo}`) or fix hf_repo in the manifest.",
                    token,
                )
            ) from None
        except hf_errors.HfHubHTTPError as exc:
            raise UsageFailure(
                redact(f"pytest-ckpts: upload to '{repo}' at {endpoint} failed: {exc}", token)
            ) from None
        commit = str(getattr(info, "oid", "") or "")
        for s in group:
            values = {"sha256": calculate_sha256(source_dir / s.hf_path)}
            if commit and (pin or s.pinned):
                values["revision"] = commit
            out.write(f"uploaded {s.name} -> {repo}/{s.hf_path} @ {commit[:12] or branch}\n")
            edits[s.name] = {k: v for k, v in values.items() if getattr(s, k) != v}
    return {k: v for k, v in edits.items() if v}
