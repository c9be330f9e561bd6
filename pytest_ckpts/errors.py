"""Exception types of pytest-ckpts: errors carry data, front ends choose the words.

An error knows its ``entry``, a short ``cause``, its HTTP ``status``, a typed ``kind``
(hub failures) and its ``fixes``: each a :class:`Fix`, a setting of
:mod:`pytest_ckpts.settings` with a value or a ``pytest-ckpts`` command with its
arguments (and the cache directory in force). No engine names a command-line flag:
``str(exc)`` says the fixes in the library's words (environment variables), and each
front end renders the same fixes in its own (:meth:`CheckpointsError.render` with the
plugin's ``--ckpts-*`` options, the CLI's ``--offline``/``--cache-dir``/``--manifest``).
docs/architecture.md "How errors travel" shows the flow.

Every message starts with ``pytest-ckpts:`` and names what a user needs to act. The
classes keep the built-in bases docs/how-to/writing-tests.md "The library API"
lists (``ValueError`` for checksum
problems, ``RuntimeError`` for hub failures) so code written against the original
downloader keeps catching them.
"""

from __future__ import annotations

import enum
import pickle
from typing import Any

from ._fixes import Fix, Words, env_words, fixes_sentence

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
    "ExperimentError",
    "ExperimentFileNotFoundError",
    "ExperimentKeyError",
    "ExperimentTypeError",
    "ExperimentValueError",
    "ExperimentWarning",
    "Fix",
    "Kind",
    "ManifestError",
    "ManifestNotFoundError",
    "NoExperimentHashError",
    "SettingError",
    "TensorIndexError",
    "TransferStopped",
    "UnsafeCheckpointError",
    "UntrustedPickleError",
    "UploadArgumentError",
    "UploadError",
    "UsageFailure",
    "Words",
    "env_words",
]

#: What every message of pytest-ckpts starts with.
PREFIX = "pytest-ckpts: "


class Kind(str, enum.Enum):
    """How a hub failure was classified (docs/how-to/ci.md "Retries and the retry budget")."""

    TRANSIENT = "transient"  # 429, 5xx, reset, cut body, read timeout: retried in the budget
    UNREACHABLE = "unreachable"  # refused, DNS, connect timeout: decided once per run
    PERMANENT = "permanent"  # 401, 403, 404, not found: never retried

    def __str__(self) -> str:
        return self.value


class MirrorKind(str, enum.Enum):
    """How a mirror failure was classified (docs/mirrors.md "What happens on a fetch")."""

    MISSING = "missing"  # no such object: the next source, quietly
    REFUSED = "refused"  # 401, 403, no range support, a missing backend: remembered for the run
    UNREACHABLE = "unreachable"  # refused connection, unmounted folder: remembered for the run
    TRANSIENT = "transient"  # 5xx, 408, 429, a cut body: retried within the retry budget

    def __str__(self) -> str:
        return self.value


class CheckpointsError(Exception):
    """Base class of every error raised by pytest-ckpts.

    ``summary`` is the message without the ``pytest-ckpts:`` prefix and without the
    fixes; ``details`` lines follow it (hashes, paths); ``fixes`` end it, in the words
    a front end passes to :meth:`render` (``str()``: the library's, :func:`env_words`).
    """

    entry: str | None = None
    cause: str | None = None
    status: int | None = None
    fixes: tuple[Fix, ...] = ()
    details: str = ""
    summary: str = ""
    _prefixed: bool = False

    def __init__(
        self,
        *args: Any,
        entry: str | None = None,
        cause: str | None = None,
        status: int | None = None,
        fixes: tuple[Fix, ...] | list[Fix] = (),
        details: str = "",
    ) -> None:
        message = args[0] if args and isinstance(args[0], str) else ""
        self._prefixed = message.startswith(PREFIX)
        self.summary = message[len(PREFIX) :] if self._prefixed else message
        # set only what is given: a subclass may have set its own fields first
        for key, value in (("entry", entry), ("cause", cause), ("status", status)):
            if value is not None:
                setattr(self, key, value)
        self.fixes = tuple(fixes)
        self.details = details
        super().__init__(*args)

    def render(self, words: Words = env_words, *, prefix: bool = True) -> str:
        """The whole message with the fixes in ``words`` (one line first, then details);
        ``prefix=False`` leaves out ``pytest-ckpts:`` (a CLI row names the tool already)."""
        text = (PREFIX if self._prefixed and prefix else "") + self.summary
        if self.details:
            text += "\n" + self.details
        fix = fixes_sentence(self.fixes, words)
        if fix:
            text += ("\n" if self.details else " ") + fix
        return text

    def one_line(self, words: Words = env_words) -> str:
        """One line for a skip reason or a CLI row: the summary and the fixes."""
        fix = fixes_sentence(self.fixes, words)
        return f"{self.summary} {fix}" if fix else self.summary

    def __str__(self) -> str:
        if not (self.fixes or self.details):
            return super().__str__()
        return self.render()


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

    #: the cache that was looked in (:meth:`not_cached`)
    cache: object = None

    @classmethod
    def not_cached(
        cls, entry: str, cache: object, *, tensors: bool = False, fixes: tuple[Fix, ...] = ()
    ) -> CheckpointSkipped:
        """Offline and not in ``cache`` (``tensors``: a partial read's pieces): the message
        is built from the fields."""
        what = f"tensors of checkpoint '{entry}' are" if tensors else f"checkpoint '{entry}' is"
        exc = cls(
            f"{PREFIX}{what} not cached in {cache} and the mode is offline (no downloads).",
            entry=entry,
            cause="not cached",
            fixes=fixes,
        )
        exc.cache = cache
        return exc

    @classmethod
    def disabled(cls, entry: str, source: str) -> CheckpointSkipped:
        """Downloads are off for this run (``mode`` skip, set by ``source``)."""
        exc = cls(
            f"Checkpoint download skipped ({source}). Cannot load checkpoint: {entry}",
            entry=entry,
            cause="downloads disabled",
        )
        exc.source = source
        return exc

    #: what turned downloads off (:meth:`disabled`): an option, a variable, an ini key
    source: str | None = None


class ChecksumMismatchError(CheckpointsError, ValueError):
    """A file's sha256 does not match the manifest. Never turned into a skip.

    Built from its fields, the message names the file, ``expected`` and ``actual``:
    with ``source`` (where an entry's bytes came from) and ``why``, as the store says
    it for checkpoint ``name``; without, for ``what`` (a plain file: ``path``), with
    ``recorded_by`` (what holds ``expected``) and a closing ``note``. A message given as
    the first argument is used as it is (one-line forms, experiments).
    """

    #: what follows the detail lines of an entry's mismatch
    NEVER_SKIPPED = (
        "A checksum mismatch is never skipped: the upstream file changed or the local "
        "copy is corrupted."
    )

    def __init__(
        self,
        message: str | None = None,
        *,
        name: str | None = None,
        path: object = None,
        expected: str | None = None,
        actual: str | None = None,
        why: str = "",
        source: str | None = None,
        what: str | None = None,
        recorded_by: str = "",
        note: str = "",
        **data: Any,
    ) -> None:
        self.name = name
        self.path = path
        self.expected = expected
        self.actual = actual
        self.why = why
        self.source = source
        if message is None and source is not None:  # an entry's file (the store)
            message = f"{PREFIX}Checksum mismatch for checkpoint '{name}' ({why})"
            data.setdefault("cause", "checksum mismatch")
            data["details"] = (
                f"  file:     {path}\n  source:   {source}\n  expected: {expected}\n"
                f"  actual:   {actual}\n{self.NEVER_SKIPPED}"
            )
        elif message is None:  # a file (verify_checksum), a tensor (partial reads)
            message = f"{PREFIX}Checksum mismatch for {what if what is not None else path}"
            by = f" ({recorded_by})" if recorded_by else ""
            lines = [f"  expected sha256: {expected}{by}", f"  actual sha256:   {actual}"]
            data["details"] = "\n".join(lines + ([note] if note else []))
        super().__init__(message, entry=name, **data)


class CheckpointDownloadError(CheckpointsError, RuntimeError):
    """The hub could not deliver a file (unreachable, auth, not found, broken transfer).

    The message names repo, path in repo, revision, endpoint and cause, never the token.
    ``kind`` is how the failure was classified (a :class:`Kind`, docs/how-to/ci.md
    "Retries and the retry budget"):

    - ``Kind.TRANSIENT``: 429, 5xx, a reset or cut body, a read timeout; retried within the
      budget, and once the budget is spent it stays transient (a stale copy may be used);
    - ``Kind.UNREACHABLE``: refused, DNS, connect timeout, no answer within the probe
      timeout; decided once per endpoint per run;
    - ``Kind.PERMANENT``: 401, 403, 404, revision or entry not found; never retried.

    ``cause`` is the hub's answer alone ("HTTP 503: ..."), for stale reasons and summaries.
    Built from its fields (``what`` failed, and its ``cause``), the message is
    ``pytest-ckpts: <what>: <cause>.`` and then the fixes; a message given as the first
    argument is used as it is.
    """

    #: what failed ("failed to download checkpoint 'vae' from repo ..."), when given
    what: str | None = None

    def __init__(
        self,
        message: str | None = None,
        *,
        name: str | None = None,
        status: int | None = None,
        kind: Kind | str | None = None,
        what: str | None = None,
        **data: Any,
    ) -> None:
        self.name = name
        self.kind = Kind(kind) if kind is not None else Kind.PERMANENT
        if message is None:
            cause = data.get("cause")
            if what is None or cause is None:
                raise TypeError("CheckpointDownloadError needs a message, or what= and cause=")
            message = f"{PREFIX}{what}: {cause}" + ("." if data.get("fixes") else "")
        self.what = what
        super().__init__(message, entry=name, status=status, **data)

    @property
    def unreachable(self) -> bool:
        """The endpoint could not be reached at all (``kind is Kind.UNREACHABLE``)."""
        return self.kind is Kind.UNREACHABLE

    @property
    def hub_down(self) -> bool:
        """The hub could not be asked (not: it answered no): a stale copy may stand in."""
        return self.kind in (Kind.TRANSIENT, Kind.UNREACHABLE)


class CacheError(CheckpointsError, OSError):
    """The local cache cannot be used as asked: read-only, disk full, or a path that
    would leave the cache. A local failure: never a skip, whatever the mode.
    """


class UsageFailure(CheckpointsError):
    """A problem the user fixes by changing the command or the manifest (CLI exit 2)."""


class SettingError(UsageFailure, ValueError):
    """A setting's value that cannot be used (an option, a variable, an ini or manifest
    key): a ``ValueError`` as before, with the message's fields (``summary``) kept."""


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

    def __init__(self, message: str, *, path: object = None, fixes: tuple[Fix, ...] = ()) -> None:
        self.path = path
        self.key = None
        self.line = None
        CheckpointsError.__init__(
            self, f"pytest-ckpts: no manifest found: {message}", cause="no manifest", fixes=fixes
        )


# --- partial reads ---


class TensorIndexError(CheckpointsError, ValueError):
    """A tensor index (``checkpoints/tensors/<name>.json``) is missing, edited, out of date
    or stale, or names no such tensor: partial reads of that checkpoint are refused until
    ``pytest-ckpts lock --tensors NAME`` writes it again. Never turned into a skip.
    """


class ExperimentWarning(CheckpointsWarning, RuntimeWarning):
    """An experiment file was skipped (e.g. an unpicklable model); a ``RuntimeWarning`` as
    before, so existing filters keep matching."""


# --- internal signals: raised and caught inside pytest-ckpts, never shown as they are;
# importable from here, but not part of ``__all__`` (not public errors) ---


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

    ``kind`` (a :class:`MirrorKind`): ``MISSING`` (no such object: next source,
    quietly), ``REFUSED`` (401, 403, a missing backend: remembered for the run),
    ``UNREACHABLE`` (remembered for the run) or ``TRANSIENT`` (retried within the retry
    budget). ``mirror`` is the mirror's label (redacted, never its credentials) and
    ``problem`` what went wrong; ``text`` is built from them ("mirror LABEL: problem").
    """

    def __init__(
        self,
        kind: MirrorKind,
        mirror: str,
        problem: str,
        *,
        retry_after: float | None = None,
        text: str | None = None,
    ) -> None:
        self.kind = MirrorKind(kind)
        self.mirror = mirror
        self.problem = problem
        self.retry_after = retry_after
        self.text = text if text is not None else f"mirror {mirror}: {problem}"
        super().__init__(self.text)

    @classmethod
    def no_backend(cls, mirror: str, module: str, need: str) -> MirrorUnavailable:
        """The fsspec implementation of the mirror's scheme is not installed."""
        return cls(
            MirrorKind.REFUSED,
            mirror,
            f"needs {module}",
            text=f"mirror {mirror} needs {module}: {need}",
        )


class LockTimeout(CheckpointsError):
    """A per-file download lock was not free within the timeout (``_lock.acquire``; the
    store turns it into a ``CheckpointDownloadError`` naming the lock file and, when it
    signed the file, the process holding it)."""

    def __init__(self, message: str, *, path: object = None, holder: str | None = None) -> None:
        self.path = path
        self.holder = holder
        super().__init__(message)


class TransferStopped(CheckpointsError):
    """A transfer was told to stop (the session ended: ``-x``, Ctrl-C, ``pytest.exit``);
    what it wrote stays as a partial file the next download continues with ``Range``."""


class DecompressError(CheckpointsError):
    """The compressed stream is corrupt, truncated or unreadable (the archive reader's
    worker thread); the archive code turns it into an ``ArchiveError``."""


class CommitRejected(CheckpointsError):
    """A commit (or ref change) the local hub refuses: ``status``, ``code`` (X-Error-Code), message."""

    status: int

    def __init__(self, status: int, code: str | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
