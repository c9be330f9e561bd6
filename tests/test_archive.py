"""Deterministic, verifiable, safely extractable checkpoint archives (SPEC §6)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

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
    with pytest.raises(ArchiveError, match="not empty"):
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


def hostile(tmp_path: Path, member: tarfile.TarInfo, data: bytes = b"x") -> Path:
    """An archive whose MANIFEST.json lists the hostile member, so only the member check can stop it."""
    path = tmp_path / "evil.tar.gz"
    listed = [{"path": member.name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}]
    manifest = json.dumps({"format_version": 1, "file_count": 1, "files": listed}).encode()
    with tarfile.open(path, "w:gz") as tar:
        if member.isfile():
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
        else:
            tar.addfile(member)
        info = tarfile.TarInfo(MANIFEST)
        info.size = len(manifest)
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
        "dotdot",
        "nested-dotdot",
        "symlink-out",
        "symlink-in",
        "hardlink",
        "device",
        "fifo",
    ],
)
def test_hostile_archives_are_refused_leaving_nothing(
    tmp_path: Path, member: tarfile.TarInfo, message: str
) -> None:
    evil = hostile(tmp_path, member)
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
