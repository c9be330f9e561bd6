"""Resolve a manifest entry to a verified local file.

The flow for one checkpoint:

1. Find the commit: a pinned 40-hex revision is used as is; a branch is resolved
   once per store by a short *probe* (``GET /api/<type>s/<repo>/revision/<rev>``).
   huggingface_hub would retry an unreachable hub for ~23 s per file; the probe
   answers in milliseconds (connection refused) or after ``probe_timeout``, once.
2. If the snapshot file exists and its verification stamp still matches ``stat``,
   return it: no hashing, no HTTP.
3. Otherwise take a per-file lock (any number of processes: one download), look
   again, then download through ``hf_hub_download`` with the commit as revision,
   hash, compare with the manifest, stamp. A cached copy that fails the check is
   downloaded again once; a fresh download that fails is deleted and reported.

This module knows nothing of pytest; the plugin, the CLI and ``get_checkpoint``
are thin callers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from filelock import FileLock, Timeout

from .checkpoint import Checkpoint
from .errors import CheckpointDownloadError, CheckpointSkipped, ChecksumMismatchError
from .integrity import (
    Stamp,
    atomic_write_text,
    calculate_sha256,
    read_stamp,
    stamp_matches,
    write_stamp,
)
from .manifest import CheckpointSpec, Manifest, env_value, is_pinned

__all__ = [
    "DEFAULT_ENDPOINT",
    "NullObserver",
    "Observer",
    "Store",
    "hf_token",
    "redact",
    "resolve_endpoint",
]

logger = logging.getLogger("pytest_ckpts")

DEFAULT_ENDPOINT = "https://huggingface.co"
_META_DIR = ".ckpts"


class Observer(Protocol):
    """Receives store events; the plugin forwards them to ``pytest_ckpts_*`` hooks."""

    def on_download(self, spec: CheckpointSpec, path: Path, nbytes: int, seconds: float) -> None:
        """A file finished downloading."""

    def on_verify(
        self, spec: CheckpointSpec, path: Path, sha256: str, ok: bool, seconds: float
    ) -> None:
        """A file was hashed and compared with the manifest."""

    def on_resolve(self, spec: CheckpointSpec, checkpoint: Checkpoint) -> None:
        """A checkpoint is ready for use (cached or downloaded)."""


class NullObserver:
    """An observer that ignores everything."""

    def on_download(self, spec: CheckpointSpec, path: Path, nbytes: int, seconds: float) -> None:
        pass

    def on_verify(
        self, spec: CheckpointSpec, path: Path, sha256: str, ok: bool, seconds: float
    ) -> None:
        pass

    def on_resolve(self, spec: CheckpointSpec, checkpoint: Checkpoint) -> None:
        pass


def hf_token() -> str | None:
    """``HF_TOKEN`` (read now, not at import), else the token file huggingface_hub uses."""
    token = env_value("HF_TOKEN") or env_value("HUGGING_FACE_HUB_TOKEN")
    if token:
        return token
    hf_home = env_value("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    token_path = env_value("HF_TOKEN_PATH") or os.path.join(hf_home, "token")
    try:
        text = Path(token_path).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return text or None


def resolve_endpoint(manifest: Manifest) -> str:
    """Manifest ``config.endpoint`` > ``HF_ENDPOINT`` (read now) > the public hub.

    A manifest that names its endpoint (a private hub) means it; ``HF_ENDPOINT`` is a
    machine-wide mirror setting for everything else.
    """
    return (manifest.endpoint or env_value("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def redact(text: str, token: str | None) -> str:
    """Remove the token from text that may reach a terminal or a log."""
    if token:
        text = text.replace(token, "***")
    return text


def _prepare_hf() -> Any:
    """Import huggingface_hub with telemetry off (it reads the switch at import)."""
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    import huggingface_hub
    from huggingface_hub import constants

    # Already imported by the user with telemetry on: the agent-harness registry call
    # would go to the public hub even though we pass our endpoint. Switch it off.
    constants.HF_HUB_DISABLE_TELEMETRY = True
    return huggingface_hub


def _repo_folder(spec: CheckpointSpec) -> str:
    return f"{spec.repo_type}s--" + "--".join(spec.repo.split("/"))


@dataclass
class _Probe:
    commit: str | None = None
    error: CheckpointDownloadError | None = None


@dataclass
class Store:
    """Resolves manifest entries to verified files in ``cache_dir``.

    ``offline=True`` never touches the network: a missing file raises
    ``CheckpointSkipped``. ``rehash=True`` ignores stamps and hashes every file.
    """

    manifest: Manifest
    cache_dir: Path | None = None
    offline: bool = False
    rehash: bool = False
    progress: bool = False
    probe_timeout: float = 5.0
    download_timeout: float = 10.0
    lock_timeout: float = 6 * 3600.0
    observer: Observer = field(default_factory=NullObserver)
    _probes: dict[tuple[str, str, str, str], _Probe] = field(default_factory=dict, repr=False)
    _rehashed: set[str] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        if self.cache_dir is None:
            self.cache_dir = self.manifest.cache_dir

    # ------------------------------------------------------------------ paths
    @property
    def cache(self) -> Path:
        assert self.cache_dir is not None
        return self.cache_dir

    @property
    def endpoint(self) -> str:
        return resolve_endpoint(self.manifest)

    def snapshot_path(self, spec: CheckpointSpec, commit: str) -> Path:
        """Where huggingface_hub puts the file for ``commit``."""
        return self.cache / _repo_folder(spec) / "snapshots" / commit / spec.hf_path

    def _ref_path(self, spec: CheckpointSpec, revision: str) -> Path:
        return self.cache / _repo_folder(spec) / "refs" / revision

    def _stamp_path(self, spec: CheckpointSpec, blob: Path) -> Path:
        return self.cache / _META_DIR / "stamps" / _repo_folder(spec) / f"{blob.name}.json"

    def _lock_path(self, spec: CheckpointSpec) -> Path:
        key = hashlib.sha256(f"{spec.repo_type}\0{spec.repo}\0{spec.hf_path}".encode()).hexdigest()[
            :24
        ]
        return self.cache / _META_DIR / "locks" / f"{key}.lock"

    def cached_commit(self, spec: CheckpointSpec) -> str | None:
        """The commit a branch revision pointed at when last resolved (no network)."""
        if is_pinned(spec.revision):
            return spec.revision
        try:
            commit = self._ref_path(spec, spec.revision).read_text().strip()
        except OSError:
            return None
        return commit if is_pinned(commit) else None

    def cached_path(self, spec: CheckpointSpec) -> Path | None:
        """The local file for ``spec`` if one is cached (unverified), else None."""
        commit = self.cached_commit(spec)
        if commit is None:
            return None
        path = self.snapshot_path(spec, commit)
        return path if path.exists() else None

    def is_trusted(self, spec: CheckpointSpec) -> bool:
        """Cached and its stamp vouches for the expected bytes (cheap: stat only)."""
        path = self.cached_path(spec)
        return path is not None and self._trusted_stamp(spec, path) is not None

    # ------------------------------------------------------------------ probe
    def describe(self, spec: CheckpointSpec, revision: str | None = None) -> str:
        return (
            f"repo '{spec.repo}' ({spec.repo_type}), path '{spec.hf_path}', "
            f"revision '{revision or spec.revision}', endpoint {self.endpoint}"
        )

    def probe(self, spec: CheckpointSpec) -> str:
        """Resolve ``spec.revision`` to a commit with one bounded request per run.

        Raises ``CheckpointDownloadError`` (``unreachable=True`` when the hub did not
        answer). The answer is remembered for this store, failures included, so a
        dead hub costs one timeout per run, not one per file.
        """
        endpoint = self.endpoint
        key = (endpoint, spec.repo_type, spec.repo, spec.revision)
        cached = self._probes.get(key)
        if cached is None:
            dead = self._probes.get((endpoint, "", "", ""))
            cached = dead if dead is not None else self._do_probe(spec, endpoint)
            self._probes[key] = cached
            if cached.error is not None and cached.error.unreachable:
                self._probes[(endpoint, "", "", "")] = cached
        if cached.error is not None:
            raise cached.error
        assert cached.commit is not None
        return cached.commit

    def export_probes(self) -> dict[str, dict[str, Any]]:
        """Probe every branch revision the manifest uses; JSON-able results.

        The xdist controller calls this once and hands the answers to its workers
        (``import_probes``), so N workers cost one probe per repo, and a dead hub
        costs one timeout per run, not one per worker.
        """
        out: dict[str, dict[str, Any]] = {}
        for spec in self.manifest.entries.values():
            if is_pinned(spec.revision):
                continue
            key = "\0".join((self.endpoint, spec.repo_type, spec.repo, spec.revision))
            if key in out:
                continue
            try:
                out[key] = {"commit": self.probe(spec)}
            except CheckpointDownloadError as exc:
                out[key] = {"error": str(exc), "unreachable": exc.unreachable, "status": exc.status}
        return out

    def import_probes(self, data: dict[str, dict[str, Any]]) -> None:
        """Seed this store with probe answers another process already got."""
        for key, value in data.items():
            endpoint, repo_type, repo, revision = key.split("\0")
            if "commit" in value:
                probe = _Probe(commit=str(value["commit"]))
            else:
                probe = _Probe(
                    error=CheckpointDownloadError(
                        str(value["error"]),
                        unreachable=bool(value.get("unreachable")),
                        status=value.get("status"),
                    )
                )
            self._probes[(endpoint, repo_type, repo, revision)] = probe

    def _do_probe(self, spec: CheckpointSpec, endpoint: str) -> _Probe:
        token = hf_token()
        url = (
            f"{endpoint}/api/{spec.repo_type}s/{spec.repo}/revision/"
            f"{urllib.parse.quote(spec.revision, safe='')}"
        )
        request = urllib.request.Request(url, headers={"User-Agent": "pytest-ckpts"})
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        where = self.describe(spec)
        try:
            with urllib.request.urlopen(request, timeout=self.probe_timeout) as response:
                body = json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            code = exc.headers.get("X-Error-Code") or ""
            message = exc.headers.get("X-Error-Message") or exc.reason
            if exc.code in (401, 403):
                hint = (
                    "the hub refused the token; check HF_TOKEN or `hf auth login`"
                    if token
                    else "the repo needs authentication; set HF_TOKEN or run `hf auth login`"
                )
                cause = f"HTTP {exc.code} {code}: {hint}"
            elif exc.code == 404:
                cause = (
                    f"HTTP 404 {code or 'not found'}: {message}. Check hf_repo/repo and revision"
                )
            else:
                cause = f"HTTP {exc.code} {code}: {message}"
            return _Probe(
                error=CheckpointDownloadError(
                    redact(f"pytest-ckpts: the hub answered for {where}: {cause}", token),
                    status=exc.code,
                    unreachable=exc.code >= 500,
                )
            )
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            return _Probe(
                error=CheckpointDownloadError(
                    redact(
                        f"pytest-ckpts: hub unreachable at {endpoint} for {where}: "
                        f"{type(reason).__name__}: {reason}. Use --ckpts=offline to run from "
                        "the cache, or set HF_ENDPOINT / config.endpoint.",
                        token,
                    ),
                    unreachable=True,
                )
            )
        except ValueError as exc:  # not JSON: something else answers at that address
            return _Probe(
                error=CheckpointDownloadError(
                    f"pytest-ckpts: {endpoint} does not answer like a Hugging Face Hub "
                    f"for {where}: {exc}",
                    unreachable=True,
                )
            )
        commit = body.get("sha") if isinstance(body, dict) else None
        if not isinstance(commit, str) or not is_pinned(commit):
            return _Probe(
                error=CheckpointDownloadError(
                    f"pytest-ckpts: the hub gave no commit for {where}", unreachable=True
                )
            )
        return _Probe(commit=commit)

    # ------------------------------------------------------------------ resolve
    def resolve(self, spec: CheckpointSpec, *, force_download: bool = False) -> Checkpoint:
        """Return a verified ``Checkpoint`` for ``spec``, downloading if needed."""
        if self.offline:
            commit = self.cached_commit(spec)
            if commit is None or not self.snapshot_path(spec, commit).exists():
                raise CheckpointSkipped(
                    f"pytest-ckpts: checkpoint '{spec.name}' is not cached in {self.cache} and "
                    "the mode is offline (no downloads). Run `pytest-ckpts fetch "
                    f"{spec.name}` or use --ckpts=auto."
                )
        elif is_pinned(spec.revision):
            commit = spec.revision
        else:
            commit = self.probe(spec)

        path = self.snapshot_path(spec, commit)
        if not force_download:
            ready = self._fast_path(spec, path, commit)
            if ready is not None:
                return ready
        if self.offline:
            return self._verify_local(spec, path, commit)

        lock = FileLock(str(self._lock_path(spec)), timeout=self.lock_timeout)
        self._lock_path(spec).parent.mkdir(parents=True, exist_ok=True)
        try:
            with lock:
                return self._resolve_locked(spec, path, commit, force_download)
        except Timeout:
            raise CheckpointDownloadError(
                f"pytest-ckpts: timed out after {self.lock_timeout:.0f}s waiting for another "
                f"process to download '{spec.name}' (lock {lock.lock_file}). If no other "
                "process is running, delete the lock file.",
                name=spec.name,
            ) from None

    def _trusted_stamp(self, spec: CheckpointSpec, path: Path) -> Stamp | None:
        if self.rehash and str(path) not in self._rehashed:
            return None
        blob = path.resolve()
        stamp = read_stamp(self._stamp_path(spec, blob))
        if stamp is None or not stamp_matches(blob, stamp):
            return None
        if spec.sha256 is not None and stamp.sha256 != spec.sha256:
            return None
        return stamp

    def _fast_path(self, spec: CheckpointSpec, path: Path, commit: str) -> Checkpoint | None:
        stamp = self._trusted_stamp(spec, path)
        if stamp is None:
            return None
        return self._done(spec, path, commit, stamp, "cached")

    def _done(
        self, spec: CheckpointSpec, path: Path, commit: str, stamp: Stamp, source: str
    ) -> Checkpoint:
        ckpt = Checkpoint(
            name=spec.name,
            path=path,
            sha256=stamp.sha256,
            size=stamp.size,
            revision=commit,
            description=spec.description,
            verified=spec.sha256 is not None,
            source=source,
        )
        self.observer.on_resolve(spec, ckpt)
        return ckpt

    def _hash_and_stamp(
        self, spec: CheckpointSpec, path: Path, streamed: str | None = None
    ) -> tuple[bool, str, Stamp]:
        blob = path.resolve()
        started = time.perf_counter()
        actual = streamed if streamed is not None else calculate_sha256(blob)
        ok = spec.sha256 is None or actual == spec.sha256
        self.observer.on_verify(spec, path, actual, ok, time.perf_counter() - started)
        stamp = Stamp.of(blob, actual)
        if ok:
            write_stamp(self._stamp_path(spec, blob), stamp)
            self._rehashed.add(str(path))
        return ok, actual, stamp

    def _mismatch(
        self, spec: CheckpointSpec, path: Path, actual: str, why: str
    ) -> ChecksumMismatchError:
        return ChecksumMismatchError(
            f"pytest-ckpts: Checksum mismatch for checkpoint '{spec.name}' ({why})\n"
            f"  file:     {path}\n"
            f"  source:   {self.describe(spec)}\n"
            f"  expected: {spec.sha256}\n"
            f"  actual:   {actual}\n"
            "A checksum mismatch is never skipped. If the new file is intended, update "
            "sha256 in the manifest (`pytest-ckpts lock` fills it in); otherwise the "
            "upstream file changed or the download is corrupted.",
            name=spec.name,
            path=path,
            expected=spec.sha256,
            actual=actual,
        )

    def _verify_local(self, spec: CheckpointSpec, path: Path, commit: str) -> Checkpoint:
        ok, actual, stamp = self._hash_and_stamp(spec, path)
        if not ok:
            raise self._mismatch(spec, path, actual, "cached copy; offline, not re-downloaded")
        return self._done(spec, path, commit, stamp, "cached")

    def _resolve_locked(
        self, spec: CheckpointSpec, path: Path, commit: str, force_download: bool
    ) -> Checkpoint:
        if not force_download:
            # Another process may have finished while we waited for the lock.
            ready = self._fast_path(spec, path, commit)
            if ready is not None:
                return ready
            if path.exists():
                ok, actual, stamp = self._hash_and_stamp(spec, path)
                if ok:
                    self._write_ref(spec, commit)
                    return self._done(spec, path, commit, stamp, "cached")
                logger.warning(
                    "pytest-ckpts: cached copy of '%s' is corrupted (sha256 %s, expected %s); "
                    "downloading it again",
                    spec.name,
                    actual,
                    spec.sha256,
                )
        streamed = self._download(spec, commit)
        ok, actual, stamp = self._hash_and_stamp(spec, path, streamed)
        if not ok and streamed is not None:  # never report a mismatch on the fast path alone
            ok, actual, stamp = self._hash_and_stamp(spec, path)
        if not ok:
            self._discard(path)
            raise self._mismatch(spec, path, actual, "freshly downloaded; the file was deleted")
        self._write_ref(spec, commit)
        return self._done(spec, path, commit, stamp, "downloaded")

    def _write_ref(self, spec: CheckpointSpec, commit: str) -> None:
        if is_pinned(spec.revision):
            return
        ref = self._ref_path(spec, spec.revision)
        try:
            if ref.read_text().strip() == commit:
                return
        except OSError:
            pass
        atomic_write_text(ref, commit)

    @staticmethod
    def _discard(path: Path) -> None:
        blob = path.resolve()
        for p in (path, blob):
            try:
                p.unlink()
            except FileNotFoundError:
                pass

    def _download(self, spec: CheckpointSpec, commit: str) -> str | None:
        """Download through huggingface_hub; return the sha256 hashed while it streamed.

        Hashing runs in a thread that follows the client's temp file as it grows, so
        verification overlaps the transfer instead of adding a second pass over a
        multi-GB file. None when that was not possible (then the caller hashes).
        """
        hf = _prepare_hf()
        token = hf_token()
        where = self.describe(spec, commit if commit != spec.revision else None)
        hasher = _StreamHasher()
        kwargs: dict[str, Any] = {"tqdm_class": _hashing_tqdm(hasher, silent=not self.progress)}
        started = time.perf_counter()
        force = self.snapshot_path(spec, commit).exists()  # only to replace a bad copy
        try:
            downloaded = hf.hf_hub_download(
                repo_id=spec.repo,
                filename=spec.hf_path,
                repo_type=spec.repo_type,
                revision=commit,
                cache_dir=str(self.cache),
                endpoint=self.endpoint,
                token=token or False,
                force_download=force,
                etag_timeout=self.download_timeout,
                **kwargs,
            )
        except Exception as raised:
            hasher.finish()
            exc = _root_cause(raised)
            raise self._classify(spec, where, exc, token) from None
        seconds = time.perf_counter() - started
        got = Path(downloaded)
        size = got.stat().st_size
        digest = hasher.finish()
        self.observer.on_download(spec, got, size, seconds)
        logger.info("pytest-ckpts: downloaded '%s' (%d bytes in %.2fs)", spec.name, size, seconds)
        return digest if digest is not None and hasher.hashed == size else None

    def _classify(
        self, spec: CheckpointSpec, where: str, exc: BaseException, token: str | None
    ) -> CheckpointDownloadError:
        """Turn whatever the client raised into one error that says what to fix."""
        from huggingface_hub import errors as hf_errors

        status = _status(exc)
        if isinstance(exc, (hf_errors.GatedRepoError, hf_errors.RepositoryNotFoundError)):
            if status in (401, 403) or not token:
                hint = "set HF_TOKEN (or run `hf auth login`) with read access to the repo"
            else:
                hint = "check hf_repo/repo in the manifest and that HF_TOKEN can read it"
        elif status in (401, 403):  # a token the hub refused (no error code)
            hint = "the hub refused the token; check HF_TOKEN or run `hf auth login`"
        elif isinstance(exc, hf_errors.RevisionNotFoundError):
            hint = "check the revision in the manifest"
        elif isinstance(exc, hf_errors.EntryNotFoundError):
            hint = "check hf_path in the manifest"
        else:  # the client does not wrap transport errors (httpx2.*)
            hint = "the transfer failed; re-run to retry"
        return self._download_error(spec, where, exc, token, hint, status)

    @staticmethod
    def _download_error(
        spec: CheckpointSpec,
        where: str,
        exc: BaseException,
        token: str | None,
        hint: str,
        status: int | None,
    ) -> CheckpointDownloadError:
        cause = str(exc).splitlines()[0] if str(exc) else ""
        return CheckpointDownloadError(
            redact(
                f"pytest-ckpts: failed to download checkpoint '{spec.name}' from {where}: "
                f"{type(exc).__name__}: {cause} ({hint})",
                token,
            ),
            name=spec.name,
            status=status,
        )


def _root_cause(exc: BaseException) -> BaseException:
    """The most specific hub error in the chain (the client wraps some in ValueError)."""
    from huggingface_hub import errors as hf_errors

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (hf_errors.HfHubHTTPError, hf_errors.EntryNotFoundError)):
            return seen
        seen = seen.__cause__ or seen.__context__
    return exc


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    return code if isinstance(code, int) else None


class _StreamHasher:
    """Hashes a file in a background thread while another thread is still writing it."""

    def __init__(self) -> None:
        self.hashed = 0
        self.valid = True
        self._digest = hashlib.sha256()
        self._done = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def follow(self, path: str) -> None:
        if self._thread is not None:  # a second transfer attempt: bytes may be rewritten
            self.valid = False
            return
        self._thread = threading.Thread(target=self._run, args=(path,), daemon=True)
        self._thread.start()

    def notify(self, n: float) -> None:
        if n < 0:  # the client rewound its temp file for a retry
            self.valid = False
        self._wake.set()

    def _run(self, path: str) -> None:
        try:
            with open(path, "rb") as f:
                while True:
                    chunk = f.read(4 * 1024 * 1024)
                    if chunk:
                        self._digest.update(chunk)
                        self.hashed += len(chunk)
                    elif self._done.is_set():
                        return
                    else:
                        self._wake.wait(0.02)
                        self._wake.clear()
        except OSError:
            self.valid = False

    def finish(self) -> str | None:
        """Stop following (after the writer is done); the digest if it can be trusted."""
        self._done.set()
        self._wake.set()
        if self._thread is None:
            return None
        self._thread.join()
        return self._digest.hexdigest() if self.valid else None


def _hashing_tqdm(hasher: _StreamHasher, *, silent: bool) -> type[Any]:
    """A tqdm class for ``hf_hub_download`` that feeds ``hasher`` (and optionally draws).

    The client hands its temp file to ``http_get`` but not to the progress bar, so the
    bar finds it in that caller's frame. If the client's internals ever change, the
    lookup finds nothing and the store falls back to hashing after the download.
    """
    import importlib

    # `huggingface_hub.utils.tqdm` the attribute is the class; we want the module's.
    base: Any = importlib.import_module("huggingface_hub.utils.tqdm").tqdm

    class _HashingTqdm(base):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            if silent:
                kwargs["disable"] = True
            super().__init__(*args, **kwargs)
            frame = sys._getframe(1)
            while frame is not None:
                temp_file: Any = frame.f_locals.get("temp_file")
                if frame.f_code.co_name == "http_get" and hasattr(temp_file, "name"):
                    hasher.follow(str(temp_file.name))
                    break
                frame = frame.f_back  # type: ignore[assignment]

        def update(self, n: float | None = 1) -> bool | None:
            hasher.notify(n or 0)
            result: bool | None = super().update(n)
            return result

    return _HashingTqdm
