"""Field rules of the manifest: types, ids, revisions and paths (used by ``manifest``).

Every check raises ``ManifestError`` naming file:line, entry and key, with the fix.
Revision, repo and path rules exist because a pull request can edit the manifest and
these values end up in URLs and in paths under the cache: none may lead outside it.
Values shown in messages go through ``_yaml.show`` so a hostile value stays short.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _yaml
from ._redact import redact_url
from ._yaml import show
from .errors import ManifestError, YamlProblem
from .integrity import SHA256_RE

if TYPE_CHECKING:
    import yaml

#: The "not computed yet" marker for sha256 (docs/manifest.md "The manifest").
PLACEHOLDER = "<to_be_calculated>"
_REPO_TYPES = ("model", "dataset")
# The Hub's repo id rule (huggingface_hub's validate_repo_id): optional owner, 1-96
# characters of letters, digits, '-', '_', '.', starting and ending with a letter,
# digit or '_'; no '--' or '..'; not ending in '.git'.
_REPO_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9_.\-]{0,94}[A-Za-z0-9_])?"
_REPO_RE = re.compile(rf"^(?:{_REPO_PART}/)?{_REPO_PART}$")
# What git's check-ref-format refuses anywhere in a ref name, plus the space.
_REF_BAD_CHARS = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_IN_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")  # tab, newlines ok
_DRIVE = re.compile(r"^[A-Za-z]:")
_MAX_REVISION = 255


Pairs = list[tuple[str, "yaml.Node", "yaml.Node"]]


class Ctx:
    """Carries the file path and the composed document so every error can say where."""

    def __init__(self, path: Path, doc: _yaml.Document) -> None:
        self.path = path
        self.doc = doc

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

    def value(self, node: yaml.Node, *, entry: str | None = None, key: str | None = None) -> Any:
        try:
            return self.doc.value(node)
        except YamlProblem as exc:
            raise ManifestError(
                exc.message, path=self.path, entry=entry, key=key, line=exc.line
            ) from None


def is_null(node: yaml.Node) -> bool:
    return node.tag == "tag:yaml.org,2002:null"


def mapping_items(
    ctx: Ctx, node: yaml.Node, *, what: str, entry: str | None = None, key: str | None = None
) -> Pairs:
    """Key/value pairs of a mapping node, ``<<`` merges applied, duplicates refused."""
    import yaml

    if not isinstance(node, yaml.MappingNode):
        raise ctx.error(
            f"{what} must be a mapping (key: value lines)", entry=entry, key=key, node=node
        )
    try:
        explicit, merged = ctx.doc.pairs(node)
    except YamlProblem as exc:
        raise ManifestError(
            exc.message, path=ctx.path, entry=entry, key=key, line=exc.line
        ) from None
    items: Pairs = []
    seen: dict[str, int] = {}
    for knode, vnode in explicit:
        if not isinstance(knode, yaml.ScalarNode):
            raise ctx.error(f"{what} has a non-scalar key", entry=entry, node=knode)
        k = str(knode.value)
        if k in seen:
            raise ctx.error(
                f"'{show(k)[1:-1]}' is defined twice in {what} (first at line {seen[k]}); "
                "YAML would silently keep only the last one. Rename or remove one.",
                entry=entry if entry is not None else (k if what == "'checkpoints'" else None),
                key=None if what == "'checkpoints'" else k,
                node=knode,
            )
        seen[k] = knode.start_mark.line + 1
        items.append((k, knode, vnode))
    inherited: Pairs = []
    for knode, vnode in merged:
        if not isinstance(knode, yaml.ScalarNode):
            raise ctx.error(f"{what} merges a non-scalar key", entry=entry, node=knode)
        if str(knode.value) not in seen:
            inherited.append((str(knode.value), knode, vnode))
    return inherited + items


def check_keys(
    ctx: Ctx,
    items: Pairs,
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
                key=show(k)[1:-1] if len(k) > 60 or _CONTROL.search(k) else k,
                node=knode,
            )


def str_value(
    ctx: Ctx,
    node: yaml.Node,
    *,
    entry: str | None,
    key: str,
    allow_empty: bool = False,
    text: bool = False,
) -> str:
    """A string value; control characters refused (``text``: tab and newlines allowed)."""
    value = ctx.value(node, entry=entry, key=key)
    if not isinstance(value, str):
        kind = "empty" if value is None else type(value).__name__
        raise ctx.error(
            f'must be a string, got {kind} ({show(value)}). Quote the value: {key}: "..."',
            entry=entry,
            key=key,
            node=node,
        )
    bad = (_CONTROL_IN_TEXT if text else _CONTROL).search(value)
    if bad is not None:
        raise ctx.error(
            f"contains the control character {bad.group()!r} ({show(value)}); remove it",
            entry=entry,
            key=key,
            node=node,
        )
    if not allow_empty and not value.strip():
        raise ctx.error("must not be empty", entry=entry, key=key, node=node)
    return value


def revision_problem(revision: str) -> str | None:
    """Why ``revision`` is not a usable branch, tag, ``refs/...`` name or commit, else None.

    The rules are git's ``check-ref-format`` (which the Hub follows) plus a refusal of a
    leading '-': whatever passes can be used as a path component under the cache's
    ``refs/`` directory without leaving it.
    """
    if len(revision) > _MAX_REVISION:
        return f"is longer than {_MAX_REVISION} characters"
    bad = _REF_BAD_CHARS.search(revision)
    if bad is not None:
        return (
            f"contains {bad.group()!r}; git refuses spaces, control characters and "
            "~ ^ : ? * [ \\ in branch and tag names"
        )
    if revision.startswith("/"):
        return "starts with '/'; a revision is a branch, tag or commit, not a path"
    if revision.startswith("-"):
        return "starts with '-'"
    if revision.endswith("/") or "//" in revision:
        return "has an empty component ('//' or a trailing '/')"
    if revision.endswith("."):
        return "ends with '.'"
    if "@{" in revision or revision == "@":
        return "contains '@{' (or is '@')"
    for part in revision.split("/"):
        if part.startswith("."):
            return (
                f"has a component starting with '.' ({part!r}); '..' and hidden names are refused"
            )
        if part.endswith(".lock"):
            return f"has a component ending in '.lock' ({part!r})"
    if ".." in revision:
        return "contains '..'"
    return None


def check_revision(ctx: Ctx, node: yaml.Node, *, entry: str | None) -> str:
    value = ctx.value(node, entry=entry, key="revision")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raise ctx.error(
            f"revision must be a string (a branch, tag or 40-hex commit); YAML read {value!r} "
            'as a number. Quote it: revision: "..."',
            entry=entry,
            key="revision",
            node=node,
        )
    value = str_value(ctx, node, entry=entry, key="revision")
    problem = revision_problem(value)
    if problem is not None:
        raise ctx.error(
            f"{show(value)} is not a valid revision: it {problem}. Use a branch (main), a tag "
            "(v1.2), a ref (refs/pr/3) or a 40-hex commit.",
            entry=entry,
            key="revision",
            node=node,
        )
    return value


def check_repo(ctx: Ctx, node: yaml.Node, *, entry: str | None, key: str) -> str:
    value = str_value(ctx, node, entry=entry, key=key).strip()
    if not _REPO_RE.match(value) or "--" in value or ".." in value or value.endswith(".git"):
        raise ctx.error(
            f"{show(value)} is not a Hugging Face repo id; expected 'org/name' (letters, "
            "digits, '-', '_', '.', at most 96 each; no '--', '..' or trailing '.git')",
            entry=entry,
            key=key,
            node=node,
        )
    return value


def check_repo_type(ctx: Ctx, node: yaml.Node, *, entry: str | None) -> str:
    value = str_value(ctx, node, entry=entry, key="repo_type")
    if value not in _REPO_TYPES:
        raise ctx.error(
            f"{show(value)} is not a supported repo_type; use one of: {', '.join(_REPO_TYPES)}",
            entry=entry,
            key="repo_type",
            node=node,
        )
    return value


def check_hex(ctx: Ctx, node: yaml.Node, *, entry: str, key: str, placeholder: bool) -> str | None:
    """64 hex digits (normalised to lower case), or None for empty/placeholder."""
    value = ctx.value(node, entry=entry, key=key)
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        rewrite = "" if placeholder else f", or re-run `pytest-ckpts lock --tensors {entry}`"
        raise ctx.error(
            f"YAML read this {key} as a number, which loses digits. Quote it: "
            f'{key}: "<64 hex digits>"{rewrite}',
            entry=entry,
            key=key,
            node=node,
        )
    alternative = f" or {PLACEHOLDER}" if placeholder else ""
    if not isinstance(value, str):
        raise ctx.error(
            f"must be 64 hex digits{alternative}, got {type(value).__name__}",
            entry=entry,
            key=key,
            node=node,
        )
    text = value.strip()
    if text == "" or (placeholder and text == PLACEHOLDER):
        return None
    lowered = text.lower()
    if placeholder and lowered.startswith("sha256:"):
        lowered = lowered[len("sha256:") :]
    if not SHA256_RE.match(lowered):
        fix = (
            f"Use `sha256sum FILE` or `pytest-ckpts lock` to fill it in, or write {PLACEHOLDER} "
            "for now."
            if placeholder
            else f"Run `pytest-ckpts lock --tensors {entry}` to write it, or remove the key."
        )
        raise ctx.error(
            f"{show(text)} is not a sha256 (64 hex digits). {fix}",
            entry=entry,
            key=key,
            node=node,
        )
    return lowered


def path_problem(value: str) -> str | None:
    """Why ``value`` cannot be a relative path that stays inside its directory, else None."""
    if "\\" in value:
        return "uses '\\'; the separator is '/'"
    if value.startswith("/") or _DRIVE.match(value):
        return "is absolute; it must be relative (no leading '/' or drive letter)"
    parts = value.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return "has a '.', '..' or empty component"
    return None


def check_hf_path(ctx: Ctx, node: yaml.Node, *, entry: str) -> str:
    value = str_value(ctx, node, entry=entry, key="hf_path").strip()
    problem = path_problem(value)
    if problem is not None:
        raise ctx.error(
            f"hf_path {show(value)} {problem}: it is a path inside the hub repo, relative to "
            "the repo root, e.g. hf_path: mp_20/vae/model.ckpt",
            entry=entry,
            key="hf_path",
            node=node,
        )
    return value


def check_filename(ctx: Ctx, node: yaml.Node, *, entry: str) -> str:
    value = str_value(ctx, node, entry=entry, key="filename").strip()
    if "/" in value or path_problem(value) is not None:
        raise ctx.error(
            f"filename {show(value)} is not a plain local file name (no directories, "
            "'\\', drive letter, '.' or '..'); it names the file in the cache",
            entry=entry,
            key="filename",
            node=node,
        )
    return value


def check_size(ctx: Ctx, node: yaml.Node, *, entry: str) -> int:
    value = ctx.value(node, entry=entry, key="size")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ctx.error(
            f"size must be a non-negative integer number of bytes, got {show(value)}",
            entry=entry,
            key="size",
            node=node,
        )
    return value


def check_endpoint(ctx: Ctx, node: yaml.Node) -> str:
    value = str_value(ctx, node, entry=None, key="endpoint").strip().rstrip("/")
    if not value.startswith(("http://", "https://")):
        raise ctx.error(
            f"{show(redact_url(value))} is not an http(s) URL",
            entry=None,
            key="endpoint",
            node=node,
        )
    return value
