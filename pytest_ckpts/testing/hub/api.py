"""The local hub's API and upload answers: repo info, tree, create, preupload, LFS, commit."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from functools import partial
from typing import Any

from ...errors import CommitRejected
from .content import Blob, clean_path, lfs_pointer, wants_lfs
from .gitapi import GitApiHandler

TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
XET_MESSAGE = (
    "pytest-ckpts LocalHub has no Xet storage. huggingface_hub uploads LFS files through "
    "Xet whenever hf_xet is installed: set HF_HUB_DISABLE_XET=1 before importing "
    "huggingface_hub (or set huggingface_hub.constants.HF_HUB_DISABLE_XET = True) to "
    "upload over the LFS HTTP protocol."
)
Handler = Callable[[], None]


class ApiHandler(GitApiHandler):
    """``/api/...`` routes and the LFS upload protocol (refs and history: ``gitapi``)."""

    def _api_route(
        self, parts: list[str], method: str, query: dict[str, list[str]]
    ) -> tuple[str, Handler | None]:
        """``(route kind, handler)`` for ``/api/<parts>``."""
        if parts == ["repos", "create"] and method == "POST":
            return "upload", self._create_repo
        if parts == ["repos", "delete"] and method == "DELETE":
            return "upload", self._delete_repo
        if parts == ["validate-yaml"] and method == "POST":  # README.md metadata check
            return "api", lambda: self._json(200, {"errors": [], "warnings": []})
        if not parts or parts[0] not in TYPES:
            return "api", None
        repo_type, rest = TYPES[parts[0]], parts[1:]
        blobs = query.get("blobs", ["false"])[-1].lower() in ("1", "true")  # files_metadata
        if len(rest) in (1, 2) and method == "GET":
            return "revision", lambda: self._repo_info(repo_type, "/".join(rest), "main", blobs)
        for i in (2, 1):
            if len(rest) <= i:
                continue
            verb, repo_id, tail = rest[i], "/".join(rest[:i]), rest[i + 1 :]
            revision = tail[0] if tail else "main"
            git = self._git_route(repo_type, repo_id, verb, tail, method, query)
            if git is not None:
                return "refs", git
            if verb == "revision" and method == "GET" and len(tail) == 1:
                return "revision", partial(self._repo_info, repo_type, repo_id, revision, blobs)
            if verb == "tree" and method == "GET":
                recursive = query.get("recursive", ["false"])[-1].lower() in ("1", "true")
                under = "/".join(tail[1:]).strip("/")
                return "tree", partial(
                    self._list_tree, repo_type, repo_id, revision, under, recursive
                )
            if verb == "preupload" and method == "POST" and len(tail) == 1:
                return "upload", partial(self._preupload, repo_type, repo_id, revision)
            if verb == "commit" and method == "POST" and len(tail) == 1:
                return "upload", partial(self._commit, repo_type, repo_id, revision, query)
            if verb in ("xet-write-token", "xet-read-token"):
                return "upload", lambda: self._error(404, None, XET_MESSAGE)
        return "api", None

    def _tree_or_404(
        self, repo_type: str, repo_id: str, revision: str
    ) -> tuple[str, dict[str, Blob]] | None:
        try:
            return self.hub.content.tree(repo_type, repo_id, revision)
        except KeyError:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return None

    def _repo_info(self, repo_type: str, repo_id: str, revision: str, blobs: bool = False) -> None:
        repo = self._repo(repo_type, repo_id)
        found = None if repo is None else self._tree_or_404(repo_type, repo_id, revision)
        if repo is None or found is None:
            return
        commit, tree = found
        info: dict[str, Any] = {
            "id": repo_id,
            "sha": commit,
            "private": repo.private,
            "disabled": False,
            "gated": False,
            "tags": [],
            "siblings": [_sibling(p, b, blobs) for p, b in sorted(tree.items())],
        }
        if repo_type == "model":
            info["modelId"] = repo_id
        self._json(200, info)

    def _list_tree(
        self, repo_type: str, repo_id: str, revision: str, under: str, recursive: bool
    ) -> None:
        """The file listing behind ``list_repo_files``/``list_repo_tree``."""
        if self._repo(repo_type, repo_id) is None:
            return
        found = self._tree_or_404(repo_type, repo_id, revision)
        if found is None:
            return
        tree = found[1]
        prefix = f"{under}/" if under else ""
        paths = [p for p in tree if p.startswith(prefix)]
        if under and not paths:
            self._error(404, "EntryNotFound", f"{under} does not exist on {revision!r}")
            return
        dirs = {"/".join(p.split("/")[:i]) for p in paths for i in range(1, p.count("/") + 1)}
        depth = prefix.count("/")
        entries: list[dict[str, Any]] = []
        for d in sorted(x for x in dirs if x.startswith(prefix)):
            if recursive or d.count("/") == depth:
                entries.append({"type": "directory", "path": d, "oid": "0" * 40, "size": 0})
        for p in sorted(paths):
            if not recursive and p.count("/") != depth:
                continue
            blob = tree[p]
            entry: dict[str, Any] = {"type": "file", "path": p, "size": blob.size}
            entry["oid"] = blob.git_oid
            if blob.lfs:
                pointer = len(lfs_pointer(blob.sha256, blob.size))
                entry["lfs"] = {"oid": blob.sha256, "size": blob.size, "pointerSize": pointer}
            entries.append(entry)
        self._json(200, entries)

    def _create_repo(self) -> None:
        body = json.loads(self._body() or b"{}")
        name, org = body.get("name") or "", body.get("organization")
        repo_id = f"{org}/{name}" if org else name
        repo_type = body.get("type") or "model"
        if not name or repo_type not in PREFIX:
            self._error(400, None, "invalid repo name or type")
            return
        url = f"{self.hub.endpoint}/{PREFIX[repo_type]}{repo_id}"
        private = body.get("visibility") == "private" or body.get("private") is True
        if not self.hub.content.create_new_repo(repo_id, repo_type, private):
            # the Hub's 409 carries the url: `create_repo(exist_ok=True)` returns it
            self._error(
                409, None, "You already created this repo", {"X-Repo-Url": url}, {"url": url}
            )
            return
        self._json(200, {"url": url, "name": repo_id, "id": repo_id})

    def _preupload(self, repo_type: str, repo_id: str, revision: str) -> None:
        body = json.loads(self._body() or b"{}")
        if self._repo(repo_type, repo_id) is None:
            return
        try:
            _, tree = self.hub.content.tree(repo_type, repo_id, revision)
        except KeyError:
            tree = {}
        files = []
        for f in body.get("files", []):
            sample = base64.b64decode(f.get("sample") or "")
            lfs = wants_lfs(f["path"], int(f.get("size") or 0), sample)
            entry: dict[str, Any] = {
                "path": f["path"],
                "uploadMode": "lfs" if lfs else "regular",
                "shouldIgnore": False,
            }
            current = tree.get(f["path"])
            if current is not None and current.lfs == lfs:
                # lets the client skip unchanged files, as the hub does
                entry["oid"] = current.sha256 if lfs else current.git_oid
            files.append(entry)
        self._json(200, {"files": files})

    def _lfs_batch(self, repo_type: str, repo_id: str) -> None:
        body = json.loads(self._body() or b"{}")
        if self._repo(repo_type, repo_id) is None:
            return
        sig = f"sig={self.hub.lfs_signature}"
        objects = []
        for obj in body.get("objects", []):
            oid, size = str(obj["oid"]), int(obj["size"])
            entry: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if self.hub.content.known_lfs(oid) is None:
                entry["actions"] = {
                    "upload": {"href": f"{self.hub.endpoint}/lfs-upload/{oid}?{sig}"},
                    "verify": {"href": f"{self.hub.endpoint}/lfs-verify/{oid}?{sig}"},
                }
            objects.append(entry)
        self._json(200, {"transfer": "basic", "objects": objects}, "application/vnd.git-lfs+json")

    def _lfs_put(self, oid: str) -> None:
        if not re.fullmatch(r"[0-9a-f]{64}", oid):
            self._body()
            self._error(400, None, "bad oid")
            return
        length = int(self.headers.get("Content-Length") or 0)
        if not self.hub.content.receive_lfs(oid, self.rfile, length):
            self._error(400, None, "uploaded content does not match its oid")
            return
        self._send(200, b"")

    def _lfs_verify(self, oid: str) -> None:
        body = json.loads(self._body() or b"{}")
        blob = self.hub.content.known_lfs(oid)
        if blob is None or ("size" in body and int(body["size"]) != blob.size):
            self._error(404, None, f"object {oid} was not uploaded")
            return
        self._json(200, {"oid": oid, "size": blob.size})

    def _commit(
        self, repo_type: str, repo_id: str, revision: str, query: dict[str, list[str]]
    ) -> None:
        raw = self._body()
        if self._repo(repo_type, repo_id) is None:
            return
        if query.get("create_pr", ["0"])[-1] not in ("0", "false", ""):
            self._error(400, None, "pytest-ckpts LocalHub does not support pull requests")
            return
        blobs: dict[str, Blob] = {}
        deleted_files: set[str] = set()
        deleted_dirs: list[str] = []
        parent: str | None = None
        header: dict[str, Any] = {}
        for line in raw.decode("utf-8").splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item.get("key"), item.get("value", {})
            if key == "header":
                header, parent = value, value.get("parentCommit")
            elif key == "file":
                path = clean_path(value["path"])
                blobs[path] = Blob.of(path, base64.b64decode(value["content"]), lfs=False)
            elif key == "lfsFile":
                found = self.hub.content.known_lfs(str(value["oid"]))
                if found is None:
                    self._error(400, None, f"LFS object {value['oid']} was not uploaded")
                    return
                blobs[clean_path(value["path"])] = found.as_lfs()
            elif key == "deletedFile":
                deleted_files.add(clean_path(value["path"]))
            elif key == "deletedFolder":
                deleted_dirs.append(clean_path(value["path"]) + "/")
            else:
                self._error(400, None, f"pytest-ckpts LocalHub does not support {key!r} operations")
                return
        try:
            commit = self.hub.content.commit_on_head(
                repo_id,
                repo_type,
                revision,
                parent,
                blobs,
                deleted_files,
                deleted_dirs,
                str(header.get("summary") or ""),
                str(header.get("description") or ""),
            )
        except CommitRejected as rejected:
            self._error(rejected.status, rejected.code, str(rejected))
            return
        url = f"{self.hub.endpoint}/{PREFIX[repo_type]}{repo_id}/commit/{commit}"
        self._json(200, {"success": True, "commitOid": commit, "commitUrl": url, "hookOutput": ""})


def _sibling(path: str, blob: Blob, blobs: bool) -> dict[str, Any]:
    """One file of ``model_info``; with ``blobs`` (``files_metadata=True``) its git blob id
    and, for an LFS file, ``lfs: {sha256, size, pointerSize}``, as the Hub sends them."""
    entry: dict[str, Any] = {"rfilename": path, "size": blob.size}
    if blobs:
        entry["blobId"] = blob.git_oid
        if blob.lfs:
            pointer = len(lfs_pointer(blob.sha256, blob.size))
            entry["lfs"] = {"sha256": blob.sha256, "size": blob.size, "pointerSize": pointer}
    return entry
