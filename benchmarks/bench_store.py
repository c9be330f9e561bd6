"""Store benchmarks (issue: core). Prints ratios measured against baselines in the same run.

1. cold fetch + verify through pytest-ckpts vs a raw ``hf_hub_download`` of the same
   file from the same local hub (target: ratio <= 1.15), and vs ``hf_hub_download``
   followed by ``sha256sum`` (what a script that checks its download does); paired
   runs, min and median of the per-pair ratios, each on a fresh cache;
2. warm resolve of a cached checkpoint vs a full sha256 re-hash of it
   (target: >= 100x faster).

    python benchmarks/bench_store.py [--size-mib 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from pytest_ckpts import load_manifest
from pytest_ckpts.store import Store
from pytest_ckpts.testing import LocalHub

REPO = "bench/weights"


def make_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    chunk = os.urandom(1024 * 1024)
    with path.open("wb") as f:
        for i in range(size // len(chunk)):
            block = chunk[:8] + i.to_bytes(8, "little") + chunk[16:]
            f.write(block)
            digest.update(block)
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    size = args.size_mib * 1024 * 1024

    with tempfile.TemporaryDirectory() as tmp_str, LocalHub() as hub:
        tmp = Path(tmp_str)
        source = tmp / "weights.bin"
        sha = make_file(source, size)
        commit = hub.add_file(REPO, "weights.bin", source)
        root = tmp / "project"
        (root / "checkpoints").mkdir(parents=True)
        manifest_path = root / "checkpoints" / "checkpoints.yaml"
        manifest_path.write_text(
            "checkpoints:\n  w:\n    hf_path: weights.bin\n"
            f"    sha256: {sha}\nconfig:\n  hf_repo: {REPO}\n  endpoint: {hub.endpoint}\n"
            f'  revision: "{commit}"\n'
        )
        manifest = load_manifest(manifest_path)
        spec = manifest.get("w")

        from huggingface_hub import hf_hub_download

        raw_times, ours_times, checked_times = [], [], []
        for i in range(args.repeats):
            t0 = time.perf_counter()
            got = hf_hub_download(
                REPO,
                "weights.bin",
                revision=commit,
                cache_dir=tmp / f"raw{i}",  # huggingface_hub's own cache folder, fresh
                endpoint=hub.endpoint,
            )
            raw_times.append(time.perf_counter() - t0)
            subprocess.run(["sha256sum", got], check=True, stdout=subprocess.DEVNULL)
            checked_times.append(time.perf_counter() - t0)  # what a careful script does
            shutil.rmtree(tmp / f"raw{i}")
            t0 = time.perf_counter()
            ckpt = Store(manifest, cache_dir=tmp / f"ours{i}").resolve(spec)  # cold: fresh root
            ours_times.append(time.perf_counter() - t0)
            assert ckpt.source == "downloaded", ckpt.source
            if i:
                shutil.rmtree(tmp / f"ours{i}")  # keep ours0 for the warm cases
        raw, ours = statistics.median(raw_times), statistics.median(ours_times)
        ratios = [o / r for o, r in zip(ours_times, raw_times, strict=True)]
        checked = [o / c for o, c in zip(ours_times, checked_times, strict=True)]
        print(f"cold: raw hf_hub_download {raw:.3f}s, pytest-ckpts fetch+verify {ours:.3f}s")
        print(
            f"cold ratio (ours/raw, target <= 1.15): min {min(ratios):.3f} "
            f"median {statistics.median(ratios):.3f}; vs hf_hub_download + sha256sum: "
            f"min {min(checked):.3f} median {statistics.median(checked):.3f}"
        )
        assert hub.stats.count(route="file") >= 2 * args.repeats

        cache = tmp / "ours0"
        store = Store(manifest, cache_dir=cache)
        n = 200
        t0 = time.perf_counter()
        for _ in range(n):
            Store(manifest, cache_dir=cache).resolve(spec)
        warm = (time.perf_counter() - t0) / n
        path = store.resolve(spec).path
        t0 = time.perf_counter()
        with open(path, "rb") as f:
            hashlib.file_digest(f, "sha256")
        rehash = time.perf_counter() - t0
        print(f"warm resolve {warm * 1e6:.0f} us, full re-hash {rehash * 1e3:.0f} ms")
        print(f"warm speed-up (re-hash/warm, target >= 100): {rehash / warm:.0f}x")

        # A cache restored by a CI cache action: same bytes, new inodes and ctimes. The
        # stamps no longer match, so each file is hashed once, stamped, and trusted again.
        restored_times, after_times = [], []
        for i in range(args.repeats):
            restored = tmp / f"restored{i}"
            shutil.copytree(cache, restored, symlinks=True)
            t0 = time.perf_counter()
            first = Store(manifest, cache_dir=restored).resolve(spec)
            restored_times.append(time.perf_counter() - t0)
            assert first.source == "cached"  # nothing downloaded
            t0 = time.perf_counter()
            Store(manifest, cache_dir=restored).resolve(spec)
            after_times.append(time.perf_counter() - t0)
        print(
            f"restored cache (new inodes/ctimes): first resolve min {min(restored_times):.3f}s "
            f"median {statistics.median(restored_times):.3f}s for {args.size_mib} MiB "
            f"(a re-hash: {rehash:.3f}s), then {statistics.median(after_times) * 1e6:.0f} us"
        )


if __name__ == "__main__":
    main()
