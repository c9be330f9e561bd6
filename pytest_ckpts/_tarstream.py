"""Raw tar + gzip streaming for :mod:`pytest_ckpts.archive`, at the speed of the pipe.

``tarfile``'s own stream mode copies every byte several times in small pieces and runs
compression in the caller's thread. Archives of checkpoints are gigabytes of tensors,
so both directions here move data in big reusable blocks: writing, blocks are
deflated on a thread pool (:class:`TarGzWriter`); reading, one thread decompresses
(:class:`TarGzReader`). ISA-L, zlib and ``hashlib`` all release the GIL, so hashing
in the caller overlaps the (de)compression.

Headers are still ``tarfile``'s: :meth:`tarfile.TarInfo.tobuf` writes them and
:meth:`tarfile.TarInfo.fromtarfile` parses them (PAX and GNU long names included), so
the byte layout is exactly what ``tarfile`` and ``tar`` read and write.
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import struct
import tarfile
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

from .errors import DecompressError

logger = logging.getLogger("pytest_ckpts.archive")

#: Size of the blocks handed between threads (and of file reads when writing).
BLOCK = 4 * 1024 * 1024
_BLOCKSIZE = tarfile.BLOCKSIZE
_RECORDSIZE = tarfile.RECORDSIZE
#: What ``fromtarfile`` raises at a zero block or at the end of data (untyped in the stubs).
_END_OF_ARCHIVE: tuple[type[Exception], ...] = (
    tarfile.EOFHeaderError,  # type: ignore[attr-defined]
    tarfile.EmptyHeaderError,  # type: ignore[attr-defined]
)
#: Largest PAX / GNU long-name header accepted: they hold names and numbers, so
#: anything bigger is hostile (``tarfile`` would read it into memory whole).
MAX_EXTENDED_HEADER = 1024 * 1024


@functools.cache
def note_no_isal() -> None:
    """Say once per process that the slow fallback is in use (not per archive)."""
    logger.debug("isal not installed: using zlib/gzip (install pytest-ckpts[mlflow] for speed)")


def codec() -> tuple[Any, str]:
    """The deflate module: ``isal.isal_zlib`` when installed (optional extra), else ``zlib``.

    The import is retried per call (a sys.modules lookup) rather than cached, so the
    choice follows the environment; only the debug note is once per process. Both
    have the zlib API, so one code path serves both.
    """
    try:
        from isal import isal_zlib
    except ImportError:
        import zlib

        note_no_isal()
        return zlib, "zlib"
    return isal_zlib, "isal"


def default_level(backend: str) -> int:
    """ISA-L level 1, else zlib level 6 (what ``gzip`` and ``tar czf`` use).

    ISA-L level 1 matches zlib -6's ratio within ~5% on float32/bf16 weights, sparse
    tensors and JSON, at 14-25x the speed; levels 2-3 gain <1% and level 3 is 3x
    slower (measured with isal 1.9.1, see docs/archive.md).
    """
    return 1 if backend == "isal" else 6


def compress_threads() -> int:
    """Worker threads for compression: the CPUs this process may use, at most 4."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


class Crc32:
    """A running CRC-32 with ``hashlib``'s ``update`` (ISA-L's when installed: ~10x zlib's)."""

    def __init__(self) -> None:
        self._crc32 = codec()[0].crc32
        self.value = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self.value = self._crc32(data, self.value)


def _decompressor() -> Any:
    return codec()[0].decompressobj(31)


#: gzip member header: deflate, no flags, mtime 0, no extra flags, OS "unknown" (so
#: the bytes do not depend on the platform that wrote them).
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
_WINDOW = 32 * 1024


class TarGzWriter:
    """Writes a tar stream as one gzip member, compressing blocks on several threads.

    The caller fills big pooled buffers and only full ones are sent, so block
    boundaries depend on the tar bytes alone. Each block is deflated independently
    with the previous 32 KiB as its dictionary and ends with a sync flush (as
    ``pigz`` does): the output is one valid deflate stream whose bytes do not depend
    on the number of threads, and memory stays at a few blocks.
    """

    def __init__(self, raw: IO[bytes], level: int | None = None) -> None:
        self._raw = raw
        self._zlib, self.backend = codec()
        self._level = default_level(self.backend) if level is None else level
        threads = compress_threads()
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="ckpts-gzip")
        self._free = [bytearray(BLOCK) for _ in range(threads + 2)]
        self._pending: deque[tuple[Future[bytes], bytearray]] = deque()
        self._buf = self._free.pop()
        self._view = memoryview(self._buf)
        self._fill = 0
        self._zdict = b""
        self._crc = 0
        self.offset = 0  # bytes of tar written so far
        raw.write(_GZIP_HEADER)

    def _deflate(self, buf: bytearray, n: int, zdict: bytes, final: bool) -> bytes:
        z = self._zlib
        if zdict:
            c = z.compressobj(self._level, z.DEFLATED, -15, zdict=zdict)
        else:
            c = z.compressobj(self._level, z.DEFLATED, -15)
        end = z.Z_FINISH if final else z.Z_SYNC_FLUSH
        out: bytes = c.compress(memoryview(buf)[:n]) + c.flush(end)
        return out

    def _send(self, final: bool = False) -> None:
        data = self._view[: self._fill]
        self._crc = self._zlib.crc32(data, self._crc)
        job = self._pool.submit(self._deflate, self._buf, self._fill, self._zdict, final)
        self._pending.append((job, self._buf))
        self._zdict = bytes(data[-_WINDOW:])  # only the last block can be shorter
        while self._pending and (not self._free or self._pending[0][0].done()):
            done, buf = self._pending.popleft()
            self._raw.write(done.result())
            self._free.append(buf)
        if not final:
            self._buf = self._free.pop()
            self._view = memoryview(self._buf)
            self._fill = 0

    def write(self, data: bytes) -> None:
        pos = 0
        while pos < len(data):
            n = min(len(data) - pos, BLOCK - self._fill)
            self._view[self._fill : self._fill + n] = data[pos : pos + n]
            self._fill += n
            pos += n
            if self._fill == BLOCK:
                self._send()
        self.offset += len(data)

    def header(self, info: tarfile.TarInfo) -> None:
        self.write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))

    def copy_from(self, f: IO[bytes], size: int, digest: Any) -> int:
        """Copy up to ``size`` bytes of ``f`` (fed to ``digest.update``); return the count.

        ``readinto`` fills the pooled buffer directly: one copy from the page cache,
        and the digest overlaps the compression of earlier blocks.
        """
        left = size
        while left:
            want = min(left, BLOCK - self._fill)
            got = f.readinto(self._view[self._fill : self._fill + want])  # type: ignore[attr-defined]
            if not got:
                break
            digest.update(self._view[self._fill : self._fill + got])
            self._fill += got
            left -= got
            if self._fill == BLOCK:
                self._send()
        self.offset += size - left
        return size - left

    def pad(self) -> None:
        """Zero-fill to the next 512-byte block, after a member's data."""
        if self.offset % _BLOCKSIZE:
            self.write(bytes(_BLOCKSIZE - self.offset % _BLOCKSIZE))

    def finish(self) -> None:
        """End-of-archive blocks and record padding (as ``tarfile`` writes), then the trailer."""
        self.write(bytes(2 * _BLOCKSIZE))
        if self.offset % _RECORDSIZE:
            self.write(bytes(_RECORDSIZE - self.offset % _RECORDSIZE))
        self._send(final=True)
        while self._pending:
            done, _ = self._pending.popleft()
            self._raw.write(done.result())
        self._raw.write(struct.pack("<II", self._crc & 0xFFFFFFFF, self.offset & 0xFFFFFFFF))
        self._pool.shutdown()

    def abort(self) -> None:
        """Stop the workers (after ``finish`` or a failure); the caller discards the output."""
        self._pending.clear()
        self._pool.shutdown(cancel_futures=True)


class TarGzReader:
    """Decompressed bytes of a ``.tar.gz``, produced in big blocks by a worker thread.

    ``read`` serves ``tarfile``'s header parser; ``chunks`` hands member data out as
    zero-copy slices of the blocks, so hashing and writing them costs no extra copy.
    Each block is capped at :data:`BLOCK` bytes of output whatever the input, so a
    gzip bomb cannot grow memory past a few blocks.
    """

    def __init__(self, path: Path, queue_blocks: int = 3) -> None:
        self._file = path.open("rb")
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(queue_blocks)
        self._stop = threading.Event()
        self._block = memoryview(b"")
        self._pos = 0
        self._offset = 0
        self._done = False
        self._thread = threading.Thread(target=self._work, name="ckpts-gunzip", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        try:
            d = _decompressor()
            while not self._stop.is_set():
                if d.eof:  # a gzip member ended: another may follow (gzip allows that)
                    data = d.unused_data or self._file.read(BLOCK // 2)
                    if not data:
                        break
                    d = _decompressor()
                else:
                    data = d.unconsumed_tail or self._file.read(BLOCK // 2)
                    if not data:
                        if out := d.flush():  # output held back by the last max_length
                            self._queue.put(out)
                        if not d.eof:
                            raise EOFError("compressed data ends before the end-of-stream marker")
                        break
                if out := d.decompress(data, BLOCK):
                    self._queue.put(out)
            self._queue.put(None)
        except BaseException as exc:  # re-raised in the reading thread
            self._queue.put(exc)

    def _next(self) -> bool:
        if self._done:
            return False
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._done = True
            raise DecompressError(str(item) or type(item).__name__) from item
        if item is None:
            self._done = True
            return False
        self._block = memoryview(item)
        self._pos = 0
        return True

    def tell(self) -> int:
        return self._offset

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes (fewer only at the end); for headers, never for member data."""
        if n > MAX_EXTENDED_HEADER:
            raise tarfile.ReadError(f"extended header of {n} bytes (limit {MAX_EXTENDED_HEADER})")
        parts = []
        for chunk in self._slices(n, exact=False):
            parts.append(bytes(chunk))
        return b"".join(parts)

    def chunks(self, n: int) -> Iterator[memoryview]:
        """Exactly ``n`` bytes as slices of the blocks; EOFError if the archive ends first."""
        return self._slices(n, exact=True)

    def _slices(self, n: int, *, exact: bool) -> Iterator[memoryview]:
        while n:
            if self._pos == len(self._block) and not self._next():
                if exact:
                    raise EOFError("unexpected end of data")
                return
            take = min(n, len(self._block) - self._pos)
            piece = self._block[self._pos : self._pos + take]
            self._pos += take
            self._offset += take
            n -= take
            yield piece

    def skip_padding(self) -> None:
        """Skip to the next 512-byte boundary, after a member's data."""
        if self._offset % _BLOCKSIZE:
            for _ in self.chunks(_BLOCKSIZE - self._offset % _BLOCKSIZE):
                pass

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._file.close()


class HeaderSource:
    """The attributes :meth:`tarfile.TarInfo.fromtarfile` reads from a ``TarFile``.

    Parsing with ``tarfile``'s own code keeps every header flavour it knows (ustar,
    PAX, GNU long names) without reimplementing them; member data never passes
    through here.
    """

    encoding = "utf-8"
    errors = "surrogateescape"

    def __init__(self, reader: TarGzReader) -> None:
        self.fileobj = reader
        self.offset = 0
        self.pax_headers: dict[str, str] = {}

    def next(self) -> tarfile.TarInfo | None:
        """The next member header, or None at the end-of-archive marker."""
        self.offset = self.fileobj.tell()
        try:
            info: tarfile.TarInfo = tarfile.TarInfo.fromtarfile(self)  # type: ignore[arg-type]
        except _END_OF_ARCHIVE:
            if self.offset == 0:
                raise tarfile.ReadError("empty archive") from None
            return None
        except (tarfile.HeaderError, ValueError) as exc:  # ValueError: bad PAX sparse numbers
            raise tarfile.ReadError(str(exc) or "invalid header") from None
        return info
