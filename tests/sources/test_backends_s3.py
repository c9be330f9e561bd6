"""S3 mirrors on moto's standalone server (the S3 protocol of AWS, MinIO and R2), driven
through s3fs, configured by the standard AWS chain (``AWS_ENDPOINT_URL``, keys in env);
plus ``pytest-ckpts mirror push|verify`` against S3 and folders."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_ckpts import load_manifest
from pytest_ckpts.store import Store
from pytest_ckpts.testing import LocalHub
from tests.helpers import cli, make_manifest
from tests.mirror_servers import MotoS3, apply_env, free_port

A = os.urandom(300 * 1024) + b"a"
B = os.urandom(50 * 1024) + b"b"
C = os.urandom(20 * 1024) + b"c"


@pytest.fixture(scope="module")
def moto_server() -> Iterator[MotoS3]:
    server = MotoS3().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def bucket(moto_server: MotoS3, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket; the process reaches moto through the standard AWS variables."""
    apply_env(moto_server.env(), monkeypatch)
    name = f"ckpts-{uuid.uuid4().hex[:12]}"
    moto_server.filesystem().mkdir(name)
    return name


def test_push_verify_then_a_fresh_cache_fetches_from_s3_with_the_hub_down(
    project: Path, hub: LocalHub, moto_server: MotoS3, bucket: str, tmp_path: Path
) -> None:
    path = make_manifest(project, hub, {"a": A, "b": B}, pinned=True)
    url = f"s3://{bucket}/ckpts"
    code, out = cli("--manifest", str(path), "mirror", "push", url, "--jobs", "2")
    assert code == 0, out
    assert out.count("uploaded    ") == 2  # fetched from the hub first, then pushed
    fs = moto_server.filesystem()
    keys = sorted(p.rsplit("/", 1)[1] for p in fs.ls(f"{bucket}/ckpts"))
    assert keys == sorted(hashlib.sha256(d).hexdigest() for d in (A, B))
    code, out = cli("--manifest", str(path), "mirror", "push", url, "--json")
    rows = json.loads(out)["checkpoints"]
    assert (code, [r["status"] for r in rows]) == (0, ["present", "present"])
    assert cli("--manifest", str(path), "mirror", "verify", url)[0] == 0
    code, out = cli("--manifest", str(path), "mirror", "verify", url, "--quick", "--json")
    assert (code, {r["status"] for r in json.loads(out)["checkpoints"]}) == (0, {"present"})

    hub.stop()
    manifest = load_manifest(path)
    store = Store(manifest, cache_dir=tmp_path / "fresh", mirrors=(url,))
    a = store.resolve(manifest.get("a"))
    b = store.resolve(manifest.get("b"))
    assert (a.path.read_bytes(), b.path.read_bytes()) == (A, B)
    assert a.mirror == f"{url}/{{sha256}}"
    assert a.source == "downloaded"


def test_tampered_and_missing_objects_fall_through_and_verify_says_so(
    project: Path, hub: LocalHub, moto_server: MotoS3, bucket: str, tmp_path: Path
) -> None:
    path = make_manifest(project, hub, {"a": A, "b": B, "c": C}, pinned=True)
    fs = moto_server.filesystem()
    fs.pipe(f"{bucket}/{hashlib.sha256(A).hexdigest()}", b"tampered")
    fs.pipe(f"{bucket}/{hashlib.sha256(C).hexdigest()}", C)
    url = f"s3://{bucket}"
    code, out = cli("--manifest", str(path), "mirror", "verify", url)
    assert code == 1
    assert "MISMATCH    a" in out
    assert "MISSING     b" in out
    assert "ok          c" in out
    manifest = load_manifest(path)
    hub.stats.reset()
    store = Store(manifest, mirrors=(url,))
    got = {n: store.resolve(manifest.get(n)) for n in ("a", "b", "c")}
    assert {n: c.mirror is not None for n, c in got.items()} == {"a": False, "b": False, "c": True}
    assert [got[n].path.read_bytes() for n in "abc"] == [A, B, C]
    assert hub.stats.bodies_served == 2


def test_s3_endpoint_down_is_remembered_and_the_hub_serves(
    project: Path, hub: LocalHub, monkeypatch: pytest.MonkeyPatch, moto_server: MotoS3
) -> None:
    apply_env(moto_server.env(), monkeypatch)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    manifest = load_manifest(make_manifest(project, hub, {"a": A, "b": B}, pinned=True))
    store = Store(manifest, mirrors=("s3://nowhere/ckpts",))
    assert store.resolve(manifest.get("a")).mirror is None
    assert store.mirror_set is not None
    assert "unreachable" in (store.mirror_set.dead(store.mirror_set.mirrors[0]) or "")
    assert store.resolve(manifest.get("b")).mirror is None
    assert hub.stats.bodies_served == 2


@pytest.mark.skipif(importlib.util.find_spec("gcsfs") is not None, reason="gcsfs installed")
def test_missing_backend_is_one_line_naming_the_extra(
    project: Path, hub: LocalHub, capsys: pytest.CaptureFixture[str]
) -> None:
    path = make_manifest(project, hub, {"a": A}, pinned=True)
    code, _ = cli("--manifest", str(path), "mirror", "verify", "gs://bucket/ckpts")
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == (
        "pytest-ckpts: mirror gs://bucket/ckpts/{sha256} needs gcsfs: "
        "pip install 'pytest-ckpts[gcs]'"
    )
    manifest = load_manifest(path)
    ckpt = Store(manifest, mirrors=("gs://bucket/ckpts",)).resolve(manifest.get("a"))
    assert (ckpt.mirror, ckpt.path.read_bytes()) == (None, A)


def test_folder_push_is_atomic_skips_present_and_http_push_is_a_usage_error(
    project: Path, hub: LocalHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = make_manifest(project, hub, {"a": A, "b": B}, pinned=True, sha={"b": None})
    target = tmp_path / "m" / "{name}-{sha256}.bin"
    code, out = cli("--manifest", str(path), "mirror", "push", str(target))
    assert code == 0, out
    assert "skipped     b: no sha256 in the manifest" in out
    sha = hashlib.sha256(A).hexdigest()
    assert [p.name for p in (tmp_path / "m").iterdir()] == [f"a-{sha}.bin"]  # no temp left
    (tmp_path / "m" / f"a-{sha}.bin").write_bytes(b"x" * len(A))  # right size: kept
    assert "present" in cli("--manifest", str(path), "mirror", "push", str(target))[1]
    assert cli("--manifest", str(path), "mirror", "verify", str(target), "a")[0] == 1
    assert cli("--manifest", str(path), "mirror", "verify", str(target), "a", "--quick")[0] == 0
    code, _ = cli("--manifest", str(path), "mirror", "push", "https://example.invalid/x")
    assert code == 2
    assert "HTTP mirrors are read-only" in capsys.readouterr().err
