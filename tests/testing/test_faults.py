"""The shared fault plan (pytest_ckpts.testing.faults), as the MLflow test server applies it.

The local hub's side is in tests/testing/test_hub_faults.py; here the same plan sits in front
of the real MLflow app, driven over HTTP.
"""

from __future__ import annotations

import httpx2
import pytest

from pytest_ckpts.testing import FaultPlan
from pytest_ckpts.testing.mlflow import ServerTracking


def test_unscoped_faults_hit_the_default_route_only() -> None:
    plan = FaultPlan(routes=("up", "down"), default_route="up")
    plan.fail_next(1)
    plan.delay(0.5, method="GET")  # scoped by method: any route
    assert plan.take("fail", "GET", "/x", "down") is None
    fail = plan.take("fail", "PUT", "/x", "up")
    assert fail is not None
    assert (fail.status, fail.route) == (503, "up")
    assert plan.take("fail", "PUT", "/x", "up") is None  # used up
    delay = plan.take("delay", "GET", "/y", "down")
    assert delay is not None
    assert delay.seconds == 0.5
    assert plan.take("delay", "GET", "/y", "down") is not None  # n=None: every time
    with pytest.raises(ValueError, match="unknown route kind 'sideways'"):
        plan.throttle(route="sideways")


def test_mlflow_server_throttles_artifact_uploads_with_retry_after(
    mlflow_server: ServerTracking,
) -> None:
    faults = mlflow_server.faults
    base = mlflow_server.tracking_uri
    artifact = f"{base}/api/2.0/mlflow-artifacts/artifacts/0/probe/a.txt"
    existing = f"{base}/api/2.0/mlflow-artifacts/artifacts/0/probe/b.txt"
    api = f"{base}/api/2.0/mlflow/experiments/get?experiment_id=0"
    with httpx2.Client() as client:
        assert client.put(existing, content=b"there").status_code == 200
    faults.log.reset()  # the fixture's own setup calls and the upload above
    faults.throttle(1, retry_after=4)
    faults.fail_next(1, 502, route="api", retry_after=1)
    with httpx2.Client() as client:
        assert client.get(existing).content == b"there"  # not an upload: not throttled
        throttled = client.put(artifact, content=b"hello")
        assert (throttled.status_code, throttled.headers["Retry-After"]) == (429, "4")
        failed = client.get(api)
        assert (failed.status_code, failed.headers["Retry-After"]) == (502, "1")
        assert client.put(artifact, content=b"hello").status_code == 200
        assert client.get(api).status_code == 200
        assert client.get(artifact).content == b"hello"
    assert [(m, s) for m, _, s in faults.requests] == [
        ("GET", 200),
        ("PUT", 429),
        ("GET", 502),
        ("PUT", 200),
        ("GET", 200),
        ("GET", 200),
    ]
    assert faults.log.by_route() == {"artifact": 2, "artifact-upload": 2, "api": 2}
    assert faults.count("PUT", "/mlflow-artifacts/", status=429) == 1
    assert faults.log.bytes_sent("artifact") >= len(b"hello")


def test_a_held_upload_waits_for_release_and_says_it_arrived(
    mlflow_server: ServerTracking,
) -> None:
    """``hold``: the request is caught (arrived), unanswered until released."""
    import threading

    held = mlflow_server.faults.hold(n=1, method="PUT")
    url = f"{mlflow_server.tracking_uri}/api/2.0/mlflow-artifacts/artifacts/0/held/a.txt"
    answers: list[int] = []
    client = threading.Thread(
        target=lambda: answers.append(httpx2.put(url, content=b"x").status_code)
    )
    client.start()
    assert held.wait_arrived(timeout=30)
    assert held.arrived == 1
    client.join(timeout=0.5)  # a negative needs some time: still unanswered after it
    assert client.is_alive()
    assert answers == []
    assert mlflow_server.faults.count("PUT") == 0
    held.release()
    client.join(timeout=30)
    assert answers == [200]
    assert mlflow_server.faults.count("PUT", status=200) == 1
