"""Many small checkpoints, in one process (issue: warm and small at the limit).

Ratios against a baseline measured in the same process; paired runs (ours, then the
baseline, alternating), min and median of the ratios (the machine is noisy).

1. warm resolve: N pinned, cached and stamped checkpoints of 1 KiB resolved through a
   fresh store (what the plugin and the CLI build once per run) vs
   ``hf_hub_download(..., local_files_only=True)`` of the same files, per call
   (target <= 1.0x);
2. cold: ``pytest-ckpts fetch -j 1`` of 200 x 4 KiB from the local hub (download,
   sha256, stamp, lock) vs a plain loop of GETs with one client writing each body to a
   file (target <= 2.0x).

    python benchmarks/bench_small.py [--repeats 7] [--only 1,2] [--warm-n 1000] [--cold-n 200]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from pytest_ckpts import load_manifest
from pytest_ckpts.cli import main as cli_main
from pytest_ckpts.store import Store
from pytest_ckpts.testing import LocalHub

REPO = "bench/small"


def write_manifest(root: Path, endpoint: str, files: dict[str, bytes], commit: str) -> Path:
    lines = ["checkpoints:"]
    for name, data in files.items():
        lines += [
            f"  {name}:",
            f"    hf_path: w/{name}.bin",
            f'    sha256: "{hashlib.sha256(data).hexdigest()}"',
        ]
    lines += ["config:", f"  hf_repo: {REPO}", f"  endpoint: {endpoint}", f'  revision: "{commit}"']
    lines.append('  cache_dir: "./checkpoints"')  # not huggingface_hub's own cache
    path = root / "checkpoints" / "checkpoints.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def paired(
    label: str, ours: Callable[[], float], base: Callable[[], float], repeats: int, unit: str
) -> None:
    ratios, a, b = [], [], []
    for _ in range(repeats):
        x, y = ours(), base()
        a.append(x)
        b.append(y)
        ratios.append(x / y)
    print(
        f"{label}: ours {statistics.median(a) * 1e6:.1f} us vs baseline "
        f"{statistics.median(b) * 1e6:.1f} us {unit} (medians); ratio min {min(ratios):.2f} "
        f"median {statistics.median(ratios):.2f}"
    )


def bench_warm_resolve(tmp: Path, repeats: int, n: int) -> None:
    from huggingface_hub import hf_hub_download

    files = {f"m{i:04d}": os.urandom(1024 - 8) + i.to_bytes(8, "little") for i in range(n)}
    with LocalHub() as hub:
        commit = hub.add_files(REPO, {f"w/{k}.bin": d for k, d in files.items()})
        root = tmp / "warm"
        manifest = load_manifest(write_manifest(root, hub.endpoint, files, commit))
        assert (
            cli_main(
                ["--manifest", str(manifest.path), "fetch", "-q", "-j", "4"], out=io.StringIO()
            )
            == 0
        )
    # the hub is gone: a warm pinned resolve must not need it
    specs = [manifest.get(k) for k in files]
    cache = manifest.cache_dir

    def ours() -> float:
        t0 = time.perf_counter()
        store = Store(manifest, cache_dir=cache)
        for spec in specs:
            store.resolve(spec)
        return (time.perf_counter() - t0) / n

    def plain() -> float:
        t0 = time.perf_counter()
        for k in files:
            hf_hub_download(
                REPO, f"w/{k}.bin", revision=commit, cache_dir=cache / "hub", local_files_only=True
            )
        return (time.perf_counter() - t0) / n

    ours(), plain()  # imports, page cache
    paired(
        f"1. warm resolve, {n} x 1 KiB, fresh store vs hf_hub_download(local_files_only) "
        "(target <= 1.0)",
        ours,
        plain,
        repeats,
        "per call",
    )


def bench_cold_small(tmp: Path, repeats: int, n: int) -> None:
    from huggingface_hub.utils import get_session

    files = {f"s{i:04d}": os.urandom(4096 - 8) + i.to_bytes(8, "little") for i in range(n)}
    with LocalHub() as hub:
        commit = hub.add_files(REPO, {f"w/{k}.bin": d for k, d in files.items()})
        root = tmp / "cold"
        manifest_path = write_manifest(root, hub.endpoint, files, commit)
        cache = root / "checkpoints"
        plain_dir = tmp / "plain"
        urls = [f"{hub.endpoint}/{REPO}/resolve/{commit}/w/{k}.bin" for k in files]

        def ours() -> float:
            for p in cache.iterdir():
                if p.is_dir():
                    shutil.rmtree(p)
            out = io.StringIO()
            t0 = time.perf_counter()
            code = cli_main(["--manifest", str(manifest_path), "fetch", "-q", "-j", "1"], out=out)
            took = time.perf_counter() - t0
            assert code == 0, out.getvalue()
            return took / n

        def plain() -> float:
            shutil.rmtree(plain_dir, ignore_errors=True)
            plain_dir.mkdir()
            session = get_session()
            t0 = time.perf_counter()
            for i, url in enumerate(urls):
                response = session.get(url, follow_redirects=True)
                response.raise_for_status()
                (plain_dir / f"{i}.bin").write_bytes(response.content)
            return (time.perf_counter() - t0) / n

        ours(), plain()  # imports, connections
        paired(
            f"2. cold, {n} x 4 KiB, `pytest-ckpts fetch -j 1` vs one-client GET loop "
            "(target <= 2.0)",
            ours,
            plain,
            repeats,
            "per file",
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--only", default="1,2")
    parser.add_argument("--warm-n", type=int, default=1000)
    parser.add_argument("--cold-n", type=int, default=200)
    args = parser.parse_args()
    chosen = set(args.only.split(","))
    with tempfile.TemporaryDirectory() as tmp_str:
        tmp = Path(tmp_str)
        if "1" in chosen:
            bench_warm_resolve(tmp, args.repeats, args.warm_n)
        if "2" in chosen:
            bench_cold_small(tmp, args.repeats, args.cold_n)


if __name__ == "__main__":
    main()
