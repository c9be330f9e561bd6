"""The retry budget: every retry costs it, attempts are capped, RateLimit is honoured, and
only finite budgets >= 0 are accepted (issue 17, point 3).

Timing is asserted through the hub client's injectable ``sleep``/``clock``, and the
number of requests through the local hub's request log.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pytest_ckpts import CheckpointDownloadError, load_manifest
from pytest_ckpts.hub_client import HubClient
from pytest_ckpts.manifest import Manifest
from pytest_ckpts.retry import MAX_ATTEMPTS, RetryBudget, RunState, backoff_delay, parse_retry_after
from pytest_ckpts.store import Store
from pytest_ckpts.testing import LocalHub
from tests.helpers import dead_endpoint, make_manifest

pytest_plugins = ["pytester"]

DATA = os.urandom(16 * 1024) + b"ckpt"


class FakeTime:
    """A clock that only moves when slept on; records every wait. A hot loop (more
    waits than any bounded policy makes) fails the test instead of hanging it."""

    def __init__(self, limit: int = 60) -> None:
        self.now = 1000.0
        self.waits: list[float] = []
        self.limit = limit

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        assert len(self.waits) <= self.limit, f"hot retry loop: {self.waits[:10]}..."
        self.now += seconds


def store_for(manifest_path: Path, budget: float, fake: FakeTime) -> Store:
    manifest = load_manifest(manifest_path)
    client = HubClient.for_manifest(
        manifest, budget=RetryBudget(budget), sleep=fake.sleep, clock=fake.clock
    )
    return Store(manifest, hub=client)


# --------------------------------------------------------------------------- the formula


def test_backoff_has_a_floor_of_half_its_step_and_a_cap() -> None:
    import random

    rng = random.Random(7)
    for attempt in range(12):
        step = min(8.0, 0.5 * 2**attempt)
        for _ in range(50):
            wait = backoff_delay(attempt, rng=rng)
            assert step / 2 <= wait <= step
    assert backoff_delay(3, base=2.0, cap=None, rng=rng) >= 8.0  # uploads: no cap


def test_a_budget_must_be_finite_and_not_negative() -> None:
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError):
            RetryBudget(bad)


# --------------------------------------------------------------------------- Retry-After: 0


@pytest.mark.parametrize("http_date", [False, True], ids=["zero", "date-in-the-past"])
def test_retry_after_zero_still_costs_the_budget(
    project: Path, hub: LocalHub, http_date: bool
) -> None:
    """Measured on main: 805 requests in 40 s; with a 1 s budget 439 in 20 s, never ending."""
    path = make_manifest(project, hub, {"a": DATA})
    hub.throttle(10_000, retry_after=-30 if http_date else 0, http_date=http_date)
    fake = FakeTime()
    store = store_for(path, 1.0, fake)
    with pytest.raises(CheckpointDownloadError) as info:
        store.resolve(store.manifest.get("a"))
    assert sum(fake.waits) <= 1.0  # never waits past the budget
    assert fake.waits
    assert min(fake.waits) >= 0.25
    assert hub.stats.request_count <= 20
    message = str(info.value)
    assert "429" in message
    assert "retry budget" in message
    assert "asked to wait 0s (Retry-After)" in message


def test_failed_attempts_cost_their_wall_time(project: Path, hub: LocalHub) -> None:
    """A hub that takes 0.5 s to say 503: the time spent asking counts, not only the waits."""

    path = make_manifest(project, hub, {"a": DATA})
    hub.faults.delay(0.5, route="revision")
    hub.faults.fail_next(10_000, 503, route="revision")
    fake = FakeTime()
    store = store_for(path, 3.0, fake)
    store.hub.clock = time.monotonic  # real requests take real time; the waits are fake
    with pytest.raises(CheckpointDownloadError):
        store.resolve(store.manifest.get("a"))
    assert fake.waits  # a retry fits: floor (>= 0.25 s) + the >= 0.5 s the request took
    # each retry was charged its wait and the wall time of the request that failed
    assert store.hub.budget.spent >= sum(fake.waits) + 0.5 * len(fake.waits)
    assert store.hub.budget.spent <= 3.0
    assert hub.stats.count(route="revision") == len(fake.waits) + 1


def test_attempts_per_request_are_capped(project: Path, hub: LocalHub) -> None:
    path = make_manifest(project, hub, {"a": DATA})
    hub.faults.fail_next(10_000, 503, route="revision")
    fake = FakeTime()
    store = store_for(path, 10_000.0, fake)
    with pytest.raises(CheckpointDownloadError) as info:
        store.resolve(store.manifest.get("a"))
    assert hub.stats.count(route="revision") == MAX_ATTEMPTS
    assert f"gave up after {MAX_ATTEMPTS} attempts" in str(info.value)


# --------------------------------------------------------------------------- RateLimit


class _RateLimitedHub:
    """A hub of this suite's own that answers the revision lookup ``429`` with the
    Hub's ``RateLimit``/``RateLimit-Policy`` headers and no ``Retry-After`` (``limited``
    times), then the commit; file GETs get the bytes."""

    def __init__(self, data: bytes, reset: int, limited: int) -> None:
        self.commit = "c" * 40
        self.requests: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                owner.requests.append(self.path)
                if "/revision/" in self.path and owner.limited > 0:
                    owner.limited -= 1
                    body = b'{"error": "rate limited"}'
                    self.send_response(429)
                    self.send_header("RateLimit", f'"api";r=0;t={reset}')
                    self.send_header("RateLimit-Policy", '"fixed window";"api";q=500;w=300')
                elif "/revision/" in self.path:
                    body = json.dumps({"sha": owner.commit}).encode()
                    self.send_response(200)
                else:
                    body = data
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.limited = limited
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def ratelimited(request: pytest.FixtureRequest) -> Iterator[_RateLimitedHub]:
    reset, limited = request.param
    server = _RateLimitedHub(DATA, reset, limited)
    yield server
    server.close()


@pytest.mark.parametrize("ratelimited", [(3, 1)], indirect=True)
def test_ratelimit_reset_is_waited_within_the_budget(
    project: Path, ratelimited: _RateLimitedHub
) -> None:
    path = make_manifest(project, None, {"a": DATA}, endpoint=ratelimited.endpoint)
    fake = FakeTime()
    store = store_for(path, 60.0, fake)
    ckpt = store.resolve(store.manifest.get("a"))
    assert ckpt.path.read_bytes() == DATA
    assert fake.waits == [3.0]  # the reset the hub named, not a short backoff
    assert sum("/revision/" in r for r in ratelimited.requests) == 2


@pytest.mark.parametrize("ratelimited", [(3600, 10)], indirect=True)
def test_ratelimit_longer_than_the_budget_fails_at_once_saying_how_long(
    project: Path, ratelimited: _RateLimitedHub
) -> None:
    path = make_manifest(project, None, {"a": DATA}, endpoint=ratelimited.endpoint)
    fake = FakeTime()
    store = store_for(path, 60.0, fake)
    with pytest.raises(CheckpointDownloadError) as info:
        store.resolve(store.manifest.get("a"))
    assert fake.waits == []
    assert len(ratelimited.requests) == 1
    message = str(info.value)
    assert "asked to wait 3600s (RateLimit)" in message
    assert "60s left of the retry budget" in message


# --------------------------------------------------------------------------- against the local hub


CKPT = os.urandom(48 * 1024) + b"ckpt"


def waiting_store(manifest: Manifest, waits: list[float], budget: float = 60.0) -> Store:
    """A store whose hub client records each wait between attempts instead of sleeping:
    timing is asserted on what the retry policy asked for, never on the wall clock."""
    client = HubClient.for_manifest(manifest, budget=RetryBudget(budget), sleep=waits.append)
    return Store(manifest, hub=client)


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert parse_retry_after("7") == 7.0
    now = 1_700_000_000.0
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:30 GMT", now=now) == pytest.approx(10.0)
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:00 GMT", now=now) == 0.0  # in the past
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_transient_5xx_on_the_revision_lookup_is_retried(project: Path, hub: LocalHub) -> None:
    manifest = load_manifest(make_manifest(project, hub, {"a": CKPT}))
    hub.faults.fail_next(2, 503, path_contains="/api/models/")
    ckpt = Store(manifest).resolve(manifest.get("a"))
    assert ckpt.path.read_bytes() == CKPT
    assert hub.stats.count(path_contains="/api/models/") == 3


def test_transient_5xx_on_the_download_is_retried(project: Path, hub: LocalHub) -> None:
    manifest = load_manifest(make_manifest(project, hub, {"a": CKPT}, pinned=True))
    hub.faults.fail_next(1, 502, method="GET", path_contains="weights/a.ckpt")
    ckpt = Store(manifest).resolve(manifest.get("a"))
    assert ckpt.path.read_bytes() == CKPT
    assert ckpt.source == "downloaded"


def test_spent_budget_fails_at_once_naming_it(project: Path, hub: LocalHub) -> None:
    manifest = load_manifest(make_manifest(project, hub, {"a": CKPT}))
    hub.faults.fail_next(50, 503, path_contains="/api/models/")
    waits: list[float] = []
    with pytest.raises(CheckpointDownloadError) as info:
        waiting_store(manifest, waits, budget=1.0).resolve(manifest.get("a"))
    assert waits  # it waited...
    assert sum(waits) <= 1.0  # ...within the budget, then gave up
    message = str(info.value)
    assert "HTTP 503" in message
    assert "retry budget" in message
    assert info.value.kind == "transient"


def test_permanent_errors_are_never_retried(project: Path, hub: LocalHub) -> None:
    manifest = load_manifest(make_manifest(project, hub, {"a": CKPT}))
    hub.faults.fail_next(5, 404, method="GET", path_contains="weights/a.ckpt")
    with pytest.raises(CheckpointDownloadError) as info:
        Store(manifest).resolve(manifest.get("a"))
    assert info.value.kind == "permanent"
    assert hub.stats.count(method="GET", path_contains="weights/a.ckpt") == 1


def test_rate_limit_says_429_and_names_hf_token(project: Path, hub: LocalHub) -> None:
    manifest = load_manifest(make_manifest(project, hub, {"a": CKPT}))
    hub.faults.fail_next(50, 429, path_contains="/api/models/")
    with pytest.raises(CheckpointDownloadError) as info:
        Store(manifest, retry_budget=0.5).resolve(manifest.get("a"))
    assert "429" in str(info.value)
    assert "HF_TOKEN" in str(info.value)


def test_unreachable_endpoint_is_remembered_across_processes(project: Path, tmp_path: Path) -> None:
    """A second process of the run (an xdist worker) learns it from the run-state file."""
    endpoint = dead_endpoint()
    manifest = load_manifest(
        make_manifest(project, None, {"a": CKPT, "b": CKPT[::-1]}, endpoint=endpoint, pinned=False)
    )
    state = tmp_path / "run.json"
    with pytest.raises(CheckpointDownloadError):
        Store(manifest, run_state=RunState(state)).resolve(manifest.get("a"))
    assert endpoint in state.read_text()
    # the "other process": a fresh store and run-state object reading the same file
    other = Store(manifest, run_state=RunState(state))
    with pytest.raises(CheckpointDownloadError) as info:
        other.resolve(manifest.get("b"))
    assert "hub unreachable" in str(info.value)
    assert "remembered for this run" in str(info.value)
    assert "weights/b.ckpt" in str(info.value)  # names its own checkpoint


def test_pinned_revisions_on_a_dead_hub_cost_one_probe(project: Path) -> None:
    endpoint = dead_endpoint()
    files = {n: CKPT + n.encode() for n in ("a", "b", "c", "d")}
    path = make_manifest(project, None, files, endpoint=endpoint)
    text = path.read_text() + '  revision: "' + "a" * 40 + '"\n'
    path.write_text(text)
    manifest = load_manifest(path)
    waits: list[float] = []
    store = waiting_store(manifest, waits)
    for name in files:
        with pytest.raises(CheckpointDownloadError) as info:
            store.resolve(manifest.get(name))
        assert "hub unreachable" in str(info.value)
        assert "hf_path" not in str(info.value)
    assert waits == []  # a refused connection is not retried (the client alone: ~23 s per file)


def test_429_with_retry_after_is_honoured_on_the_revision_lookup(
    project: Path, hub: LocalHub
) -> None:
    """One 429 used to skip every test of a cold run; Retry-After was ignored."""
    manifest = load_manifest(make_manifest(project, hub, {"a": CKPT}))
    hub.throttle(1, retry_after=1, route="revision")
    waits: list[float] = []
    ckpt = waiting_store(manifest, waits).resolve(manifest.get("a"))
    assert waits == [1.0]  # it waited as asked (the first backoff step is 0.25-0.5 s)
    assert ckpt.path.read_bytes() == CKPT
    assert hub.stats.count(route="revision", status=429) == 1
    assert hub.stats.count(route="revision", status=200) == 1


def test_429_with_an_http_date_on_the_download_is_honoured(project: Path, hub: LocalHub) -> None:
    manifest = load_manifest(make_manifest(project, hub, {"a": CKPT}, pinned=True))
    hub.throttle(1, retry_after=3, http_date=True, route="file")
    waits: list[float] = []
    ckpt = waiting_store(manifest, waits).resolve(manifest.get("a"))
    # the date has whole seconds: 2-3 s from now, above any first backoff step (<= 0.5 s)
    (wait,) = waits
    assert 1.0 <= wait <= 3.0
    assert ckpt.path.read_bytes() == CKPT
    assert hub.stats.count(route="file", status=429) == 1


def test_retry_after_longer_than_the_budget_fails_at_once_naming_it(
    project: Path, hub: LocalHub
) -> None:
    manifest = load_manifest(make_manifest(project, hub, {"a": CKPT}))
    hub.throttle(1, retry_after=3600, route="revision")
    waits: list[float] = []
    with pytest.raises(CheckpointDownloadError) as info:
        waiting_store(manifest, waits, budget=60).resolve(manifest.get("a"))
    assert waits == []  # it did not wait at all
    message = str(info.value)
    assert "429" in message
    assert "Retry-After" in message
    assert "3600" in message
    assert "HF_TOKEN" in message
