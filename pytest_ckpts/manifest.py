"""Parse and validate ``checkpoints/checkpoints.yaml`` into frozen dataclasses.

The format is the one docs/manifest.md "The manifest" shows, plus a few optional keys.
Validation is strict and happens once, up front: a typo in a key or a sha256 that YAML
read as a number should stop the run at start-up with the file, the entry and the key
named, not surface as a confusing download failure twenty minutes into CI.

A pull request can edit the manifest, so nothing in it is trusted: YAML is read within
bounds (``_yaml``), and revisions, repo ids and paths are checked so none of them can
become a path outside the cache. Each process parses a given file once (the plugin,
fixtures and library API share the result).

This module knows nothing of pytest or the network.
"""

from __future__ import annotations

import difflib
import os
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from . import _yaml
from ._manifest_fields import (
    Ctx,
    Pairs,
    check_endpoint,
    check_filename,
    check_hex,
    check_hf_path,
    check_keys,
    check_repo,
    check_repo_type,
    check_revision,
    check_size,
    is_null,
    mapping_items,
    revision_problem,
    str_value,
)
from ._yaml import show
from .errors import CheckpointsError, Fix, ManifestError, ManifestNotFoundError, YamlProblem
from .settings import DEFAULT_MANIFEST, ENV, find_manifest

if TYPE_CHECKING:
    import yaml

__all__ = [
    "DEFAULT_MANIFEST",
    "ENV_MANIFEST",
    "CheckpointSpec",
    "Manifest",
    "find_manifest",
    "is_pinned",
    "load_manifest",
    "project_root_for",
    "revision_problem",
]

#: The variable naming the manifest outside pytest (declared in settings.ENV).
ENV_MANIFEST = ENV["manifest"]

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
_CONFIG_KEYS = ("hf_repo", "cache_dir", "revision", "endpoint", "repo_type", "mirrors")
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


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
    #: sha256 of ``checkpoints/tensors/<name>.json`` (written by ``lock --tensors``).
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
    #: ``config.cache_dir`` made absolute; None: huggingface_hub's own cache (``Cache.locate``)
    cache_dir: Path | None
    hf_repo: str | None = None
    revision: str = "main"
    repo_type: str = "model"
    endpoint: str | None = field(default=None, repr=False)  # may hold userinfo: never shown
    #: ``config.mirrors``: URL templates tried before the hub (docs/mirrors.md "What happens on a fetch")
    mirrors: tuple[str, ...] = ()

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

    def select(self, names: Sequence[str]) -> list[CheckpointSpec]:
        """The entries ``names`` (all of them when empty); ``KeyError`` as :meth:`get`."""
        if not names:
            return list(self.entries.values())
        return [self.get(name) for name in names]

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


def load_manifest(path: str | os.PathLike[str] | None = None) -> Manifest:
    """Load and validate a manifest.

    With no ``path``, find it as the CLI does (the manifest variable of ``settings.ENV``, else walk up
    from the current directory). Raises ``ManifestNotFoundError`` when there is none and
    ``ManifestError`` naming file, line, entry and key when it is malformed.

    The result is shared: a file whose bytes have not changed since this process last
    parsed it is not parsed again, so the plugin, the fixtures and the library API
    pay for one parse per process. ``Manifest`` and its entries are immutable.
    """
    if path is None:
        found = find_manifest()
        if found is None:
            raise ManifestNotFoundError(
                f"looked for {DEFAULT_MANIFEST} in {Path.cwd()} and its parents.",
                fixes=(Fix.say(f"create {DEFAULT_MANIFEST}"), Fix.set("manifest")),
            )
        path = found
    manifest_path = Path(path).expanduser().absolute()
    try:
        with open(manifest_path, "rb") as f:
            data = f.read(_yaml.MAX_BYTES + 1)
    except FileNotFoundError:
        raise ManifestNotFoundError(
            f"{manifest_path}: file not found.",
            path=manifest_path,
            fixes=(Fix.say("create it"), Fix.set("manifest", why="naming the right file")),
        ) from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ManifestError(f"cannot read file: {reason}", path=manifest_path) from None
    # The project root and a "~" in cache_dir depend on the path and the home directory.
    key = (os.fspath(manifest_path), os.path.expanduser("~"))
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
    if hit is not None and hit[0] == data:
        return hit[1]
    try:
        text = _yaml.decode(data)
    except YamlProblem as exc:
        raise ManifestError(exc.message, path=manifest_path, line=exc.line) from None
    manifest = parse_manifest(text, manifest_path)
    with _CACHE_LOCK:
        _CACHE.pop(key, None)
        _CACHE[key] = (data, manifest)
        while len(_CACHE) > _CACHE_SIZE:
            del _CACHE[next(iter(_CACHE))]
    return manifest


# Parsed manifests by (path, home): the file's bytes and the result. A handful of
# entries: a process reads one manifest, tests and tools a few.
_CACHE: dict[tuple[str, str], tuple[bytes, Manifest]] = {}
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 8


# --------------------------------------------------------------------------- parsing


def _compose(text: str, path: Path) -> Ctx:
    try:
        doc = _yaml.compose(text)
    except YamlProblem as exc:
        raise ManifestError(exc.message, path=path, line=exc.line) from None
    return Ctx(path, doc)


def _parse_config(ctx: Ctx, node: yaml.Node) -> dict[str, Any]:
    config: dict[str, Any] = {}
    citems = [] if is_null(node) else mapping_items(ctx, node, what="'config'")
    check_keys(ctx, citems, _CONFIG_KEYS, where="'config'")
    for k, _kn, vn in citems:
        if k == "hf_repo":
            config[k] = check_repo(ctx, vn, entry=None, key="hf_repo")
        elif k == "revision":
            config[k] = check_revision(ctx, vn, entry=None)
        elif k == "repo_type":
            config[k] = check_repo_type(ctx, vn, entry=None)
        elif k == "endpoint":
            config[k] = check_endpoint(ctx, vn)
        elif k == "cache_dir":
            config[k] = str_value(ctx, vn, entry=None, key="cache_dir")
        elif k == "mirrors":
            config[k] = _parse_mirrors(ctx, vn)
    return config


def _parse_mirrors(ctx: Ctx, node: yaml.Node) -> tuple[str, ...]:
    """``config.mirrors``: a list of mirror URL templates (docs/mirrors.md "What happens on a fetch")."""
    import yaml

    from .sources.template import SecretText, parse_mirror

    if is_null(node):
        return ()
    if not isinstance(node, yaml.SequenceNode):
        raise ctx.error(
            'must be a list of mirror URLs, e.g. mirrors: ["s3://bucket/ckpts/{sha256}"]',
            key="mirrors",
            node=node,
        )
    found = []
    for item in node.value:
        text = str_value(ctx, item, entry=None, key="mirrors")
        try:
            parse_mirror(text, source="config.mirrors")
        except ValueError as exc:
            why = exc.summary if isinstance(exc, CheckpointsError) else str(exc)
            raise ctx.error(why, key="mirrors", node=item) from None
        found.append(SecretText(text.strip()))
    return tuple(found)


def _parse_entry(
    ctx: Ctx, name: str, knode: yaml.Node, enode: yaml.Node, config: dict[str, Any]
) -> CheckpointSpec:
    if not _NAME_RE.match(name):
        raise ctx.error(
            "checkpoint names may use letters, digits, '_', '-' and '.'",
            entry=show(name)[1:-1],
            node=knode,
        )
    items = mapping_items(ctx, enode, what=f"checkpoint '{name}'", entry=name)
    check_keys(ctx, items, _ENTRY_KEYS, where=f"checkpoint '{name}'", entry=name)
    e = {k: vn for k, _kn, vn in items}
    if "hf_path" not in e:
        raise ctx.error(
            "missing required key: the file's path inside the hub repo, e.g. "
            "hf_path: mp_20/vae/model.ckpt",
            entry=name,
            key="hf_path",
            node=knode,
        )
    hf_path = check_hf_path(ctx, e["hf_path"], entry=name)
    repo = (
        check_repo(ctx, e["repo"], entry=name, key="repo") if "repo" in e else config.get("hf_repo")
    )
    if repo is None:
        raise ctx.error(
            "no repo: set config.hf_repo (shared by all entries) or 'repo' on this entry",
            entry=name,
            key="repo",
            node=knode,
        )
    description = ""
    if "description" in e and not is_null(e["description"]):
        description = str_value(
            ctx, e["description"], entry=name, key="description", allow_empty=True, text=True
        )
    return CheckpointSpec(
        name=name,
        filename=(
            check_filename(ctx, e["filename"], entry=name)
            if "filename" in e
            else PurePosixPath(hf_path).name
        ),
        hf_path=hf_path,
        sha256=(
            check_hex(ctx, e["sha256"], entry=name, key="sha256", placeholder=True)
            if "sha256" in e
            else None
        ),
        description=description,
        repo=repo,
        revision=(
            check_revision(ctx, e["revision"], entry=name)
            if "revision" in e
            else config.get("revision", "main")
        ),
        repo_type=(
            check_repo_type(ctx, e["repo_type"], entry=name)
            if "repo_type" in e
            else config.get("repo_type", "model")
        ),
        size=check_size(ctx, e["size"], entry=name) if "size" in e else None,
        line=knode.start_mark.line + 1,
        tensor_index=(
            check_hex(ctx, e["tensor_index"], entry=name, key="tensor_index", placeholder=False)
            if "tensor_index" in e
            else None
        ),
    )


def parse_manifest(text: str, path: Path) -> Manifest:
    """Validate manifest ``text`` read from ``path`` (no cache; see ``load_manifest``)."""
    ctx = _compose(text, path)
    root_node = ctx.doc.root
    if root_node is None:
        raise ctx.error("file is empty; it needs a top-level 'checkpoints:' mapping")
    top = mapping_items(ctx, root_node, what="the top level")
    check_keys(ctx, top, _TOP_KEYS, where="the top level")
    top_map = {k: (kn, vn) for k, kn, vn in top}
    config = _parse_config(ctx, top_map["config"][1]) if "config" in top_map else {}

    if "checkpoints" not in top_map:
        raise ctx.error(
            "missing the top-level 'checkpoints:' mapping (name -> hf_path, sha256, ...)",
            key="checkpoints",
        )
    cknode = top_map["checkpoints"][1]
    ck_items: Pairs = []
    if not is_null(cknode):
        ck_items = mapping_items(ctx, cknode, what="'checkpoints'", key="checkpoints")

    root = project_root_for(path)
    entries: dict[str, CheckpointSpec] = {}
    local_names: dict[tuple[str, str], str] = {}
    for name, knode, enode in ck_items:
        spec = _parse_entry(ctx, name, knode, enode, config)
        clash_key = (spec.repo, spec.filename)
        other = local_names.get(clash_key)
        if other is not None and entries[other].hf_path != spec.hf_path:
            raise ctx.error(
                f"local file name '{spec.filename}' is also used by entry '{other}' for a "
                "different hf_path in the same repo; give one of them another filename",
                entry=name,
                key="filename",
                node=knode,
            )
        local_names[clash_key] = name
        entries[name] = spec

    cache_setting = config.get("cache_dir")
    cache_dir = None if cache_setting is None else Path(os.path.expanduser(cache_setting))
    if cache_dir is not None and not cache_dir.is_absolute():
        cache_dir = root / cache_dir
    return Manifest(
        path=path,
        root=root,
        entries=MappingProxyType(entries),
        cache_dir=None if cache_dir is None else Path(os.path.normpath(cache_dir)),
        hf_repo=config.get("hf_repo"),
        revision=config.get("revision", "main"),
        repo_type=config.get("repo_type", "model"),
        endpoint=config.get("endpoint"),
        mirrors=config.get("mirrors", ()),
    )
