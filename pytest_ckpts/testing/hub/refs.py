"""Branches, tags and commit history of the local hub's repos, as the Hub keeps them.

:class:`RefsMixin` is part of :class:`~.content.HubContent`: every method takes the
content lock and raises :class:`~pytest_ckpts.errors.CommitRejected` carrying the
status and ``X-Error-Code`` the Hub answers with when it refuses.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...errors import CommitRejected

if TYPE_CHECKING:
    from .content import Repo

__all__ = ["CommitMeta", "RefsMixin", "check_ref_name"]

_HEX40 = re.compile(r"[0-9a-f]{40}")
_BAD_REF = re.compile(r"[\x00-\x20~^:?*\[\\\x7f]")
DEFAULT_BRANCH = "main"


@dataclass(frozen=True)
class CommitMeta:
    """What ``list_repo_commits`` shows of a commit (none of it is hashed)."""

    parent: str | None
    title: str
    message: str = ""
    date: float = 0.0
    author: str = "local-hub"

    def as_json(self, commit: str) -> dict[str, object]:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.date))
        millis = int(self.date * 1000) % 1000
        return {
            "id": commit,
            "title": self.title,
            "message": self.message,
            "authors": [{"user": self.author}],
            "date": f"{stamp}.{millis:03d}Z",
        }


def check_ref_name(name: str, what: str) -> None:
    """Refuse what git refuses in a branch or tag name (and a 40-hex name: a commit)."""
    if (
        not name
        or _BAD_REF.search(name)
        or ".." in name
        or "//" in name
        or "@{" in name
        or name.startswith(("/", ".", "-", "refs/"))
        or name.endswith(("/", ".", ".lock"))
        or _HEX40.fullmatch(name)
    ):
        raise CommitRejected(400, None, f"Invalid reference for a {what}: {name!r}")


class RefsMixin:
    """Refs and history of :class:`HubContent` (which provides the lock and repos)."""

    _lock: threading.RLock
    _repos: dict[tuple[str, str], Repo]

    def _existing(self, repo_type: str, repo_id: str) -> Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None:
            raise CommitRejected(
                404, "RepoNotFound", f"Repository {repo_id!r} ({repo_type}) not found"
            )
        return repo

    def refs(self, repo_type: str, repo_id: str) -> tuple[dict[str, str], dict[str, str]]:
        """``(branches, tags)``: name -> commit."""
        with self._lock:
            repo = self._existing(repo_type, repo_id)
            return dict(repo.branches), dict(repo.tags)

    def create_branch(self, repo_type: str, repo_id: str, name: str, start: str | None) -> str:
        """A new branch at ``start`` (default: the head of ``main``); its commit."""
        with self._lock:
            repo = self._existing(repo_type, repo_id)
            check_ref_name(name, "branch")
            if name in repo.branches:
                raise CommitRejected(409, None, f"Reference already exists: refs/heads/{name}")
            commit = repo.resolve(start or DEFAULT_BRANCH)
            if commit is None:
                raise CommitRejected(404, "RevisionNotFound", f"Invalid rev id: {start}")
            repo.branches[name] = commit
            return commit

    def delete_branch(self, repo_type: str, repo_id: str, name: str) -> None:
        with self._lock:
            repo = self._existing(repo_type, repo_id)
            if name not in repo.branches:
                raise CommitRejected(404, "RevisionNotFound", f"Invalid rev id: {name}")
            if name == DEFAULT_BRANCH:
                raise CommitRejected(
                    403, None, f"You cannot delete the default branch ({DEFAULT_BRANCH})"
                )
            del repo.branches[name]

    def create_tag(self, repo_type: str, repo_id: str, tag: str, revision: str) -> str:
        """Tag the commit ``revision`` names; the commit."""
        with self._lock:
            repo = self._existing(repo_type, repo_id)
            check_ref_name(tag, "tag")
            if tag in repo.tags:
                raise CommitRejected(409, None, f"Tag already exists: refs/tags/{tag}")
            commit = repo.resolve(revision)
            if commit is None:
                raise CommitRejected(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            repo.tags[tag] = commit
            return commit

    def delete_tag(self, repo_type: str, repo_id: str, tag: str) -> None:
        with self._lock:
            repo = self._existing(repo_type, repo_id)
            if repo.tags.pop(tag, None) is None:
                raise CommitRejected(404, "RevisionNotFound", f"Invalid rev id: {tag}")

    def history(self, repo_type: str, repo_id: str, revision: str) -> list[tuple[str, CommitMeta]]:
        """Commits reachable from ``revision``, newest first (the repo's first commit last)."""
        with self._lock:
            repo = self._existing(repo_type, repo_id)
            commit = repo.resolve(revision)
            if commit is None:
                raise CommitRejected(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            out: list[tuple[str, CommitMeta]] = []
            seen: set[str] = set()
            current: str | None = commit
            while current is not None and current not in seen:
                seen.add(current)
                meta = repo.log.get(current) or CommitMeta(None, "initial commit")
                out.append((current, meta))
                current = meta.parent
            return out

    def delete_repo(self, repo_type: str, repo_id: str) -> None:
        with self._lock:
            self._existing(repo_type, repo_id)
            del self._repos[(repo_type, repo_id)]
