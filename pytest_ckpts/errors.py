"""Exception types of pytest-ckpts.

Every message starts with ``pytest-ckpts:`` and names what a user needs to act:
the checkpoint, the file, the revision, both hashes, and the flag or environment
variable that changes the outcome. The classes keep the built-in bases docs/how-to/writing-tests.md "The library API" lists
(``ValueError`` for checksum problems, ``RuntimeError`` for hub failures) so code
written against the original downloader keeps catching them.
"""

from __future__ import annotations

import pickle
from typing import Any

__all__ = [
    "ArchiveError",
    "BaselineError",
    "BaselineMismatch",
    "BaselineMissing",
    "CacheError",
    "CheckpointDownloadError",
    "CheckpointSkipped",
    "CheckpointsError",
    "CheckpointsWarning",
    "ChecksumMismatchError",
    "CommitRejected",
    "DecompressError",
    "ExperimentError",
    "ExperimentFileNotFoundError",
    "ExperimentKeyError",
    "ExperimentTypeError",
    "ExperimentValueError",
    "ExperimentWarning",
    "ManifestError",
    "ManifestNotFoundError",
    "MirrorUnavailable",
    "NoExperimentHashError",
    "RetrySignal",
    "TensorIndexError",
    "TransferStopped",
    "UnsafeCheckpointError",
    "UntrustedPickleError",
    "UploadArgumentError",
    "UploadError",
    "UsageFailure",
    "YamlProblem",
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
    ``kind`` is how the failure was classified (docs/how-to/ci.md "Retries and the retry budget"):

    - ``"transient"``: 429, 5xx, a reset or cut body, a read timeout; retried within the
      budget, and once the budget is spent it stays transient (a stale copy may be used);
    - ``"unreachable"``: refused, DNS, connect timeout, no answer within the probe
      timeout; decided once per endpoint per run;
    - ``"permanent"``: 401, 403, 404, revision or entry not found; never retried.
    """

    def __init__(
        self,
        message: str,
        *,
        name: str | None = None,
        unreachable: bool = False,
        status: int | None = None,
        kind: str | None = None,
    ) -> None:
        self.name = name
        self.status = status
        self.kind = kind or ("unreachable" if unreachable else "permanent")
        self.unreachable = self.kind == "unreachable"
        super().__init__(message)

    @property
    def hub_down(self) -> bool:
        """The hub could not be asked (not: it answered no): a stale copy may stand in."""
        return self.kind in ("transient", "unreachable")


class CacheError(CheckpointsError, OSError):
    """The local cache cannot be used as asked: read-only, disk full, or a path that
    would leave the cache. A local failure: never a skip, whatever the mode.
    """


class UsageFailure(CheckpointsError):
    """A problem the user fixes by changing the command or the manifest (CLI exit 2)."""


class CheckpointsWarning(UserWarning):
    """Something about the manifest or the cache deserves attention but does not stop the run."""


# --- experiments ---


class ExperimentError(CheckpointsError):
    """Base of what ``pytest_ckpts.experiments`` raises for a bad argument, value or state.

    Each subclass also derives from the built-in type the experiment code raised
    before it had types of its own, so ``except ValueError`` (``TypeError``,
    ``KeyError``, ...) clauses written against it keep catching.
    """


class ExperimentValueError(ExperimentError, ValueError):
    """A value a ``CheckpointManager`` cannot use (retention setting, step, file-name
    part, experiment hash, missing model or metric) or an unreadable ``index.json``."""


class ExperimentTypeError(ExperimentError, TypeError):
    """A config, metadata, metric or UID value that cannot be hashed or stored.

    ``key_path`` says where it sits, e.g. ``config['optimizer']['fn']``, so the
    caller can replace that one value with a name or a number.
    """

    def __init__(self, message: str, *, key_path: str | None = None) -> None:
        self.key_path = key_path
        super().__init__(message)


class ExperimentKeyError(ExperimentError, KeyError):
    """A ``model_name=`` or ``optimizer_name=`` that was never registered."""

    def __str__(self) -> str:
        # KeyError quotes its argument; the message is a sentence, show it as one.
        return str(self.args[0]) if self.args else ""


class NoExperimentHashError(ExperimentError, RuntimeError):
    """A call that needs the current experiment hash came before ``update_experiment_hash``."""


class ExperimentFileNotFoundError(ExperimentError, FileNotFoundError):
    """The data file passed to ``save_data_backup`` does not exist."""


class UntrustedPickleError(ExperimentError, PermissionError):
    """``load_architecture`` would unpickle (run code) without ``trust_pickle=True``."""


# --- loading ---


class UnsafeCheckpointError(CheckpointsError, pickle.UnpicklingError):
    """``torch.load(weights_only=True)`` refused a pickled object in a checkpoint.

    A ``pickle.UnpicklingError`` too, so ``except pickle.UnpicklingError`` written
    against plain ``torch.load`` keeps working. ``type_name`` is the refused
    ``module.Class`` when torch named it; the message gives both ways out
    (``safe_globals=[...]``, or ``weights_only=False`` for trusted files only).
    """

    def __init__(
        self,
        message: str,
        *,
        name: str | None = None,
        path: object = None,
        type_name: str | None = None,
    ) -> None:
        self.name = name
        self.path = path
        self.type_name = type_name
        super().__init__(message)


class BaselineError(CheckpointsError, AssertionError):
    """Base of baseline failures: an ``AssertionError`` so pytest reports a failed test."""


class BaselineMissing(BaselineError):
    """No baseline existed; it has now been written and needs review."""


class BaselineMismatch(BaselineError):
    """The tensors differ from the baseline (structure, or values beyond tolerance)."""


# --- archive ---


class ArchiveError(CheckpointsError, ValueError):
    """A checkpoint archive could not be created, or is corrupt, unsafe or too big.

    A ``ValueError`` so callers of the original upload helpers, which raised
    ``ValueError`` for bad checkpoints, keep catching it.
    """


# --- uploads ---


class UploadError(CheckpointsError, RuntimeError):
    """An MLflow upload failed for good (a 4xx answer, or retries exhausted), or a bad
    ``mlflow.yaml``, or no private scratch directory for the archive.

    ``RuntimeError`` because code written against the original uploader catches that.
    """


class UploadArgumentError(CheckpointsError, ValueError):
    """An ``ArtifactUploader`` argument is invalid: an unknown stage, a negative retry setting.

    ``ValueError`` because that is what the uploader raised for these before.
    """


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


# --- partial reads ---


class TensorIndexError(CheckpointsError, ValueError):
    """A tensor index (``checkpoints/tensors/<name>.json``) is missing, edited, out of date
    or stale, or names no such tensor: partial reads of that checkpoint are refused until
    ``pytest-ckpts lock --tensors NAME`` writes it again. Never turned into a skip.
    """


class ExperimentWarning(CheckpointsWarning, RuntimeWarning):
    """An experiment file was skipped (e.g. an unpicklable model); a ``RuntimeWarning`` as
    before, so existing filters keep matching."""


# --- internal signals: raised and caught inside pytest-ckpts, never shown as they are ---


class YamlProblem(CheckpointsError):
    """A YAML-level problem (``line`` 1-based or None); the manifest turns it into a
    ``ManifestError`` naming the file."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


class RetrySignal(CheckpointsError):
    """A transient failure inside one attempt; the hub client's retry loop decides."""

    def __init__(self, failure: Any) -> None:
        super().__init__(getattr(failure, "text", "transient failure"))
        self.failure = failure


class MirrorUnavailable(CheckpointsError):
    """A mirror could not serve a file (internal: the store moves on to the next source).

    ``kind``: ``"missing"`` (no such object: next source, quietly), ``"refused"`` (401,
    403, a missing backend: remembered for the run), ``"unreachable"`` (remembered for
    the run) or ``"transient"`` (retried within the retry budget). The message names
    the mirror redacted, never its credentials.
    """

    def __init__(self, kind: str, text: str, *, retry_after: float | None = None) -> None:
        super().__init__(text)
        self.kind = kind
        self.text = text
        self.retry_after = retry_after


class TransferStopped(CheckpointsError):
    """A transfer was told to stop (the session ended: ``-x``, Ctrl-C, ``pytest.exit``);
    what it wrote stays as a partial file the next download continues with ``Range``."""


class DecompressError(CheckpointsError):
    """The compressed stream is corrupt, truncated or unreadable (the archive reader's
    worker thread); the archive code turns it into an ``ArchiveError``."""


class CommitRejected(CheckpointsError):
    """A commit (or ref change) the local hub refuses: ``status``, ``code`` (X-Error-Code), message."""

    def __init__(self, status: int, code: str | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
