"""The local hub's CI faults, seen by the real huggingface_hub client over HTTP.

Throttling (429 + Retry-After), 5xx by route kind, blackhole, dead ports, slow links,
tampered bytes, and the request log that lets tests count requests and bytes.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import get_session

from pytest_ckpts.testing import LocalHub

REPO = "org/models"
DATA = os.urandom(100_000)


def download(hub: LocalHub, cache: Path, path: str = "w.bin", **kwargs: object) -> Path:
    return Path(hf_hub_download(REPO, path, endpoint=hub.endpoint, cache_dir=cache, **kwargs))  # type: ignore[arg-type]


def url(hub: LocalHub, path: str = "w.bin") -> str:
    return f"{hub.endpoint}/{REPO}/resolve/main/{path}"


# --------------------------------------------------------------------------- throttling


class RecordedSleep:
    """huggingface_hub's ``time`` module as its HTTP helpers see it, whose ``sleep``
    records the wait instead of sleeping (the rest is the real ``time``)."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)


def test_throttled_head_is_retried_after_retry_after(
    hub: LocalHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub.utils import _http

    recorded = RecordedSleep()
    monkeypatch.setattr(_http, "time", recorded)  # that module's name only, not time.sleep
    hub.add_file(REPO, "w.bin", DATA)
    hub.throttle(n=2, retry_after=1, route="head")
    assert download(hub, tmp_path).read_bytes() == DATA
    # measured on huggingface_hub 2.4.0: the first failed HEAD is asked again at once,
    # the second through http_backoff, which waits Retry-After + 1 s
    assert recorded.waits == [2.0]
    assert [(r.method, r.status, r.route) for r in hub.stats.requests] == [
        ("HEAD", 429, "head"),
        ("HEAD", 429, "head"),
        ("HEAD", 200, "head"),
        ("GET", 200, "file"),
    ]


def test_throttled_file_get_is_retried(hub: LocalHub, tmp_path: Path) -> None:
    hub.add_file(REPO, "w.bin", DATA)
    hub.throttle(1, retry_after=1, route="file")
    assert download(hub, tmp_path).read_bytes() == DATA
    assert [(r.method, r.status) for r in hub.stats.requests] == [
        ("HEAD", 200),
        ("GET", 429),
        ("GET", 200),
    ]
    assert hub.stats.count(route="file", status=429) == 1


def test_retry_after_as_seconds_or_http_date(hub: LocalHub) -> None:
    hub.add_file(REPO, "w.bin", DATA)
    session = get_session()
    hub.faults.throttle(1, retry_after=7)
    hub.faults.throttle(1, retry_after=30, http_date=True)
    hub.faults.throttle(1, retry_after=None)
    first = session.get(url(hub))
    assert (first.status_code, first.headers["Retry-After"]) == (429, "7")
    second = session.get(url(hub))
    when = parsedate_to_datetime(second.headers["Retry-After"]).timestamp()
    assert second.status_code == 429
    assert 25 <= when - time.time() <= 35
    third = session.get(url(hub))
    assert third.status_code == 429
    assert "Retry-After" not in third.headers
    assert session.get(url(hub)).status_code == 200


def test_throttle_only_the_revision_probe(hub: LocalHub, tmp_path: Path) -> None:
    commit = hub.add_file(REPO, "w.bin", DATA)
    hub.throttle(n=2, retry_after=3, route="revision")
    api = HfApi(endpoint=hub.endpoint)
    with pytest.raises(HfHubHTTPError) as info:
        api.model_info(REPO)
    assert info.value.response.status_code == 429
    assert info.value.response.headers["Retry-After"] == "3"
    # downloads are another route kind: untouched while the probe is throttled
    assert download(hub, tmp_path).read_bytes() == DATA
    with pytest.raises(HfHubHTTPError):
        api.model_info(REPO)
    assert api.model_info(REPO).sha == commit
    assert hub.stats.count(route="revision") == 3


def test_unknown_route_kind_is_refused(hub: LocalHub) -> None:
    with pytest.raises(ValueError, match="unknown route kind 'resolve'"):
        hub.throttle(route="resolve")
    with pytest.raises(ValueError, match="n must be a positive"):
        hub.faults.fail_next(0)


# --------------------------------------------------------------------------- 5xx


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_on_head_is_retried_and_on_get_is_not(
    hub: LocalHub, tmp_path: Path, status: int
) -> None:
    hub.add_file(REPO, "w.bin", DATA)
    hub.faults.fail_next(1, status, route="head", retry_after=0)
    assert download(hub, tmp_path / "a").read_bytes() == DATA
    assert [r.status for r in hub.stats.requests] == [status, 200, 200]
    hub.faults.fail_next(1, status, route="file")
    with pytest.raises(HfHubHTTPError) as info:
        download(hub, tmp_path / "b")
    assert info.value.response.status_code == status
    assert "Retry-After" not in info.value.response.headers


def test_default_status_is_503(hub: LocalHub) -> None:
    hub.add_file(REPO, "w.bin", DATA)
    hub.faults.fail_next(1)
    assert httpx2.get(url(hub)).status_code == 503


# --------------------------------------------------------------------------- blackhole


def test_blackhole_times_the_client_out_then_recovers(hub: LocalHub) -> None:
    hub.add_file(REPO, "w.bin", DATA)
    session = get_session()
    assert session.head(url(hub)).status_code == 200  # a kept-alive connection...
    hub.blackhole()
    started = time.monotonic()
    with pytest.raises(httpx2.TimeoutException):
        session.head(url(hub), timeout=0.5)  # ...and new ones get no answer
    with pytest.raises(httpx2.TimeoutException):
        httpx2.get(url(hub), timeout=0.5)
    assert time.monotonic() - started < 5
    assert hub.stats.count(status=0) == 2  # logged, never answered
    hub.blackhole(False)
    assert session.get(url(hub), timeout=5).content == DATA


def test_stop_does_not_hang_on_blackholed_connections() -> None:
    hub = LocalHub().start()
    hub.add_file(REPO, "w.bin", DATA)
    hub.blackhole()
    errors: list[BaseException] = []

    def wait_forever() -> None:
        try:
            httpx2.get(url(hub), timeout=60)
        except httpx2.HTTPError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=wait_forever) for _ in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while hub.stats.count(status=0) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    started = time.monotonic()
    hub.stop()
    for t in threads:
        t.join(timeout=5)
    assert time.monotonic() - started < 3
    assert len(errors) == 3
    assert all(isinstance(e, httpx2.TransportError) for e in errors)


# --------------------------------------------------------------------------- dead


def test_dead_endpoint_refuses_connections(tmp_path: Path) -> None:
    dead = LocalHub.dead_endpoint()
    started = time.monotonic()
    with pytest.raises(httpx2.ConnectError):
        get_session().get(f"{dead}/api/models/{REPO}/revision/main", timeout=5)
    with pytest.raises(httpx2.ConnectError):
        HfApi(endpoint=dead).model_info(REPO)
    assert time.monotonic() - started < 2  # refused at once, not a timeout


def test_stopped_hub_keeps_its_endpoint_which_refuses(tmp_path: Path) -> None:
    with LocalHub() as hub:
        hub.add_file(REPO, "w.bin", DATA)
        endpoint = hub.endpoint
        assert download(hub, tmp_path).read_bytes() == DATA
    assert hub.endpoint == endpoint
    assert not hub.running
    with pytest.raises(httpx2.ConnectError):
        HfApi(endpoint=endpoint).model_info(REPO)
    with pytest.raises(RuntimeError, match="not started"):
        _ = LocalHub().endpoint


# --------------------------------------------------------------------------- slow hub


def test_bandwidth_limit_paces_file_bodies(hub: LocalHub, tmp_path: Path) -> None:
    hub.add_file(REPO, "w.bin", DATA)  # 100 kB
    hub.faults.slow(bytes_per_second=250_000, route="file")
    started = time.monotonic()
    assert download(hub, tmp_path).read_bytes() == DATA
    elapsed = time.monotonic() - started
    assert 0.35 <= elapsed < 5  # ~0.4 s at 250 kB/s


def test_per_request_latency_and_parallel_bodies(hub: LocalHub, tmp_path: Path) -> None:
    hub.add_files(REPO, {"a.bin": DATA, "b.bin": DATA})
    hub.faults.slow(latency=1.0, bytes_per_second=200_000, path_contains=".bin")
    session = get_session()
    started = time.monotonic()
    assert session.head(url(hub, "a.bin")).status_code == 200
    assert time.monotonic() - started >= 1.0
    results: list[bytes] = []

    def fetch(name: str) -> None:
        results.append(httpx2.get(url(hub, name), timeout=30).content)

    threads = [threading.Thread(target=fetch, args=(n,)) for n in ("a.bin", "b.bin")]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    assert results == [DATA, DATA]
    # 1 s + 0.5 s each; in parallel (~1.5 s), not one after the other (~3 s). The gap
    # is wide so that a loaded CI machine (2 cores, -n 2) does not close it.
    assert 1.45 <= elapsed < 2.7


# --------------------------------------------------------------------------- tamper


def test_tampered_range_is_detectable(hub: LocalHub, tmp_path: Path) -> None:
    hub.add_file(REPO, "w.bin", DATA)
    hub.faults.tamper("w.bin", start=1000, end=2000)
    got = download(hub, tmp_path).read_bytes()
    assert len(got) == len(DATA)
    differ = [i for i, (a, b) in enumerate(zip(got, DATA, strict=True)) if a != b]
    assert (differ[0], differ[-1], len(differ)) == (1000, 1999, 1000)
    assert hashlib.sha256(got).hexdigest() != hashlib.sha256(DATA).hexdigest()
    # a ranged read is wrong exactly where it overlaps the tampered bytes
    part = get_session().get(url(hub), headers={"Range": "bytes=1500-2499"})
    assert part.status_code == 206
    assert part.content[:500] != DATA[1500:2000]
    assert part.content[500:] == DATA[2000:2500]
    assert get_session().get(url(hub), headers={"Range": "bytes=0-999"}).content == DATA[:1000]
    assert hub.file_bytes(REPO, "w.bin") == DATA


def test_tamper_whole_file_next_n(hub: LocalHub, tmp_path: Path) -> None:
    hub.add_file(REPO, "w.bin", DATA)
    hub.faults.tamper("w.bin", n=1)
    got = download(hub, tmp_path / "a").read_bytes()
    assert all(a != b for a, b in zip(got, DATA, strict=True))
    assert download(hub, tmp_path / "b").read_bytes() == DATA  # used up


# --------------------------------------------------------------------------- request log


def test_request_log_counts_routes_and_bytes(hub: LocalHub, tmp_path: Path) -> None:
    commit = hub.add_files(REPO, {"w.bin": DATA, "config.json": b"{}"})
    HfApi(endpoint=hub.endpoint).model_info(REPO)
    download(hub, tmp_path)
    download(hub, tmp_path, "config.json")
    download(hub, tmp_path, revision=commit)  # cached and pinned: no request
    assert hub.stats.by_route() == {"revision": 1, "head": 2, "file": 2}
    assert hub.stats.bytes_sent("file") == len(DATA) + 2
    assert hub.stats.count("GET", route="file") == 2
    assert [r.path for r in hub.stats.select(route="file")] == [
        f"/{REPO}/resolve/main/w.bin",
        f"/{REPO}/resolve/main/config.json",
    ]
    hub.stats.reset()
    assert hub.stats.by_route() == {}


def test_faults_pending_and_clear(hub: LocalHub) -> None:
    hub.throttle(2)
    hub.faults.tamper("w.bin")
    hub.blackhole()
    assert [(f.kind, f.remaining, f.status) for f in hub.faults.pending] == [
        ("fail", 2, 429),
        ("tamper", None, 503),
    ]
    hub.faults.clear()
    assert hub.faults.pending == []
    assert not hub.faults.blackholed
