"""HTTP(S) mirrors against a static file server started by the test on 127.0.0.1.

Faults: 403 (remembered for the run), 503 (retried within the budget), slow (read
timeout), down (nothing listening), 404 (next source, quietly); the Hugging Face token
never reaches a mirror.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from pytest_ckpts import load_manifest
from pytest_ckpts.store import Store
from pytest_ckpts.testing import LocalHub
from tests.helpers import make_manifest
from tests.mirror_servers import fill_folder, free_port, static_server

A = os.urandom(80 * 1024) + b"a"
B = os.urandom(40 * 1024) + b"b"
TOKEN = "hf_mirrortestsecret0123456789"


def test_http_mirror_serves_and_never_receives_the_token(
    project: Path, hub: LocalHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    manifest = load_manifest(make_manifest(project, hub, {"a": A, "b": B}, pinned=True))
    fill_folder(tmp_path / "www" / "ckpts", {"a": A})
    with static_server(tmp_path / "www") as server:
        url = server.url.replace("http://", "http://reader:pa55word@") + "/ckpts/{sha256}"
        store = Store(manifest, mirrors=(url,), trust_endpoint=True)
        a = store.resolve(manifest.get("a"))
        b = store.resolve(manifest.get("b"))  # not on the mirror (404): the hub, with token
    assert (a.source, a.path.read_bytes(), b.mirror) == ("downloaded", A, None)
    assert a.mirror is not None
    assert "pa55word" not in a.mirror
    assert a.mirror.startswith("http://***@127.0.0.1:")
    assert hub.stats.bodies_served == 1
    assert [r.method for r in server.requests] == ["GET", "GET"]
    for request in server.requests:
        headers = {k.lower(): v for k, v in request.headers.items()}
        assert TOKEN not in str(headers)
        assert headers.get("authorization", "").startswith("Basic ")  # the mirror's own


def test_403_is_remembered_for_the_run_and_the_hub_serves(
    project: Path, hub: LocalHub, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = load_manifest(make_manifest(project, hub, {"a": A, "b": B}, pinned=True))
    fill_folder(tmp_path / "www", {"a": A, "b": B})
    with static_server(tmp_path / "www") as server:
        server.status["*"] = 403
        store = Store(manifest, mirrors=(server.url.replace("//", "//u:topsecret@"),))
        with caplog.at_level(logging.WARNING, logger="pytest_ckpts"):
            store.resolve(manifest.get("a"))
            store.resolve(manifest.get("b"))
    assert len(server.gets()) == 1  # refused once; not asked again
    assert hub.stats.bodies_served == 2
    (line,) = [r.getMessage() for r in caplog.records]
    assert "HTTP 403" in line
    assert "not asked again" in line
    assert "topsecret" not in line


def test_503_is_retried_within_the_budget_then_the_next_source(
    project: Path, hub: LocalHub, tmp_path: Path
) -> None:
    manifest = load_manifest(make_manifest(project, hub, {"a": A, "b": B}, pinned=True))
    fill_folder(tmp_path / "www", {"a": A})
    with static_server(tmp_path / "www") as server:
        server.status["*"] = 503
        store = Store(manifest, mirrors=(server.url,), retry_budget=3.0)
        waits: list[float] = []
        assert store.mirror_set is not None
        store.mirror_set.sleep = waits.append
        assert store.resolve(manifest.get("a")).mirror is None
        attempts = len(server.gets())
        del server.status["*"]
        assert store.resolve(manifest.get("b")).mirror is None  # given up: remembered
    assert 2 <= attempts <= 5
    assert len(server.gets()) == attempts
    assert sum(waits) <= 3.0
    assert len(waits) == attempts - 1


def test_slow_mirror_times_out_and_the_hub_serves(
    project: Path, hub: LocalHub, tmp_path: Path
) -> None:
    manifest = load_manifest(make_manifest(project, hub, {"a": A}, pinned=True))
    fill_folder(tmp_path / "www", {"a": A})
    with static_server(tmp_path / "www") as server:
        server.delay = 3.0
        store = Store(manifest, mirrors=(server.url,), retry_budget=0.0)
        store.hub.read_timeout = 0.3
        ckpt = store.resolve(manifest.get("a"))
    assert (ckpt.mirror, ckpt.path.read_bytes()) == (None, A)
    assert hub.stats.bodies_served == 1


def test_mirror_down_then_404_then_one_that_has_it(
    project: Path, hub: LocalHub, tmp_path: Path
) -> None:
    manifest = load_manifest(make_manifest(project, hub, {"a": A}, pinned=True))
    (tmp_path / "empty").mkdir()
    fill_folder(tmp_path / "full", {"a": A})
    down = f"http://127.0.0.1:{free_port()}/ckpts"
    with static_server(tmp_path / "empty") as empty, static_server(tmp_path / "full") as full:
        full_url = full.url
        store = Store(manifest, mirrors=(down, empty.url, full_url))
        ckpt = store.resolve(manifest.get("a"))
        assert store.mirror_set is not None
        assert store.mirror_set.dead(store.mirror_set.mirrors[0]) is not None
        assert store.mirror_set.dead(store.mirror_set.mirrors[1]) is None  # 404: not dead
    assert ckpt.mirror == f"{full_url}/{{sha256}}"
    assert hub.stats.request_count == 0
