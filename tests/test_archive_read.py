"""Hostile and oversized archives: bounded memory, bounded disk, one-line refusals.

Archives here are written byte by byte (tar headers from ``tarfile.TarInfo.tobuf``,
gzip from ``gzip``/``zlib``), so a header can claim sizes its data never delivers:
the checks must fire on the header, before any data is read or written.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import tracemalloc
import zlib
from collections.abc import Mapping
from pathlib import Path

import pytest

import pytest_ckpts._tarstream as tarstream
import pytest_ckpts.archive as archive
from pytest_ckpts.archive import (
    MAX_MANIFEST_BYTES,
    ArchiveError,
    create_archive,
    extract_archive,
    verify_archive,
)
from pytest_ckpts.errors import CheckpointsError

MANIFEST = "MANIFEST.json"
MiB = 1024 * 1024


def header(name: str, size: int = 0, kind: bytes = tarfile.REGTYPE) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.type = kind
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % 512)


def member(name: str, data: bytes) -> bytes:
    return header(name, len(data)) + padded(data)


def manifest(files: Mapping[str, bytes | int]) -> bytes:
    """A MANIFEST.json listing ``files``: content, or just a size (with a made-up hash)."""
    listed = [
        {
            "path": path,
            "size": len(v) if isinstance(v, bytes) else v,
            "sha256": hashlib.sha256(v).hexdigest() if isinstance(v, bytes) else "0" * 64,
        }
        for path, v in sorted(files.items())
    ]
    doc = {"format_version": 1, "file_count": len(listed), "files": listed}
    return json.dumps(doc).encode()


def write_gz(path: Path, *parts: bytes, end: bool = True) -> Path:
    """gzip the raw tar ``parts`` (plus the end-of-archive blocks unless ``end=False``)."""
    path.write_bytes(gzip.compress(b"".join(parts) + (bytes(1024) if end else b""), mtime=0))
    return path


def small_tree(root: Path) -> Path:
    (root / "model").mkdir(parents=True)
    (root / "model" / "w.pt").write_bytes(bytes(range(256)) * 400)
    (root / "config.json").write_text('{"lr": 0.1}\n')
    return root


def tree(root: Path) -> dict[str, bytes | None]:
    return {
        p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


def test_archive_error_lives_in_errors_and_is_still_exported() -> None:
    from pytest_ckpts import errors

    assert archive.ArchiveError is errors.ArchiveError
    assert issubclass(ArchiveError, CheckpointsError)
    assert issubclass(ArchiveError, ValueError)


# ------------------------------------------------------------------ hostile members


def hostile(
    tmp_path: Path, member: tarfile.TarInfo, data: bytes = b"x", *, manifest_first: bool = False
) -> Path:
    """An archive whose MANIFEST.json lists the hostile member, so only the member check can stop it."""
    path = tmp_path / "evil.tar.gz"
    listed = [{"path": member.name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}]
    manifest = json.dumps({"format_version": 1, "file_count": 1, "files": listed}).encode()
    info = tarfile.TarInfo(MANIFEST)
    info.size = len(manifest)
    with tarfile.open(path, "w:gz") as tar:
        if manifest_first:
            tar.addfile(info, io.BytesIO(manifest))
        if member.isfile():
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
        else:
            tar.addfile(member)
        if not manifest_first:
            tar.addfile(info, io.BytesIO(manifest))
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (_member("/etc/evil"), "absolute path"),
        (_member("C:/evil"), "absolute path"),
        (_member("../evil"), "'..'"),
        (_member("a/../../evil"), "'..'"),
        (_member("link", tarfile.SYMTYPE, "/etc/passwd"), "link"),
        (_member("inside", tarfile.SYMTYPE, "model/w.pt"), "link"),
        (_member("hard", tarfile.LNKTYPE, "/etc/passwd"), "link"),
        (_member("dev", tarfile.CHRTYPE), "special member"),
        (_member("fifo", tarfile.FIFOTYPE), "special member"),
    ],
    ids=[
        "absolute",
        "drive",
        "dotdot",
        "nested-dotdot",
        "symlink-out",
        "symlink-in",
        "hardlink",
        "device",
        "fifo",
    ],
)
@pytest.mark.parametrize("manifest_first", [True, False], ids=["manifest-first", "manifest-last"])
def test_hostile_archives_are_refused_leaving_nothing(
    tmp_path: Path, member: tarfile.TarInfo, message: str, manifest_first: bool
) -> None:
    evil = hostile(tmp_path, member, manifest_first=manifest_first)
    dest = tmp_path / "dest"
    with pytest.raises(ArchiveError, match=message):
        extract_archive(evil, dest)
    assert not dest.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["evil.tar.gz"]  # no staging left
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ArchiveError):
        extract_archive(evil, empty)
    assert list(empty.iterdir()) == []
    with pytest.raises(ArchiveError, match=message):
        verify_archive(evil)


def test_wrong_hash_in_manifest_is_refused(tmp_path: Path) -> None:
    evil = hostile(tmp_path, _member("w.pt"), b"real")
    text = evil.read_bytes()
    with tarfile.open(evil) as tar:
        manifest = json.loads(tar.extractfile(MANIFEST).read())  # type: ignore[union-attr]
    manifest["files"][0]["sha256"] = "0" * 64
    data = json.dumps(manifest).encode()
    with tarfile.open(evil, "w:gz") as tar:
        info = _member("w.pt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"real"))
        m = tarfile.TarInfo(MANIFEST)
        m.size = len(data)
        tar.addfile(m, io.BytesIO(data))
    assert evil.read_bytes() != text
    with pytest.raises(ArchiveError, match=r"w\.pt: expected"):
        extract_archive(evil, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_refused_extract_removes_parents_it_created(tmp_path: Path) -> None:
    evil = hostile(tmp_path, _member("../evil"))
    with pytest.raises(ArchiveError, match=r"'\.\.'"):
        extract_archive(evil, tmp_path / "new" / "deeper" / "dest")
    assert [p.name for p in tmp_path.iterdir()] == ["evil.tar.gz"]
    good = create_archive(small_tree(tmp_path / "ckpt"), tmp_path / "a.tar.gz")
    assert tree(extract_archive(good, tmp_path / "new" / "dest")) == tree(tmp_path / "ckpt")


# ------------------------------------------------------------------ oversized MANIFEST.json


def test_manifest_header_over_64_mib_is_refused_before_reading(tmp_path: Path) -> None:
    """The header alone claims 65 MiB; only 1 KiB follows, so reading it would fail otherwise."""
    assert 64 * MiB == MAX_MANIFEST_BYTES
    evil = write_gz(tmp_path / "evil.tar.gz", header(MANIFEST, 65 * MiB), b" " * 1024, end=False)
    with pytest.raises(ArchiveError) as verified:
        verify_archive(evil)
    msg = str(verified.value)
    assert f"{MANIFEST} is {65 * MiB} bytes, over the 64 MiB limit" in msg
    assert str(evil) in msg
    assert "\n" not in msg
    with pytest.raises(ArchiveError, match="over the 64 MiB limit"):
        extract_archive(evil, tmp_path / "dest")
    assert leftovers(tmp_path) == ["evil.tar.gz"]


def test_manifest_at_exactly_64_mib_is_read(tmp_path: Path) -> None:
    """The cap is inclusive: a 64 MiB header passes the size check (then fails as truncated)."""
    evil = write_gz(tmp_path / "evil.tar.gz", header(MANIFEST, 64 * MiB), b" " * 1024, end=False)
    with pytest.raises(ArchiveError, match="not a readable"):
        verify_archive(evil)


def test_whitespace_manifest_does_not_grow_memory(tmp_path: Path) -> None:
    """65 MiB of real whitespace: refused with a few blocks in memory, not the whole member."""
    evil = tmp_path / "evil.tar.gz"
    size = 65 * MiB
    comp = zlib.compressobj(1, zlib.DEFLATED, 31)
    with evil.open("wb") as f:
        f.write(comp.compress(header(MANIFEST, size)))
        spaces = b" " * MiB
        for _ in range(size // MiB):
            f.write(comp.compress(spaces))
        f.write(comp.compress(bytes(1024)))
        f.write(comp.flush())
    tracemalloc.start()
    try:
        with pytest.raises(ArchiveError, match="over the 64 MiB limit"):
            verify_archive(evil)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 40 * MiB


def test_huge_pax_header_is_refused(tmp_path: Path) -> None:
    """``tarfile`` would read a PAX header into memory whole, whatever size it claims."""
    evil = write_gz(
        tmp_path / "evil.tar.gz", header("././@PaxHeader", 2 * MiB, tarfile.XHDTYPE), end=False
    )
    with pytest.raises(ArchiveError, match=r"not a readable .*extended header"):
        verify_archive(evil)


def pax(records: dict[str, str]) -> bytes:
    body = b""
    for key, value in records.items():
        rec = f" {key}={value}\n".encode()
        n = len(rec) + len(str(len(rec)))
        n = len(rec) + len(str(n))
        body += str(n).encode() + rec
    return header("././@PaxHeader", len(body), tarfile.XHDTYPE) + padded(body)


def test_malformed_pax_numbers_are_refused_in_one_line(tmp_path: Path) -> None:
    evil = write_gz(
        tmp_path / "evil.tar.gz", pax({"GNU.sparse.map": "1,x"}), member("w.bin", b"data")
    )
    with pytest.raises(ArchiveError, match="not a readable") as refused:
        verify_archive(evil)
    assert "\n" not in str(refused.value)


def test_malformed_manifest_entry_is_quoted_short(tmp_path: Path) -> None:
    doc = {"format_version": 1, "file_count": 1, "files": [{"path": "p" * 100_000}]}
    evil = write_gz(tmp_path / "evil.tar.gz", member(MANIFEST, json.dumps(doc).encode()))
    with pytest.raises(ArchiveError, match="malformed entry") as refused:
        verify_archive(evil)
    assert len(str(refused.value)) < 600


# ------------------------------------------------------------------ disk space and max_bytes


def test_extract_max_bytes(tmp_path: Path) -> None:
    good = create_archive(small_tree(tmp_path / "ckpt"), tmp_path / "a.tar.gz")
    total = verify_archive(good)["total_size"]
    dest = tmp_path / "dest"
    with pytest.raises(ArchiveError) as refused:
        extract_archive(good, dest, max_bytes=total - 1)
    msg = str(refused.value)
    assert f"{MANIFEST} declares {total} bytes" in msg
    assert f"max_bytes={total - 1}" in msg
    assert str(good) in msg
    assert "\n" not in msg
    assert leftovers(tmp_path) == ["a.tar.gz", "ckpt"]
    assert (extract_archive(good, dest, max_bytes=total) / "model" / "w.pt").stat().st_size


@pytest.mark.parametrize("bad", [-1, 1.5, "10"])
def test_extract_bad_max_bytes(tmp_path: Path, bad: object) -> None:
    good = create_archive(small_tree(tmp_path / "ckpt"), tmp_path / "a.tar.gz")
    with pytest.raises(ArchiveError, match="max_bytes"):
        extract_archive(good, tmp_path / "dest", max_bytes=bad)  # type: ignore[arg-type]
    assert leftovers(tmp_path) == ["a.tar.gz", "ckpt"]


def test_declared_size_beyond_free_space_is_refused_before_writing(tmp_path: Path) -> None:
    """A small archive whose manifest (and header) claim more than the disk holds."""
    huge = shutil.disk_usage(tmp_path).free + 2**30
    evil = write_gz(
        tmp_path / "evil.tar.gz",
        member(MANIFEST, manifest({"w.pt": huge})),
        header("w.pt", huge),
        bytes(4096),  # the data stops here: writing would fail as truncated, not as too big
        end=False,
    )
    dest = tmp_path / "new" / "dest"
    with pytest.raises(ArchiveError) as refused:
        extract_archive(evil, dest)
    msg = str(refused.value)
    assert f"{MANIFEST} declares {huge} bytes" in msg
    assert "bytes free" in msg
    assert str(evil) in msg
    assert "\n" not in msg
    assert leftovers(tmp_path) == ["evil.tar.gz"]


def test_member_over_max_bytes_without_manifest_first_is_refused_before_writing(
    tmp_path: Path,
) -> None:
    """Manifest last: nothing declared up front, so the running total is capped instead."""
    data = b"x" * 1000
    evil = write_gz(
        tmp_path / "evil.tar.gz",
        member("a.bin", data),
        header("b.bin", 10 * MiB),  # claims far more than it carries
        bytes(512),
        end=False,
    )
    with pytest.raises(ArchiveError) as refused:
        extract_archive(evil, tmp_path / "dest", max_bytes=5000)
    msg = str(refused.value)
    assert f"member 'b.bin' brings the data to {1000 + 10 * MiB} bytes" in msg
    assert "max_bytes=5000" in msg
    assert leftovers(tmp_path) == ["evil.tar.gz"]


def test_member_bigger_than_its_manifest_entry_is_refused_at_its_header(tmp_path: Path) -> None:
    evil = write_gz(
        tmp_path / "evil.tar.gz",
        member(MANIFEST, manifest({"w.pt": b"0123456789"})),
        header("w.pt", 64 * MiB),
        bytes(512),  # truncated: only a refusal at the header gives the size message
        end=False,
    )
    for call in (lambda: verify_archive(evil), lambda: extract_archive(evil, tmp_path / "d")):
        with pytest.raises(
            ArchiveError, match=f"w.pt: expected 10 bytes, archive member has {64 * MiB}"
        ):
            call()
    assert leftovers(tmp_path) == ["evil.tar.gz"]


# ------------------------------------------------------------------ file and directory clash


@pytest.mark.parametrize("order", ["file-first", "child-first"])
def test_file_used_as_directory_is_refused_by_verify_and_extract(
    tmp_path: Path, order: str
) -> None:
    files = {"a": b"file a", "a/b": b"file a/b"}
    members = [member(name, files[name]) for name in files]
    if order == "child-first":
        members.reverse()
    evil = write_gz(tmp_path / "evil.tar.gz", member(MANIFEST, manifest(files)), *members)
    with pytest.raises(ArchiveError) as verified:
        verify_archive(evil)
    with pytest.raises(ArchiveError) as extracted:
        extract_archive(evil, tmp_path / "dest")
    assert str(verified.value) == str(extracted.value)
    msg = str(verified.value)
    assert "'a/b' lies inside 'a', which is a file in this archive" in msg
    assert str(evil) in msg
    assert "\n" not in msg
    assert leftovers(tmp_path) == ["evil.tar.gz"]


def test_directory_member_then_file_of_same_name_is_a_duplicate(tmp_path: Path) -> None:
    evil = write_gz(
        tmp_path / "evil.tar.gz",
        member(MANIFEST, manifest({"a": b"x"})),
        header("a", 0, tarfile.DIRTYPE),
        member("a", b"x"),
    )
    with pytest.raises(ArchiveError, match="duplicate member 'a'"):
        verify_archive(evil)


# ------------------------------------------------------------------ one-line messages


def test_many_problems_give_one_line(tmp_path: Path) -> None:
    listed = {f"f{i}": b"listed" for i in range(5)}
    evil = write_gz(
        tmp_path / "evil.tar.gz",
        member("extra.bin", b"!"),
        member(MANIFEST, manifest(listed)),  # last, so the mismatches surface at the end
    )
    with pytest.raises(ArchiveError) as refused:
        verify_archive(evil)
    msg = str(refused.value)
    assert "\n" not in msg
    assert msg.startswith(f"pytest-ckpts: {evil} failed verification: ")
    assert "f0: listed in MANIFEST.json but not in the archive" in msg
    assert "and 3 more" in msg
    assert "create_archive" in msg


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        ([header("/etc/evil", 1), padded(b"x")], "absolute path"),
        ([header("x", 0, tarfile.SYMTYPE)], "link member"),
        ([header("d", 0, tarfile.FIFOTYPE)], "special member"),
        ([header("s", 4, tarfile.GNUTYPE_SPARSE), padded(b"abcd")], "special member"),
    ],
    ids=["absolute", "symlink", "fifo", "gnu-sparse"],
)
def test_member_refusals_name_archive_member_and_fix(
    tmp_path: Path, parts: list[bytes], message: str
) -> None:
    evil = write_gz(tmp_path / "evil.tar.gz", *parts)
    with pytest.raises(ArchiveError, match=message) as refused:
        verify_archive(evil)
    msg = str(refused.value)
    assert "\n" not in msg
    assert str(evil) in msg


# ------------------------------------------------------------------ the streaming itself


def big_tree(root: Path) -> Path:
    """Several compression blocks' worth of data, partly compressible, across files."""
    root.mkdir()
    block = tarstream.BLOCK
    (root / "w1.bin").write_bytes(hashlib.sha256(b"seed").digest() * (block // 16))  # 2 blocks
    (root / "w2.bin").write_bytes(bytes(range(256)) * (block // 256 + 7))
    (root / "sub").mkdir()
    (root / "sub" / "tiny.json").write_text("{}\n")
    return root


def test_multi_block_archive_is_standard_and_thread_count_independent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    src = big_tree(tmp_path / "ckpt")
    outs = []
    for threads in (1, 3):
        monkeypatch.setattr(tarstream, "compress_threads", lambda n=threads: n)
        outs.append(create_archive(src, tmp_path / f"t{threads}.tar.gz"))
    assert outs[0].read_bytes() == outs[1].read_bytes()
    subprocess.run(["gzip", "-t", str(outs[0])], check=True)
    with tarfile.open(outs[0]) as tar:
        assert tar.getnames()[0] == MANIFEST
        data = tar.extractfile("w2.bin").read()  # type: ignore[union-attr]
    assert data == (src / "w2.bin").read_bytes()
    assert verify_archive(outs[0])["file_count"] == 3
    restored = extract_archive(outs[0], tmp_path / "x")
    for name in ("w1.bin", "w2.bin", "sub/tiny.json"):
        assert (restored / name).read_bytes() == (src / name).read_bytes()


def test_concatenated_gzip_members_are_read(tmp_path: Path) -> None:
    """``gzip`` allows several members in one file (``cat a.gz b.gz``); tar reads them."""
    body = b"weights" * 1000
    raw = member(MANIFEST, manifest({"w.bin": body})) + member("w.bin", body) + bytes(1024)
    cut = len(raw) // 3
    path = tmp_path / "multi.tar.gz"
    path.write_bytes(gzip.compress(raw[:cut], mtime=0) + gzip.compress(raw[cut:], mtime=0))
    assert verify_archive(path)["file_count"] == 1
    assert (extract_archive(path, tmp_path / "x") / "w.bin").read_bytes() == body


def test_corrupt_compressed_data_is_refused(tmp_path: Path) -> None:
    good = create_archive(big_tree(tmp_path / "ckpt"), tmp_path / "a.tar.gz")
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match=r"not a readable|failed verification"):
        verify_archive(bad)
    with pytest.raises(ArchiveError):
        extract_archive(bad, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_not_gzip_and_empty_files_are_refused(tmp_path: Path) -> None:
    for name, data in (("empty.tar.gz", b""), ("plain.tar.gz", b"not gzip at all" * 100)):
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ArchiveError, match="not a readable"):
            verify_archive(path)
