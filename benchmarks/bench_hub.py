"""Local hub latency on kept-alive connections. Prints ratios against a baseline hub
measured in the same run.

The baseline is the hub as it answered before (``LocalHub.low_latency = False``: no
TCP_NODELAY, headers and body in separate writes), which waits out the client's
delayed ACK (~40 ms) on every answer of a reused connection.

1. sequential GETs of a small file over one ``huggingface_hub.utils.get_session()``
   connection: per-request latency and GETs/s;
2. cold ``hf_hub_download`` of N small files (one HEAD and one GET each), the
   pattern of a suite fetching many small checkpoints.

Each measurement is taken ``--repeats`` times, alternating baseline and current hub
(paired runs); min and median are printed because the machine is noisy.

    python benchmarks/bench_hub.py [--gets 200] [--files 100] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from huggingface_hub import hf_hub_download
from huggingface_hub.utils import get_session

from pytest_ckpts.testing import LocalHub

REPO = "bench/small"


class BaselineHub(LocalHub):
    """The hub before the fix: Nagle on, separate header and body writes."""

    low_latency = False


def keepalive_gets(cls: type[LocalHub], n: int) -> float:
    """Seconds per GET of a 14-byte file over one kept-alive connection."""
    with cls() as hub:
        hub.add_file(REPO, "config.json", b'{"hidden": 8}\n')
        url = f"{hub.endpoint}/{REPO}/resolve/main/config.json"
        session = get_session()
        session.get(url).raise_for_status()  # connect once
        started = time.perf_counter()
        for _ in range(n):
            session.get(url).raise_for_status()
        return (time.perf_counter() - started) / n


def cold_downloads(cls: type[LocalHub], n: int) -> float:
    """Seconds for cold ``hf_hub_download`` of ``n`` small files."""
    with cls() as hub, tempfile.TemporaryDirectory() as cache:
        hub.add_files(REPO, {f"c{i}.ckpt": os.urandom(256) for i in range(n)})
        started = time.perf_counter()
        for i in range(n):
            hf_hub_download(REPO, f"c{i}.ckpt", endpoint=hub.endpoint, cache_dir=cache)
        return time.perf_counter() - started


def paired(measure: Callable[[type[LocalHub]], float], repeats: int) -> tuple[list[float], ...]:
    base, new = [], []
    for _ in range(repeats):
        base.append(measure(BaselineHub))
        new.append(measure(LocalHub))
    return base, new


def show(title: str, unit: str, scale: float, base: list[float], new: list[float]) -> None:
    ratios = sorted(b / n for b, n in zip(base, new, strict=True))
    print(title)
    for name, values in (("baseline", base), ("current ", new)):
        print(
            f"  {name}: min {min(values) * scale:8.2f} {unit}  "
            f"median {statistics.median(values) * scale:8.2f} {unit}"
        )
    print(
        f"  speedup (baseline / current): min {ratios[0]:.1f}x  median {statistics.median(ratios):.1f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gets", type=int, default=200)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    base, new = paired(lambda cls: keepalive_gets(cls, args.gets), args.repeats)
    show(f"1. {args.gets} kept-alive GETs of a small file (per request)", "ms", 1000, base, new)
    print(
        f"  GETs/s: baseline {1 / statistics.median(base):7.0f}  "
        f"current {1 / statistics.median(new):7.0f}"
    )
    base, new = paired(lambda cls: cold_downloads(cls, args.files), args.repeats)
    show(f"2. cold hf_hub_download of {args.files} small files (total)", "s", 1, base, new)


if __name__ == "__main__":
    main()
