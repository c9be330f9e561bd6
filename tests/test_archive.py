"""Deterministic, verifiable, safely extractable checkpoint archives (docs/archive.md)."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

import pytest_ckpts.archive as archive
from pytest_ckpts.archive import (
    ArchiveError,
    create_archive,
    extract_archive,
    verify_archive,
)


def make_tree(root: Path) -> Path:
    (root / "model").mkdir(parents=True)
    (root / "hp").mkdir()
    (root / "empty").mkdir()
    (root / "model" / "w_step_000100.pt").write_bytes(os.urandom(300_000))
    (root / "model" / "w_step_000200.pt").write_bytes(os.urandom(1000))
    (root / "hp" / "config.yaml").write_text("lr: 0.001\n")
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o755)
    return root


def tree(root: Path) -> dict[str, bytes | None]:
    return {
        p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


def test_manifest_fields(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    src = make_tree(tmp_path / "ckpt")
    out = create_archive(src, tmp_path / "a.tar.gz", trial_number=7, stage="hpo")
    manifest = verify_archive(out)
    assert manifest["format_version"] == 1
    assert manifest["created_at"] == "2023-11-14T22:13:20Z"
    assert (manifest["stage"], manifest["trial_number"]) == ("hpo", 7)
    assert manifest["file_count"] == 4
    paths = [f["path"] for f in manifest["files"]]
    assert (
        paths
        == sorted(paths)
        == ["hp/config.yaml", "model/w_step_000100.pt", "model/w_step_000200.pt", "run.sh"]
    )
    big = src / "model" / "w_step_000100.pt"
    entry = manifest["files"][1]
    assert entry == {
        "path": "model/w_step_000100.pt",
        "size": 300_000,
        "sha256": hashlib.sha256(big.read_bytes()).hexdigest(),
    }
    assert manifest["total_size"] == sum(f["size"] for f in manifest["files"])
    with tarfile.open(out) as tar:
        assert MANIFEST in tar.getnames()
        info = tar.getmember("run.sh")
        assert (info.uid, info.gid, info.uname, info.mtime, info.mode) == (
            0,
            0,
            "",
            1700000000,
            0o755,
        )


MANIFEST = "MANIFEST.json"


def test_deterministic_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    src = make_tree(tmp_path / "ckpt")
    a = create_archive(src, tmp_path / "a.tar.gz")
    os.utime(src / "hp" / "config.yaml", (1, 1))  # on-disk metadata changes...
    (src / "hp" / "config.yaml").chmod(0o600)
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(src), str(copy)], check=True)
    b = create_archive(copy, tmp_path / "b.tar.gz")
    assert a.read_bytes() == b.read_bytes()  # ...the archive does not


def test_tar_xzf_round_trip(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "ckpt")
    out = create_archive(src, tmp_path / "a.tar.gz")
    dest = tmp_path / "x"
    dest.mkdir()
    subprocess.run(["tar", "xzf", str(out), "-C", str(dest)], check=True)
    extracted = tree(dest)
    assert json.loads(extracted.pop(MANIFEST) or b"")["file_count"] == 4
    assert extracted == tree(src)


def test_extract_round_trip_all_or_nothing(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "ckpt")
    out = create_archive(src, tmp_path / "a.tar.gz")
    dest = extract_archive(out, tmp_path / "restored")
    assert tree(dest) == tree(src)
    assert os.stat(dest / "run.sh").st_mode & 0o111
    with pytest.raises(ArchiveError, match="not an empty directory"):
        extract_archive(out, dest)


def test_verify_detects_tampering(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "ckpt")
    good = create_archive(src, tmp_path / "a.tar.gz")
    members = []
    with tarfile.open(good) as tar:
        for m in tar.getmembers():
            data = tar.extractfile(m).read() if m.isfile() else None  # type: ignore[union-attr]
            if m.name == "hp/config.yaml":
                data = b"lr: 0.1\n"
                m.size = len(data)
            members.append((m, data))
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(bad, "w:gz") as tar:
        for m, data in members:
            tar.addfile(m, io.BytesIO(data) if data is not None else None)
    with pytest.raises(ArchiveError, match=r"hp/config\.yaml: expected"):
        verify_archive(bad)
    with pytest.raises(ArchiveError):
        extract_archive(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unarchivable_source_raises_and_leaves_nothing(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "ckpt")
    os.mkfifo(src / "model" / "pipe")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(ArchiveError, match="not a regular file"):
        create_archive(src, out_dir / "a.tar.gz")
    assert list(out_dir.iterdir()) == []


def test_symlink_in_source_is_refused(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "ckpt")
    (src / "latest.pt").symlink_to(src / "model" / "w_step_000100.pt")
    with pytest.raises(ArchiveError, match="symlink"):
        create_archive(src, tmp_path / "a.tar.gz")
    assert not (tmp_path / "a.tar.gz").exists()


def test_read_error_midway_leaves_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_tree(tmp_path / "ckpt")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    real_open = Path.open

    def failing_open(self: Path, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        if self.name == "w_step_000200.pt":
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(Path, "open", failing_open)
    with pytest.raises(ArchiveError, match="Permission denied"):
        create_archive(src, out_dir / "a.tar.gz")
    assert list(out_dir.iterdir()) == []


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="not a directory"):
        create_archive(tmp_path / "missing", tmp_path / "a.tar.gz")


def members(path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return tar.getmembers()


def rewrite(src: Path, dst: Path, edit) -> Path:  # type: ignore[no-untyped-def]
    """Copy archive ``src`` to ``dst``, passing each (member, data) through ``edit``."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w:gz") as tout:
        for m in tin.getmembers():
            data = tin.extractfile(m).read() if m.isfile() else None  # type: ignore[union-attr]
            for m2, d2 in edit(m, data):
                if d2 is not None:
                    m2.size = len(d2)
                tout.addfile(m2, io.BytesIO(d2) if d2 is not None else None)
    return dst


def test_layout_manifest_first_dirs_included(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "ckpt")
    out = create_archive(src, tmp_path / "a.tar.gz")
    infos = members(out)
    assert infos[0].name == MANIFEST
    assert [m.name for m in infos[1:]] == sorted(m.name for m in infos[1:])
    by_name = {m.name: m for m in infos}
    assert by_name["empty"].isdir()
    assert by_name["empty"].mode == 0o755
    assert by_name["hp/config.yaml"].mode == 0o644
    assert {m.mtime for m in infos} == {infos[0].mtime}  # one timestamp for all members
    raw = out.read_bytes()
    assert raw[:2] == b"\x1f\x8b"
    assert raw[4:8] == b"\0\0\0\0"
    assert not raw[3] & 0x08  # FLG.FNAME unset: no file name in the header
    assert out.stat().st_mode & 0o777 == 0o644


def test_without_source_date_epoch_uses_now(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    src = make_tree(tmp_path / "ckpt")
    before = int(time.time())
    out = create_archive(src, tmp_path / "a.tar.gz")
    after = int(time.time())
    mtimes = {m.mtime for m in members(out)}
    assert len(mtimes) == 1
    assert before <= mtimes.pop() <= after
    created = dt.datetime.fromisoformat(verify_archive(out)["created_at"].replace("Z", "+00:00"))
    assert created.tzinfo is not None
    assert before <= created.timestamp() <= after


@pytest.mark.parametrize("value", ["soon", "-1", "1.5"])
def test_bad_source_date_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", value)
    src = make_tree(tmp_path / "ckpt")
    with pytest.raises(ArchiveError, match="SOURCE_DATE_EPOCH"):
        create_archive(src, tmp_path / "a.tar.gz")
    assert list(tmp_path.iterdir()) == [src]


def test_zlib_fallback_without_isal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    monkeypatch.setitem(sys.modules, "isal", None)  # `from isal import ...` now fails
    src = make_tree(tmp_path / "ckpt")
    a = create_archive(src, tmp_path / "a.tar.gz")
    b = create_archive(src, tmp_path / "b.tar.gz")
    assert a.read_bytes() == b.read_bytes()
    assert verify_archive(a)["file_count"] == 4
    assert tree(extract_archive(a, tmp_path / "x")) == tree(src)


def test_empty_source_dir(tmp_path: Path) -> None:
    src = tmp_path / "ckpt"
    src.mkdir()
    out = create_archive(src, tmp_path / "a.tar.gz")
    manifest = verify_archive(out)
    assert (manifest["file_count"], manifest["total_size"], manifest["files"]) == (0, 0, [])
    assert list(extract_archive(out, tmp_path / "x").iterdir()) == []


def test_dest_replaced_atomically_and_parents_created(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "ckpt")
    dest = tmp_path / "deep" / "er" / "a.tar.gz"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"old")
    assert create_archive(str(src), str(dest)) == dest
    verify_archive(dest)
    assert [p.name for p in dest.parent.iterdir()] == ["a.tar.gz"]


def test_source_file_is_not_a_directory(tmp_path: Path) -> None:
    f = tmp_path / "w.pt"
    f.write_bytes(b"x")
    with pytest.raises(ArchiveError, match="not a directory"):
        create_archive(f, tmp_path / "a.tar.gz")
    assert not (tmp_path / "a.tar.gz").exists()


def test_source_with_own_manifest_name_is_refused(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "ckpt")
    (src / MANIFEST).write_text("{}")
    with pytest.raises(ArchiveError, match="clash"):
        create_archive(src, tmp_path / "a.tar.gz")
    assert not (tmp_path / "a.tar.gz").exists()


def test_file_changing_between_passes_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = make_tree(tmp_path / "ckpt")
    real = archive._hash_file

    def hash_then_change(entry):  # type: ignore[no-untyped-def]
        hashed = real(entry)
        if entry.rel == "hp/config.yaml":
            entry.path.write_text("lr: 0.002\n")  # same size, different bytes
        return hashed

    monkeypatch.setattr(archive, "_hash_file", hash_then_change)
    out_dir = tmp_path / "out"
    with pytest.raises(ArchiveError, match="changed while it was archived"):
        create_archive(src, out_dir / "a.tar.gz")
    assert not out_dir.exists()  # the parent it created is removed again


@pytest.mark.parametrize("change", ["shrink", "grow"])
def test_file_resized_between_passes_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    src = make_tree(tmp_path / "ckpt")
    real = archive._hash_file

    def hash_then_resize(entry):  # type: ignore[no-untyped-def]
        hashed = real(entry)
        if entry.rel == "model/w_step_000100.pt":
            data = entry.path.read_bytes()
            entry.path.write_bytes(data[:1000] if change == "shrink" else data + b"tail")
        return hashed

    monkeypatch.setattr(archive, "_hash_file", hash_then_resize)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(ArchiveError, match="changed while it was archived"):
        create_archive(src, out_dir / "a.tar.gz")
    assert list(out_dir.iterdir()) == []


def test_socket_in_source_is_refused(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "ckpt")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(src / "s"))
        with pytest.raises(ArchiveError, match="not a regular file"):
            create_archive(src, tmp_path / "a.tar.gz")
    assert not (tmp_path / "a.tar.gz").exists()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda m, d: (
                [(m, d)] + ([(tarfile.TarInfo("extra.bin"), b"!")] if m.name == MANIFEST else [])
            ),
            "extra.bin: in the archive but not listed",
        ),
        (
            lambda m, d: [] if m.name == "run.sh" else [(m, d)],
            "run.sh: listed in MANIFEST.json but not",
        ),
        (lambda m, d: [] if m.name == MANIFEST else [(m, d)], "has no MANIFEST.json"),
        (lambda m, d: [(m, d), (m, d)] if m.name == "run.sh" else [(m, d)], "duplicate member"),
        (
            lambda m, d: [(m, b"{not json" if m.name == MANIFEST else d)],
            "MANIFEST.json is not valid UTF-8 JSON",
        ),
        (
            lambda m, d: [
                (
                    m,
                    json.dumps({**json.loads(d), "file_count": 3}).encode()
                    if m.name == MANIFEST
                    else d,
                )
            ],
            "file_count",
        ),
        (
            lambda m, d: [
                (
                    m,
                    json.dumps({**json.loads(d), "files": [{"path": "run.sh"}]}).encode()
                    if m.name == MANIFEST
                    else d,
                )
            ],
            "malformed entry",
        ),
        (
            lambda m, d: [(m, d + b"more" if m.name == "run.sh" else d)],
            "run.sh: expected",
        ),
    ],
    ids=[
        "extra",
        "missing",
        "no-manifest",
        "duplicate",
        "bad-json",
        "file-count",
        "malformed",
        "size",
    ],
)
def test_verify_refuses_inconsistent_archives(tmp_path: Path, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    good = create_archive(make_tree(tmp_path / "ckpt"), tmp_path / "a.tar.gz")
    bad = rewrite(good, tmp_path / "bad.tar.gz", edit)
    with pytest.raises(ArchiveError, match=message):
        verify_archive(bad)
    with pytest.raises(ArchiveError, match=message):
        extract_archive(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar.gz", "bad.tar.gz", "ckpt"]


def test_truncated_or_missing_archive(tmp_path: Path) -> None:
    good = create_archive(make_tree(tmp_path / "ckpt"), tmp_path / "a.tar.gz")
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ArchiveError, match="not a readable"):
        extract_archive(cut, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ArchiveError, match="does not exist"):
        verify_archive(tmp_path / "nope.tar.gz")


def test_extract_refuses_non_empty_or_file_dest(tmp_path: Path) -> None:
    good = create_archive(make_tree(tmp_path / "ckpt"), tmp_path / "a.tar.gz")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(ArchiveError, match="not an empty directory"):
        extract_archive(good, busy)
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ArchiveError, match="not an empty directory"):
        extract_archive(good, afile)
    assert afile.read_text() == "x"


def test_long_and_unicode_names_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    src = tmp_path / "ckpt"
    deep = src / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    (deep / ("w" * 120 + ".safetensors")).write_bytes(b"\0" * 1000)
    (src / "gewichte_ä_日本.bin").write_bytes(b"\1" * 10)
    out = create_archive(src, tmp_path / "a.tar.gz")
    assert out.read_bytes() == create_archive(src, tmp_path / "b.tar.gz").read_bytes()
    x = tmp_path / "x"
    x.mkdir()
    subprocess.run(["tar", "xzf", str(out), "-C", str(x)], check=True)
    (x / MANIFEST).unlink()
    assert tree(x) == tree(src)
    assert tree(extract_archive(out, tmp_path / "y")) == tree(src)


def test_backslash_name_refused_on_create(tmp_path: Path) -> None:
    src = tmp_path / "ckpt"
    src.mkdir()
    (src / "a\\b.pt").write_bytes(b"x")
    with pytest.raises(ArchiveError, match="backslash"):
        create_archive(src, tmp_path / "a.tar.gz")
    assert not (tmp_path / "a.tar.gz").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads chmod 000 files anyway")
def test_unreadable_file_chmod_000(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "ckpt")
    locked = src / "hp" / "config.yaml"
    locked.chmod(0)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    try:
        with pytest.raises(ArchiveError, match="Permission denied"):
            create_archive(src, out_dir / "a.tar.gz")
    finally:
        locked.chmod(0o644)
    assert list(out_dir.iterdir()) == []


def test_dest_inside_source_is_refused(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "ckpt")
    before = tree(src)
    for dest in (src / "a.tar.gz", src / "model" / "new" / "a.tar.gz"):
        with pytest.raises(ArchiveError, match="inside the checkpoint directory"):
            create_archive(src, dest)
    assert tree(src) == before


def test_dest_is_a_directory_is_refused_before_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = make_tree(tmp_path / "ckpt")
    (tmp_path / "d.tar.gz").mkdir()
    monkeypatch.setattr(archive, "_hash_file", None)  # would crash if hashing started
    with pytest.raises(ArchiveError, match="is a directory"):
        create_archive(src, tmp_path / "d.tar.gz")
    assert list((tmp_path / "d.tar.gz").iterdir()) == []


def test_symlinked_checkpoint_dir_is_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The directory argument may be a link (e.g. ``latest -> run_42``); its contents may not."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    src = make_tree(tmp_path / "ckpt")
    (tmp_path / "latest").symlink_to(src)
    a = create_archive(tmp_path / "latest", tmp_path / "a.tar.gz")
    b = create_archive(src, tmp_path / "b.tar.gz")
    assert a.read_bytes() == b.read_bytes()


def test_extract_refuses_symlink_dest(tmp_path: Path) -> None:
    good = create_archive(make_tree(tmp_path / "ckpt"), tmp_path / "a.tar.gz")
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(ArchiveError, match="symlink"):
        extract_archive(good, tmp_path / "link")
    assert list((tmp_path / "real").iterdir()) == []


def test_root_dir_member_from_tar_cli_is_accepted(tmp_path: Path) -> None:
    """``tar czf x -C dir .`` writes a ``./`` member; it names dest itself, so it is harmless."""
    src = make_tree(tmp_path / "ckpt")
    ours = create_archive(src, tmp_path / "a.tar.gz")
    staged = tmp_path / "staged"
    staged.mkdir()
    subprocess.run(["tar", "xzf", str(ours), "-C", str(staged)], check=True)
    repacked = tmp_path / "cli.tar.gz"
    subprocess.run(["tar", "czf", str(repacked), "-C", str(staged), "."], check=True)
    assert any(m.isdir() and m.name == "." for m in members(repacked))  # tarfile strips "/"
    assert verify_archive(repacked)["file_count"] == 4
    assert tree(extract_archive(repacked, tmp_path / "x")) == tree(src)


def test_source_date_epoch_beyond_year_9999(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(10**15))
    with pytest.raises(ArchiveError, match="SOURCE_DATE_EPOCH"):
        create_archive(make_tree(tmp_path / "ckpt"), tmp_path / "a.tar.gz")


def test_isal_fallback_is_logged_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "isal", None)
    archive._note_no_isal.cache_clear()
    caplog.set_level("DEBUG", logger="pytest_ckpts.archive")
    src = make_tree(tmp_path / "ckpt")
    for name in ("a", "b"):
        verify_archive(create_archive(src, tmp_path / f"{name}.tar.gz"))
    notes = [r for r in caplog.records if "isal not installed" in r.getMessage()]
    assert len(notes) == 1
