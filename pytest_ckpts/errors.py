"""Exception types of pytest-ckpts.

Every message starts with ``pytest-ckpts:`` and names what a user needs to act:
the checkpoint, the file, the revision, both hashes, and the flag or environment
variable that changes the outcome. The classes keep the seed-004 contract
(``ValueError`` for checksum problems, ``RuntimeError`` for hub failures) so code
written against the original downloader keeps catching them.
"""

from __future__ import annotations

__all__ = [
    "CheckpointDownloadError",
    "CheckpointSkipped",
    "CheckpointsError",
    "ChecksumMismatchError",
    "ManifestError",
]


class CheckpointsError(Exception):
    """Base class of every error raised by pytest-ckpts."""


class ManifestError(CheckpointsError, ValueError):
    """The manifest file is missing, unreadable or malformed.

    ``path``, ``entry`` and ``key`` say where; the message says how to fix it.
    """

    def __init__(
        self,
        message: str,
        *,
        path: object = None,
        entry: str | None = None,
        key: str | None = None,
        line: int | None = None,
    ) -> None:
        self.path = path
        self.entry = entry
        self.key = key
        self.line = line
        where = []
        if path is not None:
            where.append(f"{path}" + (f":{line}" if line is not None else ""))
        if entry is not None:
            where.append(f"entry '{entry}'")
        if key is not None:
            where.append(f"key '{key}'")
        prefix = "pytest-ckpts: invalid manifest"
        if where:
            prefix += " " + ", ".join(where)
        super().__init__(f"{prefix}: {message}")


class CheckpointSkipped(CheckpointsError):
    """Raised when checkpoint downloads are disabled for this run.

    Inside a ``requires_checkpoints`` test the plugin turns it into a skip; the
    library raises it so scripts can tell "not available by policy" from failure.
    """


class ChecksumMismatchError(CheckpointsError, ValueError):
    """A file's sha256 does not match the manifest. Never turned into a skip."""

    def __init__(
        self,
        message: str,
        *,
        name: str | None = None,
        path: object = None,
        expected: str | None = None,
        actual: str | None = None,
    ) -> None:
        self.name = name
        self.path = path
        self.expected = expected
        self.actual = actual
        super().__init__(message)


class CheckpointDownloadError(CheckpointsError, RuntimeError):
    """The hub could not deliver a file (unreachable, auth, not found, broken transfer).

    The message names repo, path in repo, revision, endpoint and cause, never the token.
    """

    def __init__(
        self,
        message: str,
        *,
        name: str | None = None,
        unreachable: bool = False,
        status: int | None = None,
    ) -> None:
        self.name = name
        self.unreachable = unreachable
        self.status = status
        super().__init__(message)


# --- manifest ---


class ManifestNotFoundError(ManifestError):
    """No manifest where one was looked for (none found walking up, or a path that is not there).

    A subclass of ``ManifestError`` so existing handlers keep catching it, but its message
    says "no manifest found" rather than "invalid manifest": nothing is wrong with a file
    that does not exist, the pointer to it is.
    """

    def __init__(self, message: str, *, path: object = None) -> None:
        self.path = path
        self.entry = None
        self.key = None
        self.line = None
        CheckpointsError.__init__(self, f"pytest-ckpts: no manifest found: {message}")
