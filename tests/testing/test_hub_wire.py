"""The local hub on the wire: Range requests as the hub answers them, and loopback latency."""

from __future__ import annotations

import os
import re
import statistics
import time
from pathlib import Path

import httpx2
import pytest
from huggingface_hub.utils import get_session

from pytest_ckpts.testing import LocalHub

REPO = "org/models"
DATA = os.urandom(100_000)


def test_sequential_ranges_on_one_kept_alive_connection(hub: LocalHub) -> None:
    hub.add_file(REPO, "w.bin", DATA)
    url = f"{hub.endpoint}/{REPO}/resolve/main/w.bin"
    with httpx2.Client() as client:
        before = hub.connections_accepted
        for start, end in [(0, 99), (100, 4195), (50_000, 99_999), (99_999, 99_999)]:
            r = client.get(url, headers={"Range": f"bytes={start}-{end}"})
            assert r.status_code == 206
            assert r.headers["Content-Range"] == f"bytes {start}-{end}/{len(DATA)}"
            assert r.headers["Content-Length"] == str(end - start + 1)
            assert r.content == DATA[start : end + 1]
        head = client.head(url, headers={"Range": "bytes=10-19"})
        assert (head.status_code, head.headers["Content-Length"]) == (206, "10")
        assert hub.connections_accepted - before == 1
    assert [r.bytes_sent for r in hub.stats.requests] == [100, 4096, 50_000, 1, 0]


def test_range_edge_cases_like_the_hub(hub: LocalHub) -> None:
    hub.add_files(REPO, {"w.bin": DATA, "empty.bin": b""})
    url = f"{hub.endpoint}/{REPO}/resolve/main/w.bin"
    session = get_session()

    def get(rng: str, path: str = url) -> httpx2.Response:
        return session.get(path, headers={"Range": rng})

    clipped = get("bytes=99990-200000")  # past the end: clipped
    assert (clipped.status_code, clipped.content) == (206, DATA[99990:])
    assert clipped.headers["Content-Range"] == f"bytes 99990-99999/{len(DATA)}"
    suffix = get("bytes=-200000")  # a suffix longer than the file: all of it, still 206
    assert (suffix.status_code, suffix.content) == (206, DATA)
    for unsatisfiable in (
        f"bytes={len(DATA)}-",
        "bytes=-0",
        f"bytes={len(DATA) + 5}-{len(DATA) + 9}",
    ):
        r = get(unsatisfiable)
        assert r.status_code == 416, unsatisfiable
        assert r.headers["Content-Range"] == f"bytes */{len(DATA)}"
    assert get("bytes=0-", url.replace("w.bin", "empty.bin")).status_code == 416
    for ignored in ("bytes=0-1,5-6", "bytes=9-3", "items=0-1"):  # not a single valid range
        r = get(ignored)
        assert (r.status_code, r.content) == (200, DATA), ignored
        assert "Content-Range" not in r.headers
    assert session.get(url).status_code == 200  # the connection is still in step


def test_dataset_resolve_head_and_get(hub: LocalHub) -> None:
    hub.add_file("org/data", "d/x.bin", DATA, repo_type="dataset")
    url = f"{hub.endpoint}/datasets/org/data/resolve/main/d/x.bin"
    session = get_session()
    assert session.head(url).headers["Content-Length"] == str(len(DATA))
    r = session.get(url, headers={"Range": "bytes=-10"})
    assert (r.status_code, r.content) == (206, DATA[-10:])


def test_kept_alive_gets_answer_at_loopback_speed(hub: LocalHub) -> None:
    """Regression guard: without TCP_NODELAY every answer waited out a ~40 ms delayed ACK."""
    hub.add_file(REPO, "config.json", b'{"hidden": 8}\n')
    url = f"{hub.endpoint}/{REPO}/resolve/main/config.json"
    session = get_session()
    session.get(url)  # open the connection
    before = hub.connections_accepted
    times = []
    for _ in range(50):
        started = time.perf_counter()
        assert session.get(url).status_code == 200
        times.append(time.perf_counter() - started)
    assert hub.connections_accepted == before  # one kept-alive connection
    assert statistics.mean(times) < 0.020, f"mean {statistics.mean(times) * 1000:.1f} ms"


@pytest.mark.slow
def test_docs_examples_run(pytester: pytest.Pytester) -> None:
    """Every Python example in docs/local-hub.md runs as a test in a user's suite."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "local-hub.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, re.S)
    files = {f"test_doc_{i}": block for i, block in enumerate(blocks)}
    pytester.makepyfile(**files)
    pytester.makeconftest(
        "import os\nos.environ['HF_HUB_DISABLE_TELEMETRY'] = '1'\n"
        "os.environ['HF_HUB_DISABLE_PROGRESS_BARS'] = '1'\n"
    )
    tests = sum(block.count("\ndef test_") + block.startswith("def test_") for block in blocks)
    assert tests >= 8
    result = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:randomly")
    result.assert_outcomes(passed=tests)
