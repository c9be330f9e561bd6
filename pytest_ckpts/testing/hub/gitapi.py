"""The local hub's git-ref API: refs, branches, tags, commit history, repo deletion.

``HfApi.list_repo_refs``, ``create_branch``/``delete_branch``, ``create_tag``/
``delete_tag``, ``list_repo_commits`` and ``delete_repo`` get the answers (and the error
statuses, bodies and ``X-Error-Code`` headers) the Hub gives them.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable
from functools import partial
from typing import Any

from ...errors import CommitRejected
from .content import Repo
from .wire import WireHandler

__all__ = ["COMMITS_PER_PAGE", "GitApiHandler"]

COMMITS_PER_PAGE = 50  # the Hub's page size for /commits; the rest behind a Link header
Handler = Callable[[], None]


class GitApiHandler(WireHandler):
    """Routes under ``/api/{models,datasets,spaces}/{repo}/`` that read or move refs."""

    def _repo(self, repo_type: str, repo_id: str) -> Repo | None:
        """The repo, or None once a 404/401 went out (private repos need a token)."""
        repo = self.hub.content.repo(repo_type, repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", f"Repository {repo_id!r} ({repo_type}) not found")
            return None
        if repo.private and self._denied(private=True):
            return None
        return repo

    def _git_route(
        self,
        repo_type: str,
        repo_id: str,
        verb: str,
        tail: list[str],
        method: str,
        query: dict[str, list[str]],
    ) -> Handler | None:
        """The handler of ``/api/<type>s/<repo_id>/<verb>/<tail>``, or None."""

        def at(handler: Handler) -> Handler:
            return partial(self._refusable, repo_type, repo_id, handler)

        content = self.hub.content
        if verb == "refs" and method == "GET" and not tail:
            prs = query.get("include_prs", ["0"])[-1] not in ("0", "false", "")
            return at(lambda: self._json(200, self._refs_json(repo_type, repo_id, prs)))
        if verb == "branch" and len(tail) == 1:
            name = tail[0]
            if method == "POST":
                return at(lambda: self._create_branch(repo_type, repo_id, name))
            if method == "DELETE":
                return at(lambda: self._done(content.delete_branch, repo_type, repo_id, name))
        if verb == "tag" and len(tail) == 1:
            if method == "POST":
                return at(lambda: self._create_tag(repo_type, repo_id, tail[0]))
            if method == "DELETE":
                return at(lambda: self._done(content.delete_tag, repo_type, repo_id, tail[0]))
        if verb == "commits" and method == "GET" and len(tail) == 1:
            page = int(query.get("p", ["0"])[-1] or 0)
            return at(lambda: self._commits(repo_type, repo_id, tail[0], page, query))
        return None

    def _refusable(self, repo_type: str, repo_id: str, handler: Handler) -> None:
        """Run ``handler`` on an existing, visible repo; a refusal answers as the Hub does."""
        self._drain()
        if self._repo(repo_type, repo_id) is None:
            return
        try:
            handler()
        except CommitRejected as refused:
            self._error(refused.status, refused.code, str(refused))

    def _ok(self) -> None:
        self._send(200, b"")

    def _done(self, change: Callable[[str, str, str], None], *args: str) -> None:
        """Make ``change`` (it raises what the Hub refuses), then answer 200."""
        change(*args)
        self._ok()

    def _refs_json(self, repo_type: str, repo_id: str, prs: bool) -> dict[str, Any]:
        branches, tags = self.hub.content.refs(repo_type, repo_id)

        def rows(names: dict[str, str], prefix: str) -> list[dict[str, str]]:
            return [
                {"name": n, "ref": f"{prefix}{n}", "targetCommit": c}
                for n, c in sorted(names.items())
            ]

        out: dict[str, Any] = {
            "branches": rows(branches, "refs/heads/"),
            "converts": [],  # no dataset viewer conversions (refs/convert/...) here
            "tags": rows(tags, "refs/tags/"),
        }
        if prs:
            out["pullRequests"] = []
        return out

    def _payload(self) -> dict[str, Any]:
        body = json.loads(self._body() or b"{}")
        if not isinstance(body, dict):
            raise CommitRejected(400, None, "the request body must be a JSON object")
        return body

    def _create_branch(self, repo_type: str, repo_id: str, name: str) -> None:
        start = self._payload().get("startingPoint")
        self.hub.content.create_branch(repo_type, repo_id, name, start)
        self._ok()

    def _create_tag(self, repo_type: str, repo_id: str, revision: str) -> None:
        body = self._payload()
        tag = body.get("tag")
        if not isinstance(tag, str):
            raise CommitRejected(400, None, "missing 'tag' in the request body")
        self.hub.content.create_tag(repo_type, repo_id, tag, revision)
        self._ok()

    def _commits(
        self,
        repo_type: str,
        repo_id: str,
        revision: str,
        page: int,
        query: dict[str, list[str]],
    ) -> None:
        history = self.hub.content.history(repo_type, repo_id, revision)
        start = page * COMMITS_PER_PAGE
        items = [meta.as_json(c) for c, meta in history[start : start + COMMITS_PER_PAGE]]
        headers = {}
        if start + COMMITS_PER_PAGE < len(history):
            split = urllib.parse.urlsplit(self.path)
            params = {k: v for k, v in query.items() if k != "p"}
            params["p"] = [str(page + 1)]
            url = f"{self.hub.endpoint}{split.path}?{urllib.parse.urlencode(params, doseq=True)}"
            headers["Link"] = f'<{url}>; rel="next"'
        self._send(200, json.dumps(items).encode(), headers=headers)

    def _delete_repo(self) -> None:
        body = json.loads(self._body() or b"{}")
        name, org = body.get("name") or "", body.get("organization")
        repo_id = f"{org}/{name}" if org else name
        repo_type = body.get("type") or "model"
        if self._repo(repo_type, repo_id) is None:
            return
        try:
            self.hub.content.delete_repo(repo_type, repo_id)
        except CommitRejected as refused:
            self._error(refused.status, refused.code, str(refused))
            return
        self._ok()
