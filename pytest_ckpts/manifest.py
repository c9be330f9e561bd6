"""Parse and validate ``checkpoints/checkpoints.yaml`` into frozen dataclasses.

The format is seed 004's, verbatim, plus a few optional keys. Validation is strict
and happens once, up front: a typo in a key or a sha256 that YAML read as a number
should stop the run at start-up with the file, the entry and the key named, not
surface as a confusing download failure twenty minutes into CI.

This module knows nothing of pytest or the network.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from .errors import ManifestError
from .integrity import SHA256_RE

if TYPE_CHECKING:
    import yaml

__all__ = [
    "DEFAULT_MANIFEST",
    "ENV_MANIFEST",
    "PLACEHOLDER",
    "CheckpointSpec",
    "Manifest",
    "env_value",
    "find_manifest",
    "is_pinned",
    "load_manifest",
    "project_root_for",
]

#: Where the manifest lives relative to the project root.
DEFAULT_MANIFEST = Path("checkpoints") / "checkpoints.yaml"
ENV_MANIFEST = "PYTEST_CKPTS_MANIFEST"
#: seed 004's "not computed yet" marker for sha256.
PLACEHOLDER = "<to_be_calculated>"

_TOP_KEYS = ("checkpoints", "config")
_ENTRY_KEYS = (
    "filename",
    "hf_path",
    "sha256",
    "description",
    "repo",
    "revision",
    "repo_type",
    "size",
    "tensor_index",
)
_CONFIG_KEYS = ("hf_repo", "cache_dir", "revision", "endpoint", "repo_type")
_REPO_TYPES = ("model", "dataset")
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9][A-Za-z0-9_.\-]*)?$")


def env_value(name: str) -> str | None:
    """Return the environment variable, treating the empty string as unset (SPEC §2)."""
    value = os.environ.get(name)
    return value if value else None


def is_pinned(revision: str) -> bool:
    """A 40-hex revision is an immutable commit: a cached file never needs the hub."""
    return bool(_COMMIT_RE.match(revision))


@dataclass(frozen=True)
class CheckpointSpec:
    """One validated manifest entry, with config defaults already applied."""

    name: str
    filename: str
    hf_path: str
    sha256: str | None  # None: unverified (placeholder or missing)
    description: str
    repo: str
    revision: str
    repo_type: str
    size: int | None
    line: int | None = field(default=None, compare=False)
    #: sha256 of ``checkpoints/tensors/<name>.json`` (``pytest-ckpts lock --tensors``)
    tensor_index: str | None = None

    @property
    def pinned(self) -> bool:
        return is_pinned(self.revision)


@dataclass(frozen=True)
class Manifest:
    """The whole validated manifest."""

    path: Path
    root: Path
    entries: Mapping[str, CheckpointSpec]
    cache_dir: Path
    hf_repo: str | None = None
    revision: str = "main"
    repo_type: str = "model"
    endpoint: str | None = None

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, name: str) -> CheckpointSpec:
        """Return the entry or raise ``KeyError`` with did-you-mean suggestions."""
        try:
            return self.entries[name]
        except KeyError:
            raise KeyError(self.unknown_name_message(name)) from None

    def unknown_name_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, list(self.entries), n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(repr(c) for c in close)}?" if close else ""
        known = ", ".join(sorted(self.entries)) or "(none)"
        return f"Checkpoint '{name}' not found in config {self.path}.{hint} Known checkpoints: {known}."

    @property
    def unverified(self) -> list[str]:
        return [n for n, e in self.entries.items() if e.sha256 is None]


def project_root_for(manifest_path: Path) -> Path:
    """The directory holding the manifest's ``checkpoints/`` folder (else its own dir)."""
    parent = manifest_path.parent
    return parent.parent if parent.name == "checkpoints" else parent


def find_manifest(start: Path | None = None) -> Path | None:
    """Outside pytest: ``PYTEST_CKPTS_MANIFEST``, else walk up as git finds ``.git``."""
    env = env_value(ENV_MANIFEST)
    if env is not None:
        return Path(env).expanduser().absolute()
    here = (start or Path.cwd()).absolute()
    for directory in (here, *here.parents):
        candidate = directory / DEFAULT_MANIFEST
        if candidate.is_file():
            return candidate
    return None


def load_manifest(path: str | os.PathLike[str] | None = None) -> Manifest:
    """Load and validate a manifest.

    With no ``path``, find it as the CLI does (``PYTEST_CKPTS_MANIFEST``, else walk up
    from the current directory). Raises ``ManifestError`` naming file, entry and key.
    """
    if path is None:
        found = find_manifest()
        if found is None:
            raise ManifestError(
                f"no manifest found: looked for {DEFAULT_MANIFEST} in {Path.cwd()} and its "
                f"parents. Create one, or set {ENV_MANIFEST}=/path/to/checkpoints.yaml."
            )
        path = found
    manifest_path = Path(path).expanduser().absolute()
    try:
        text = manifest_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(
            "file not found. Create it, or point --ckpts-manifest / "
            f"{ENV_MANIFEST} / ini ckpts_manifest at the right file.",
            path=manifest_path,
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot read file: {exc}", path=manifest_path) from None
    return parse_manifest(text, manifest_path)


# --------------------------------------------------------------------------- parsing


class _Ctx:
    """Carries the file path and node positions so every error can say where."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def error(
        self,
        message: str,
        *,
        entry: str | None = None,
        key: str | None = None,
        node: yaml.Node | None = None,
    ) -> ManifestError:
        line = node.start_mark.line + 1 if node is not None else None
        return ManifestError(message, path=self.path, entry=entry, key=key, line=line)


def _mapping_items(
    ctx: _Ctx, node: yaml.Node, *, what: str, entry: str | None = None, key: str | None = None
) -> list[tuple[str, yaml.Node, yaml.Node]]:
    import yaml

    if not isinstance(node, yaml.MappingNode):
        raise ctx.error(
            f"{what} must be a mapping (key: value lines)", entry=entry, key=key, node=node
        )
    items: list[tuple[str, yaml.Node, yaml.Node]] = []
    seen: dict[str, int] = {}
    for knode, vnode in node.value:
        if not isinstance(knode, yaml.ScalarNode):
            raise ctx.error(f"{what} has a non-scalar key", entry=entry, node=knode)
        k = str(knode.value)
        if k in seen:
            raise ctx.error(
                f"'{k}' is defined twice in {what} (first at line {seen[k]}); "
                "YAML would silently keep only the last one. Rename or remove one.",
                entry=entry if entry is not None else (k if what == "'checkpoints'" else None),
                key=None if what == "'checkpoints'" else k,
                node=knode,
            )
        seen[k] = knode.start_mark.line + 1
        items.append((k, knode, vnode))
    return items


def _check_keys(
    ctx: _Ctx,
    items: list[tuple[str, yaml.Node, yaml.Node]],
    allowed: tuple[str, ...],
    *,
    where: str,
    entry: str | None = None,
) -> None:
    for k, knode, _ in items:
        if k not in allowed:
            close = difflib.get_close_matches(k, allowed, n=1, cutoff=0.6)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ctx.error(
                f"unknown key in {where}.{hint} Allowed keys: {', '.join(allowed)}.",
                entry=entry,
                key=k,
                node=knode,
            )


def _value(node: yaml.Node) -> Any:
    """Construct the Python value of a node the way ``yaml.safe_load`` would."""
    import yaml

    return yaml.SafeLoader("").construct_object(node, deep=True)


def _str_value(
    ctx: _Ctx, node: yaml.Node, *, entry: str | None, key: str, allow_empty: bool = False
) -> str:
    value = _value(node)
    if not isinstance(value, str):
        kind = "empty" if value is None else type(value).__name__
        raise ctx.error(
            f'must be a string, got {kind} ({value!r}). Quote the value: {key}: "..."',
            entry=entry,
            key=key,
            node=node,
        )
    if not allow_empty and not value.strip():
        raise ctx.error("must not be empty", entry=entry, key=key, node=node)
    return value


def _check_revision(ctx: _Ctx, node: yaml.Node, *, entry: str | None) -> str:
    value = _value(node)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raise ctx.error(
            f"revision must be a string (a branch, tag or 40-hex commit); YAML read {value!r} "
            'as a number. Quote it: revision: "..."',
            entry=entry,
            key="revision",
            node=node,
        )
    return _str_value(ctx, node, entry=entry, key="revision")


def _check_repo(ctx: _Ctx, node: yaml.Node, *, entry: str | None, key: str) -> str:
    value = _str_value(ctx, node, entry=entry, key=key).strip()
    if not _REPO_RE.match(value):
        raise ctx.error(
            f"'{value}' is not a Hugging Face repo id; expected 'org/name'",
            entry=entry,
            key=key,
            node=node,
        )
    return value


def _check_repo_type(ctx: _Ctx, node: yaml.Node, *, entry: str | None) -> str:
    value = _str_value(ctx, node, entry=entry, key="repo_type")
    if value not in _REPO_TYPES:
        raise ctx.error(
            f"'{value}' is not a supported repo_type; use one of: {', '.join(_REPO_TYPES)}",
            entry=entry,
            key="repo_type",
            node=node,
        )
    return value


def _check_sha256(ctx: _Ctx, node: yaml.Node, *, entry: str) -> str | None:
    value = _value(node)
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raise ctx.error(
            "YAML read this sha256 as a number, which loses digits. Quote it: "
            'sha256: "<64 hex digits>"',
            entry=entry,
            key="sha256",
            node=node,
        )
    if not isinstance(value, str):
        raise ctx.error(
            f"must be 64 hex digits or {PLACEHOLDER}, got {type(value).__name__}",
            entry=entry,
            key="sha256",
            node=node,
        )
    text = value.strip()
    if text == PLACEHOLDER or text == "":
        return None
    lowered = text.lower()
    if lowered.startswith("sha256:"):
        lowered = lowered[len("sha256:") :]
    if not SHA256_RE.match(lowered):
        raise ctx.error(
            f"'{text}' is not a sha256 (64 hex digits). Use `sha256sum FILE` or "
            f"`pytest-ckpts lock` to fill it in, or write {PLACEHOLDER} for now.",
            entry=entry,
            key="sha256",
            node=node,
        )
    return lowered


def _check_tensor_index(ctx: _Ctx, node: yaml.Node, *, entry: str) -> str:
    value = _value(node)
    text = value.strip().lower() if isinstance(value, str) else ""
    if not SHA256_RE.match(text):
        raise ctx.error(
            f"{value!r} is not the sha256 of a tensor index (64 hex digits); it is written "
            f"by `pytest-ckpts lock --tensors {entry}`, run that instead of editing it",
            entry=entry,
            key="tensor_index",
            node=node,
        )
    return text


def _check_hf_path(ctx: _Ctx, node: yaml.Node, *, entry: str) -> str:
    value = _str_value(ctx, node, entry=entry, key="hf_path").strip()
    if "\\" in value:
        raise ctx.error(
            "use '/' as separator in hf_path (it is a path inside the hub repo)",
            entry=entry,
            key="hf_path",
            node=node,
        )
    pure = PurePosixPath(value)
    if pure.is_absolute() or value.startswith("/"):
        raise ctx.error(
            "hf_path must be relative to the repo root (no leading '/')",
            entry=entry,
            key="hf_path",
            node=node,
        )
    if any(part in ("..", ".") for part in value.split("/")) or "//" in value:
        raise ctx.error(
            "hf_path must not contain '.', '..' or empty components",
            entry=entry,
            key="hf_path",
            node=node,
        )
    return value


def _check_filename(ctx: _Ctx, node: yaml.Node, *, entry: str) -> str:
    value = _str_value(ctx, node, entry=entry, key="filename").strip()
    if "/" in value or "\\" in value or value in (".", ".."):
        raise ctx.error(
            "filename is a plain local file name (no directories)",
            entry=entry,
            key="filename",
            node=node,
        )
    return value


def _check_size(ctx: _Ctx, node: yaml.Node, *, entry: str) -> int:
    value = _value(node)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ctx.error(
            f"size must be a non-negative integer number of bytes, got {value!r}",
            entry=entry,
            key="size",
            node=node,
        )
    return value


def _check_endpoint(ctx: _Ctx, node: yaml.Node) -> str:
    value = _str_value(ctx, node, entry=None, key="endpoint").strip().rstrip("/")
    if not value.startswith(("http://", "https://")):
        raise ctx.error(f"'{value}' is not an http(s) URL", entry=None, key="endpoint", node=node)
    return value


def parse_manifest(text: str, path: Path) -> Manifest:
    """Validate manifest ``text`` read from ``path``."""
    import yaml

    ctx = _Ctx(path)
    try:
        root_node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise ManifestError(
            f"YAML syntax error: {problem}. Fix the YAML (check indentation and quoting).",
            path=path,
            line=line,
        ) from None
    if root_node is None:
        raise ctx.error("file is empty; it needs a top-level 'checkpoints:' mapping")
    top = _mapping_items(ctx, root_node, what="the top level")
    _check_keys(ctx, top, _TOP_KEYS, where="the top level")
    top_map = {k: (kn, vn) for k, kn, vn in top}

    config: dict[str, Any] = {}
    if "config" in top_map:
        cnode = top_map["config"][1]
        citems = [] if _value(cnode) is None else _mapping_items(ctx, cnode, what="'config'")
        _check_keys(ctx, citems, _CONFIG_KEYS, where="'config'")
        for k, _kn, vn in citems:
            if k == "hf_repo":
                config[k] = _check_repo(ctx, vn, entry=None, key="hf_repo")
            elif k == "revision":
                config[k] = _check_revision(ctx, vn, entry=None)
            elif k == "repo_type":
                config[k] = _check_repo_type(ctx, vn, entry=None)
            elif k == "endpoint":
                config[k] = _check_endpoint(ctx, vn)
            elif k == "cache_dir":
                config[k] = _str_value(ctx, vn, entry=None, key="cache_dir")

    if "checkpoints" not in top_map:
        raise ctx.error(
            "missing the top-level 'checkpoints:' mapping (name -> hf_path, sha256, ...)",
            key="checkpoints",
        )
    cknode = top_map["checkpoints"][1]
    if _value(cknode) is None:
        ck_items: list[tuple[str, yaml.Node, yaml.Node]] = []
    else:
        ck_items = _mapping_items(ctx, cknode, what="'checkpoints'", key="checkpoints")

    root = project_root_for(path)
    default_revision = config.get("revision", "main")
    default_type = config.get("repo_type", "model")
    hf_repo = config.get("hf_repo")
    entries: dict[str, CheckpointSpec] = {}
    local_names: dict[tuple[str, str], str] = {}
    for name, knode, enode in ck_items:
        if not _NAME_RE.match(name):
            raise ctx.error(
                "checkpoint names may use letters, digits, '_', '-' and '.'",
                entry=name,
                node=knode,
            )
        items = _mapping_items(ctx, enode, what=f"checkpoint '{name}'", entry=name)
        _check_keys(ctx, items, _ENTRY_KEYS, where=f"checkpoint '{name}'", entry=name)
        e = {k: vn for k, _kn, vn in items}
        if "hf_path" not in e:
            raise ctx.error(
                "missing required key: the file's path inside the hub repo, e.g. "
                "hf_path: mp_20/vae/model.ckpt",
                entry=name,
                key="hf_path",
                node=knode,
            )
        hf_path = _check_hf_path(ctx, e["hf_path"], entry=name)
        repo = _check_repo(ctx, e["repo"], entry=name, key="repo") if "repo" in e else hf_repo
        if repo is None:
            raise ctx.error(
                "no repo: set config.hf_repo (shared by all entries) or 'repo' on this entry",
                entry=name,
                key="repo",
                node=knode,
            )
        spec = CheckpointSpec(
            name=name,
            filename=(
                _check_filename(ctx, e["filename"], entry=name)
                if "filename" in e
                else PurePosixPath(hf_path).name
            ),
            hf_path=hf_path,
            sha256=_check_sha256(ctx, e["sha256"], entry=name) if "sha256" in e else None,
            description=(
                _str_value(ctx, e["description"], entry=name, key="description", allow_empty=True)
                if "description" in e and _value(e["description"]) is not None
                else ""
            ),
            repo=repo,
            revision=_check_revision(ctx, e["revision"], entry=name)
            if "revision" in e
            else default_revision,
            repo_type=_check_repo_type(ctx, e["repo_type"], entry=name)
            if "repo_type" in e
            else default_type,
            size=_check_size(ctx, e["size"], entry=name) if "size" in e else None,
            line=knode.start_mark.line + 1,
            tensor_index=_check_tensor_index(ctx, e["tensor_index"], entry=name)
            if "tensor_index" in e
            else None,
        )
        clash_key = (spec.repo, spec.filename)
        other = local_names.get(clash_key)
        if other is not None and entries[other].hf_path != spec.hf_path:
            raise ctx.error(
                f"local file name '{spec.filename}' is also used by entry '{other}' for a "
                "different hf_path in the same repo; give one of them another filename",
                entry=name,
                key="filename",
                node=e.get("filename", knode),
            )
        local_names[clash_key] = name
        entries[name] = spec

    cache_setting = config.get("cache_dir", "./checkpoints")
    cache_dir = Path(os.path.expanduser(cache_setting))
    if not cache_dir.is_absolute():
        cache_dir = root / cache_dir
    return Manifest(
        path=path,
        root=root,
        entries=entries,
        cache_dir=Path(os.path.normpath(cache_dir)),
        hf_repo=hf_repo,
        revision=default_revision,
        repo_type=default_type,
        endpoint=config.get("endpoint"),
    )
