"""How bytes are read from (and written to) one kind of mirror.

- ``folder``: a local or mounted directory (``/mnt/ckpts/{sha256}``, ``file://...``):
  plain file I/O; writes go to a temp name beside the target, then ``os.replace``.
- ``http``: HTTP(S) through ``httpx2`` (a core dependency; fsspec's own HTTP needs
  aiohttp). Read-only (a GitHub Release is filled with ``gh release upload``). No
  ``Authorization`` header is ever added: the Hugging Face token stays with the hub.
- ``fsspec``: any other fsspec URL (``s3://`` through s3fs, extra ``[s3]``; ``gs://``
  through gcsfs, extra ``[gcs]``), imported when a mirror of that scheme is first used.

Every failure becomes one :class:`~pytest_ckpts.errors.MirrorUnavailable` whose ``kind``
(a :class:`~pytest_ckpts.errors.MirrorKind`) tells the caller what to do (``MISSING``,
``REFUSED``, ``UNREACHABLE``, ``TRANSIENT``).
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from .._fixes import foreign_line
from ..errors import MirrorKind, MirrorUnavailable, UsageFailure
from ..retry import TRANSIENT_STATUS, parse_retry_after
from .template import Mirror, Storage, redact_url

__all__ = ["CHUNK", "Backend", "backend_for"]

#: Bytes per read: large enough that hashing and writing dominate, small enough to stream.
CHUNK = 8 << 20

#: The extra that brings each fsspec protocol's implementation.
EXTRAS = {
    "s3": ("s3fs", "s3"),
    "s3a": ("s3fs", "s3"),
    "gs": ("gcsfs", "gcs"),
    "gcs": ("gcsfs", "gcs"),
}

_UNREACHABLE_NAMES = (
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ConnectionError",
    "ClientConnectorError",
    "ServerDisconnectedError",
    "NewConnectionError",
)


class Backend(Protocol):
    def stream(self, url: str) -> Any:
        """Context manager yielding an iterator of byte chunks."""

    def size(self, url: str) -> int | None:
        """Bytes of the object, None when it does not exist."""

    def download(self, url: str, dest: Path, advance: Callable[[int], None]) -> None:
        """Copy the object into ``dest`` (created), calling ``advance(n)`` after each ``n``
        bytes written in order; local write failures (disk full) stay ``OSError``."""

    def put(self, local: Path, url: str) -> None:
        """Store ``local`` at ``url`` atomically (readers see all of it or nothing)."""

    def read_range(self, url: str, begin: int, end: int) -> bytes:
        """Bytes ``[begin, end)``."""


#: Errors of the local disk, not of a mirror: they become the cache's error.
LOCAL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def _os_failure(mirror: Mirror, exc: OSError, *, root_exists: bool) -> MirrorUnavailable:
    label = mirror.label
    if isinstance(exc, (FileNotFoundError, NotADirectoryError, IsADirectoryError)):
        if root_exists:
            return MirrorUnavailable(MirrorKind.MISSING, label, "no such file")
        gone = "the folder does not exist (not mounted?)"
        return MirrorUnavailable(MirrorKind.UNREACHABLE, label, gone)
    if isinstance(exc, PermissionError):
        return MirrorUnavailable(MirrorKind.REFUSED, label, "permission denied")
    why = str(exc.strerror or exc)
    if exc.errno in (errno.ENOTCONN, errno.ESTALE, errno.EHOSTDOWN, errno.ETIMEDOUT):
        return MirrorUnavailable(MirrorKind.UNREACHABLE, label, why)
    return MirrorUnavailable(MirrorKind.TRANSIENT, label, f"{type(exc).__name__}: {why}")


class FolderBackend:
    """A directory on this machine or a mounted network share."""

    def __init__(self, mirror: Mirror) -> None:
        self.mirror = mirror
        from .template import _local_path

        self.root = Path(os.path.normpath(_local_path(mirror.prefix) or "."))

    def _fail(self, exc: OSError) -> MirrorUnavailable:
        return _os_failure(self.mirror, exc, root_exists=self.root.is_dir())

    @contextmanager
    def stream(self, url: str) -> Iterator[Iterator[bytes]]:
        try:
            f = open(url, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise self._fail(exc) from None

        def chunks() -> Iterator[bytes]:
            try:
                while chunk := f.read(CHUNK):
                    yield chunk
            except OSError as exc:
                raise self._fail(exc) from None

        try:
            yield chunks()
        finally:
            f.close()

    def download(self, url: str, dest: Path, advance: Callable[[int], None]) -> None:
        """In-kernel copy (``copy_file_range``) in large steps; the caller hashes ``dest``
        behind it, so copying and hashing overlap."""
        try:
            src = open(url, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise self._fail(exc) from None
        with src, open(dest, "wb") as out:
            kernel = hasattr(os, "copy_file_range")
            while True:
                try:
                    if kernel:
                        n = os.copy_file_range(src.fileno(), out.fileno(), 4 * CHUNK)
                    else:  # pragma: no cover - not Linux
                        chunk = src.read(CHUNK)
                        n = out.write(chunk)
                except OSError as exc:
                    if exc.errno in LOCAL_ERRNOS:
                        raise
                    if kernel and exc.errno in (errno.EXDEV, errno.ENOSYS, errno.EINVAL):
                        kernel = False  # another file system: plain reads and writes
                        continue
                    raise self._fail(exc) from None
                if not n:
                    return
                advance(n)

    def size(self, url: str) -> int | None:
        try:
            return os.stat(url).st_size
        except OSError as exc:
            failure = self._fail(exc)
            if failure.kind is MirrorKind.MISSING:
                return None
            raise failure from None

    def put(self, local: Path, url: str) -> None:
        target = Path(url)
        tmp = target.with_name(f".{target.name}.{os.getpid()}-{threading.get_ident()}.tmp")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(local, tmp)
            os.replace(tmp, target)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise self._fail(exc) from None

    def read_range(self, url: str, begin: int, end: int) -> bytes:
        try:
            with open(url, "rb") as f:
                f.seek(begin)
                return f.read(end - begin)
        except OSError as exc:
            raise self._fail(exc) from None


class HttpBackend:
    """HTTP(S): a static file server, a GitHub Release, a CDN, a presigned bucket URL."""

    def __init__(self, mirror: Mirror, *, connect_timeout: float, read_timeout: float) -> None:
        import httpx2

        self.mirror = mirror
        self._httpx = httpx2
        self._client = httpx2.Client(
            follow_redirects=True,
            timeout=httpx2.Timeout(read_timeout, connect=connect_timeout),
            headers={"Accept-Encoding": "identity", "User-Agent": "pytest-ckpts"},
        )

    def _status(self, response: Any) -> None:
        status = int(response.status_code)
        label, what = self.mirror.label, f"HTTP {status}"
        if status < 400:
            return
        if status in (404, 410):
            raise MirrorUnavailable(MirrorKind.MISSING, label, what)
        if status in TRANSIENT_STATUS or status == 408:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            raise MirrorUnavailable(MirrorKind.TRANSIENT, label, what, retry_after=retry_after)
        raise MirrorUnavailable(MirrorKind.REFUSED, label, what)

    def _exception(self, exc: Exception) -> MirrorUnavailable:
        httpx2 = self._httpx
        label, name = self.mirror.label, type(exc).__name__
        if isinstance(exc, (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.PoolTimeout)):
            return MirrorUnavailable(MirrorKind.UNREACHABLE, label, f"{name} (unreachable)")
        if isinstance(exc, httpx2.TimeoutException):
            return MirrorUnavailable(MirrorKind.TRANSIENT, label, f"{name} (no answer in time)")
        return MirrorUnavailable(MirrorKind.TRANSIENT, label, f"{name} (connection broken)")

    @contextmanager
    def _request(self, url: str, headers: dict[str, str] | None = None) -> Iterator[Any]:
        httpx2 = self._httpx
        try:
            with self._client.stream("GET", url, headers=headers) as response:
                self._status(response)
                yield response
        except httpx2.HTTPError as exc:
            raise self._exception(exc) from None

    @contextmanager
    def stream(self, url: str) -> Iterator[Iterator[bytes]]:
        with self._request(url) as response:
            length = response.headers.get("Content-Length")

            def chunks() -> Iterator[bytes]:
                got = 0
                try:
                    for chunk in response.iter_raw(CHUNK):
                        got += len(chunk)
                        yield chunk
                except self._httpx.HTTPError as exc:
                    raise self._exception(exc) from None
                if length and length.isdigit() and got != int(length):
                    cut = f"body cut at {got} bytes"
                    raise MirrorUnavailable(MirrorKind.TRANSIENT, self.mirror.label, cut)

            yield chunks()

    def download(self, url: str, dest: Path, advance: Callable[[int], None]) -> None:
        with self.stream(url) as chunks, open(dest, "wb", buffering=0) as out:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:  # unbuffered: what is reported is in the file
                    view = view[out.write(view) :]
                advance(len(chunk))

    def size(self, url: str) -> int | None:
        try:
            response = self._client.head(url)
        except self._httpx.HTTPError as exc:
            raise self._exception(exc) from None
        try:
            self._status(response)
        except MirrorUnavailable as exc:
            if exc.kind is MirrorKind.MISSING:
                return None
            raise
        length = response.headers.get("Content-Length")
        return int(length) if length and length.isdigit() else None

    def put(self, local: Path, url: str) -> None:
        raise UsageFailure(
            f"pytest-ckpts: cannot write to the HTTP mirror {self.mirror.label}: HTTP mirrors "
            "are read-only. Push to a folder and upload it (e.g. `gh release upload`), or push "
            "to s3:// or gs://."
        )

    def read_range(self, url: str, begin: int, end: int) -> bytes:
        with self._request(url, {"Range": f"bytes={begin}-{end - 1}"}) as response:
            if response.status_code != 206:
                no_ranges = "does not serve byte ranges"
                raise MirrorUnavailable(MirrorKind.REFUSED, self.mirror.label, no_ranges)
            data = b"".join(response.iter_raw())
        if len(data) != end - begin:
            raise MirrorUnavailable(MirrorKind.TRANSIENT, self.mirror.label, "short range")
        return data


class FsspecBackend:
    """Object storage and anything else fsspec knows (s3://, gs://, ...)."""

    def __init__(self, mirror: Mirror, *, connect_timeout: float, read_timeout: float) -> None:
        self.mirror = mirror
        module, extra = EXTRAS.get(mirror.protocol, (None, None))
        options: dict[str, Any] = {"skip_instance_cache": True}
        if module == "s3fs":
            options["config_kwargs"] = {
                "connect_timeout": connect_timeout,
                "read_timeout": read_timeout,
                "retries": {"max_attempts": 1},
            }
        try:
            import fsspec

            self.fs = fsspec.filesystem(mirror.protocol, **options)
        except ImportError:
            need = (
                f"pip install 'pytest-ckpts[{extra}]'"
                if extra
                else f"install the fsspec implementation of '{mirror.protocol}://'"
            )
            raise MirrorUnavailable.no_backend(mirror.label, module or "a backend", need) from None
        except ValueError as exc:
            raise MirrorUnavailable(MirrorKind.REFUSED, mirror.label, str(exc)) from None

    def _path(self, url: str) -> str:
        return str(self.fs._strip_protocol(url))

    def _fail(self, exc: BaseException) -> MirrorUnavailable:
        label = self.mirror.label
        names = {c.__name__ for c in type(exc).__mro__} | {
            type(c).__name__ for c in (exc.__cause__, exc.__context__) if c is not None
        }
        if isinstance(exc, FileNotFoundError):
            return MirrorUnavailable(MirrorKind.MISSING, label, "no such object")
        if isinstance(exc, PermissionError):
            return MirrorUnavailable(MirrorKind.REFUSED, label, "access denied (403)")
        if names & set(_UNREACHABLE_NAMES) or isinstance(exc, ConnectionRefusedError):
            gone = f"{type(exc).__name__} (unreachable)"
            return MirrorUnavailable(MirrorKind.UNREACHABLE, label, gone)
        detail = f"{type(exc).__name__}: {redact_url(foreign_line(exc)[:200])}".rstrip(": ")
        if isinstance(exc, (OSError, TimeoutError)) or "Timeout" in type(exc).__name__:
            return MirrorUnavailable(MirrorKind.TRANSIENT, label, detail)
        return MirrorUnavailable(MirrorKind.REFUSED, label, detail)

    @contextmanager
    def stream(self, url: str) -> Iterator[Iterator[bytes]]:
        try:
            f = self.fs.open(self._path(url), "rb", block_size=4 * CHUNK, cache_type="none")
        except Exception as exc:
            raise self._fail(exc) from None

        def chunks() -> Iterator[bytes]:
            try:
                while chunk := f.read(4 * CHUNK):
                    yield chunk
            except Exception as exc:
                raise self._fail(exc) from None

        try:
            yield chunks()
        finally:
            try:
                f.close()
            except Exception:
                pass

    def download(self, url: str, dest: Path, advance: Callable[[int], None]) -> None:
        """One streamed GET (s3fs: sequential, so ``advance`` follows the file's end)."""
        from fsspec.callbacks import Callback

        class Follow(Callback):  # type: ignore[misc]
            def relative_update(self, inc: int = 1) -> None:
                advance(inc)

        options = {"max_concurrency": 1} if self.mirror.protocol in ("s3", "s3a") else {}
        try:
            self.fs.get_file(self._path(url), str(dest), callback=Follow(), **options)
        except OSError as exc:
            if exc.errno in LOCAL_ERRNOS:
                raise
            raise self._fail(exc) from None
        except Exception as exc:
            raise self._fail(exc) from None

    def size(self, url: str) -> int | None:
        try:
            return int(self.fs.size(self._path(url)))
        except Exception as exc:
            failure = self._fail(exc)
            if failure.kind is MirrorKind.MISSING:
                return None
            raise failure from None

    def put(self, local: Path, url: str) -> None:
        try:
            self.fs.put_file(str(local), self._path(url))
        except Exception as exc:
            raise self._fail(exc) from None

    def read_range(self, url: str, begin: int, end: int) -> bytes:
        try:
            return bytes(self.fs.cat_file(self._path(url), start=begin, end=end))
        except Exception as exc:
            raise self._fail(exc) from None


def backend_for(mirror: Mirror, *, connect_timeout: float, read_timeout: float) -> Backend:
    """The backend of ``mirror``; ``MirrorUnavailable`` (``REFUSED``) when it is not installed."""
    if mirror.kind is Storage.FOLDER:
        return FolderBackend(mirror)
    if mirror.kind is Storage.HTTP:
        return HttpBackend(mirror, connect_timeout=connect_timeout, read_timeout=read_timeout)
    return FsspecBackend(mirror, connect_timeout=connect_timeout, read_timeout=read_timeout)
