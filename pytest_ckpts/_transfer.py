"""File-system side of a download: temp file, chunks, blob, snapshot link, progress bar;
and the switch that stops transfers in flight.

A download writes to a partial file named after the file and the commit (not the
process), beside its blob. A transfer that is stopped (:class:`TransferStop`), hit by
Ctrl-C or killed (SIGTERM) leaves it there, and the next download of that
file at that commit, in any process, continues it with a ``Range`` request
(:func:`resume_partial`); the sha256 check at the end still decides.

Every ``OSError`` becomes one :class:`~pytest_ckpts.errors.CacheError` line that names
the checkpoint, the path and the fix (disk full: the bytes needed; read-only: a writable
cache dir). A local failure is never a skip.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .cache import Cache, contained
from .errors import CacheError, CheckpointDownloadError, Fix, TransferStopped
from .manifest import CheckpointSpec

if TYPE_CHECKING:
    import socket

    from .hub_client import HubClient

logger = logging.getLogger("pytest_ckpts")

__all__ = [
    "Downloaded",
    "TransferStop",
    "blocked_dir_error",
    "download",
    "etag_of",
    "link_snapshot",
    "make_dir",
    "open_for_write",
    "progress_bar",
    "resume_partial",
    "write_chunk",
]


class TransferStop:
    """Ends the transfers that watch it within about a second, wherever they are.

    :meth:`set` wakes retry waits (:meth:`wait`), and shuts down the socket of every
    response being read (:meth:`watch`), so a read blocked on a slow or silent hub
    returns at once; the transfer then raises :class:`TransferStopped` (:meth:`check`)
    and keeps what it wrote as a partial file.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def set(self) -> None:
        self._event.set()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            _shutdown(sock)

    def wait(self, seconds: float) -> bool:
        """Wait ``seconds``; True (at once) when stopped."""
        return self._event.wait(seconds)

    def check(self, what: str) -> None:
        if self._event.is_set():
            raise TransferStopped(f"pytest-ckpts: {what}: stopped (the session is ending)")

    @contextmanager
    def watch(self, response: Any) -> Iterator[None]:
        """While reading ``response``, :meth:`set` also shuts its connection down."""
        stream = response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        import socket  # here: a warm run never reads a response (~5 ms to import)

        if not isinstance(sock, socket.socket):
            yield
            return
        with self._lock:
            self._sockets.add(sock)
        try:
            if self._event.is_set():  # set() ran before the socket was registered
                _shutdown(sock)
            yield
        finally:
            with self._lock:
                self._sockets.discard(sock)


def _shutdown(sock: socket.socket) -> None:
    import socket

    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def resume_partial(path: Path) -> tuple[int, Any]:
    """The bytes a partial file already holds and their running sha256 (0 bytes if none).

    A partial file that cannot be read is removed: the download starts from byte 0.
    """
    digest = hashlib.sha256()
    size = 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
    except FileNotFoundError:
        return 0, digest
    except OSError:
        try:
            path.unlink()
        except OSError:
            pass
        return 0, hashlib.sha256()
    return size, digest


def etag_of(response: Any) -> str | None:
    raw = response.headers.get("X-Linked-Etag") or response.headers.get("ETag")
    if not raw:
        return None
    value = str(raw).strip()
    value = value.removeprefix("W/").strip('"')
    return value or None


def make_dir(path: Path, spec: CheckpointSpec) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise (blocked_dir_error(path, spec) or _cache_error(spec, path, exc, None)) from None


def blocked_dir_error(path: Path, spec: CheckpointSpec) -> CacheError | None:
    """The one line for a directory that cannot be made because something in the way is
    not a directory (a dangling symlink: a volume not mounted), naming that thing."""
    for p in (path, *path.parents):
        if p.is_symlink() and not p.exists():
            why = f"{p} is a dangling symlink (to {os.readlink(p)}); create its target or remove it"
        elif p.exists() and not p.is_dir():
            why = f"{p} exists but is not a directory; remove it"
        elif p.is_dir():
            return None
        else:
            continue
        return CacheError(
            f"pytest-ckpts: cannot use the cache for checkpoint '{spec.name}': {why}.",
            entry=spec.name,
            cause=why,
            fixes=(Fix.set("cache_dir"),),
        )
    return None


def _cache_error(spec: CheckpointSpec, path: Path, exc: OSError, need: int | None) -> CacheError:
    import errno

    if exc.errno == errno.ENOSPC:
        import shutil

        where = path.parent
        try:
            free = f", {shutil.disk_usage(where).free} bytes free"
        except OSError:
            free = ""
        size = f" ({need} bytes needed{free})" if need else ""
        why = f"the disk is full{size}"
        fixes: tuple[Fix, ...] = (Fix.say("free space"), Fix.set("cache_dir", why="elsewhere"))
        path = where  # name the cache directory, not the temp file that was removed
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        why = (
            "the cache is read-only; a read-only cache can serve what it holds, but "
            "downloading needs a writable one"
        )
        fixes = (Fix.set("cache_dir", why="(a writable directory)"),)
    else:
        why = f"{type(exc).__name__}: {exc.strerror or exc}"
        fixes = ()
    return CacheError(
        f"pytest-ckpts: cannot write checkpoint '{spec.name}' to {path}: {why}"
        + ("." if fixes else ""),
        entry=spec.name,
        cause=why,
        fixes=fixes,
    )


@contextmanager
def open_for_write(path: Path, mode: str, spec: CheckpointSpec) -> Iterator[Any]:
    """``path`` opened to write (its folder made if missing); every ``OSError`` one line."""
    try:
        try:
            f = open(path, mode)  # noqa: SIM115 - closed below
        except (FileNotFoundError, NotADirectoryError):  # the folder first, only when missing
            make_dir(path.parent, spec)  # (or the one line naming what is in its way)
            f = open(path, mode)  # noqa: SIM115 - closed below
    except OSError as exc:
        raise _cache_error(spec, path, exc, None) from None
    try:
        yield f
    finally:
        f.close()


def write_chunk(f: Any, chunk: bytes, path: Path, spec: CheckpointSpec, response: Any) -> None:
    try:
        f.write(chunk)
    except OSError as exc:
        raise _cache_error(spec, path, exc, _whole_size(spec, response)) from None


def _whole_size(spec: CheckpointSpec, response: Any) -> int | None:
    """The whole file's size: a failed write removes the partial file, so all of it must
    fit, not the rest a ``Range`` answer carries (its Content-Length)."""
    if spec.size is not None:
        return spec.size
    total = response.headers.get("Content-Range", "").rpartition("/")[2]
    if total.isdigit():
        return int(total)
    length = response.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def link_snapshot(link: Path, blob: Path, spec: CheckpointSpec) -> None:
    """Point the snapshot path at the blob, relative as huggingface_hub does (copy if no symlinks)."""
    target = os.path.relpath(blob, link.parent)
    try:  # no link yet (a cold cache): one symlink, itself atomic; no temp name, no rename
        os.symlink(target, link)
        return
    except (FileNotFoundError, NotADirectoryError):  # its folder first, only when missing
        make_dir(link.parent, spec)  # (or the one line naming what is in its way)
        try:
            os.symlink(target, link)
            return
        except OSError:
            pass
    except OSError:
        pass  # a link to replace, or no symlinks here: the temp name and rename below
    tmp = link.with_name(f".{link.name}.{os.getpid()}.link")
    try:
        tmp.unlink(missing_ok=True)
        try:
            os.symlink(target, tmp)
        except OSError:
            import shutil

            shutil.copyfile(blob, tmp)
        os.replace(tmp, link)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _cache_error(spec, link, exc, None) from None


@contextmanager
def progress_bar(
    show: bool, spec: CheckpointSpec, response: Any, initial: int
) -> Iterator[Callable[[int], None]]:
    if not show:
        yield lambda n: None
        return
    from huggingface_hub.utils import tqdm  # type: ignore[attr-defined]

    length = response.headers.get("Content-Length")
    total = int(length) + initial if length and length.isdigit() else None
    with tqdm(  # type: ignore[no-untyped-call]
        total=total, initial=initial, unit="B", unit_scale=True, desc=spec.name
    ) as bar:
        yield bar.update


@dataclass(frozen=True)
class Downloaded:
    """One finished transfer: the snapshot path, its sha256 (hashed while it streamed)."""

    path: Path
    sha256: str
    nbytes: int  # bytes transferred by this call (resumed parts counted once)
    seconds: float
    resumed: bool = False  # a cut was continued with a Range request
    blob: Path | None = None  # where ``path`` links to (known here: no realpath needed)


def download(
    client: HubClient,  # the client's retry loop and GET: one module, two files
    spec: CheckpointSpec,
    commit: str,
    cache: Cache,
    on_bytes: Callable[[int], None] | None = None,
) -> Downloaded:
    """Stream ``spec`` at ``commit`` into ``cache`` (huggingface_hub's layout).

    The body goes to a partial file beside the blobs, hashed as it arrives; a cut is
    resumed with a ``Range`` request when the hub allows it, and so is a partial file an
    earlier download left (stopped, out of budget, killed). The blob is renamed into
    place only when complete, so the cache holds whole files or nothing; the partial
    file is kept only when the transfer is stopped from outside (a stop, Ctrl-C, or a
    kill that leaves no chance to remove it), removed when the download fails.
    """

    what = f"failed to download checkpoint '{spec.name}' from {client.describe(spec, commit)}"
    tmp = cache.incomplete_path(spec, commit)
    started = time.perf_counter()
    got, digest = resume_partial(tmp)  # its folder is made when the body is first written
    state: dict[str, Any] = {
        "got": got,
        "sent": 0,
        "digest": digest,
        "etag": None,
        "resumed": False,
    }
    if got:
        logger.info("pytest-ckpts: continuing '%s' from byte %d (%s)", spec.name, got, tmp)

    def fetch() -> None:
        byte_range = f"bytes={state['got']}-" if state["got"] else None
        with client.get_file(spec, commit, what, byte_range) as response:
            first = response.history[0] if response.history else response
            state["etag"] = state["etag"] or etag_of(first) or etag_of(response)
            if state["got"] and response.status_code != 206:  # no resume: start over
                state["got"], state["digest"] = 0, hashlib.sha256()
            state["resumed"] = state["resumed"] or response.status_code == 206
            mode = "ab" if state["got"] else "wb"
            with (
                open_for_write(tmp, mode, spec) as f,
                progress_bar(client.progress, spec, response, state["got"]) as bar,
            ):
                for chunk in response.iter_bytes():
                    if client.stop is not None:
                        client.stop.check(what)
                    write_chunk(f, chunk, tmp, spec, response)
                    state["digest"].update(chunk)
                    state["got"] += len(chunk)
                    state["sent"] += len(chunk)
                    if on_bytes is not None:
                        on_bytes(len(chunk))
                    bar(len(chunk))

    def once() -> None:
        try:
            fetch()
        except CheckpointDownloadError as exc:
            if exc.status != 416 or not state["got"]:
                raise
            # the partial file is not a prefix the hub can continue (as long as the
            # file, or longer): start over
            state["got"], state["digest"] = 0, hashlib.sha256()
            fetch()

    try:
        client.send(spec, what, once, progress=lambda: int(state["got"]))
    except (TransferStopped, KeyboardInterrupt, SystemExit):
        raise  # stopped from outside: what arrived stays for the next download
    except BaseException:  # a failure: the cache holds whole files or nothing
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # its folder could not be made: nothing was written
            pass
        raise
    sha = state["digest"].hexdigest()
    blob = contained(cache.blobs(spec), str(state["etag"] or sha), what="blob name")
    os.replace(tmp, blob)
    link = cache.snapshot(spec, commit)
    link_snapshot(link, blob, spec)
    seconds = time.perf_counter() - started
    return Downloaded(link, sha, int(state["sent"]), seconds, bool(state["resumed"]), blob)
