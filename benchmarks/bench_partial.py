"""Partial-read benchmark (issue: partial checkpoints). Ratios measured in the same run.

A 256 MiB ``.safetensors`` (eight 32 MiB float32 tensors plus two small ones) is served
by the local hub. Per paired run, on a cold cache:

1. partial read of two small tensors and one 32 MiB tensor (``PartialReader``);
2. a full download + verify of the same file (``Store.resolve``, the baseline).

Printed: bytes transferred vs the bytes of those tensors plus the header (target
<= 1.2x), vs the file size (goal < 15%), wall time partial vs full (min and median of
the pairs), and the bytes a second (warm) partial read transfers (target 0).

    python benchmarks/bench_partial.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from pytest_ckpts import load_manifest
from pytest_ckpts.partial import PartialReader
from pytest_ckpts.publish import lock_tensors
from pytest_ckpts.store import Store
from pytest_ckpts.testing import LocalHub

REPO = "bench/llm"
WANTED = ["norm.weight", "lm_head.bias", "layers.3.w"]


def make_file(path: Path) -> str:
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    tensors = {f"layers.{i}.w": torch.randn(2048, 4096, generator=g) for i in range(8)}
    tensors["norm.weight"] = torch.randn(4096, generator=g).to(torch.bfloat16)
    tensors["lm_head.bias"] = torch.randn(1000, generator=g)
    save_file(tensors, str(path))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp_str, LocalHub() as hub:
        tmp = Path(tmp_str)
        source = tmp / "model.safetensors"
        sha = make_file(source)
        size = source.stat().st_size
        commit = hub.add_file(REPO, "model.safetensors", source)
        root = tmp / "project"
        (root / "checkpoints").mkdir(parents=True)
        manifest_path = root / "checkpoints" / "checkpoints.yaml"
        manifest_path.write_text(
            "checkpoints:\n  llm:\n    hf_path: model.safetensors\n"
            f'    sha256: "{sha}"\nconfig:\n  hf_repo: {REPO}\n  endpoint: {hub.endpoint}\n'
            f'  revision: "{commit}"\n'
        )
        manifest = load_manifest(manifest_path)
        lock_tensors(
            manifest,
            names=["llm"],
            source_dir=tmp,
            store=Store(manifest, cache_dir=tmp / "unused"),
            out=sys.stderr,
        )
        manifest = load_manifest(manifest_path)
        spec = manifest.get("llm")
        doc = json.loads((root / "checkpoints" / "tensors" / "llm.json").read_text())
        header = min(t["begin"] for t in doc["tensors"].values())
        useful = header + sum(doc["tensors"][n]["end"] - doc["tensors"][n]["begin"] for n in WANTED)

        partial_times, full_times, sent, warm_bytes = [], [], [], []
        for i in range(args.repeats):
            cache = tmp / f"cache-{i}"
            hub.stats.reset()
            t0 = time.perf_counter()
            got = PartialReader(Store(manifest, cache_dir=cache / "p")).read(spec, WANTED)
            partial_times.append(time.perf_counter() - t0)
            sent.append(hub.stats.bytes_served)
            assert got.nbytes <= hub.stats.bytes_served
            hub.stats.reset()
            PartialReader(Store(manifest, cache_dir=cache / "p")).read(spec, WANTED)
            warm_bytes.append(hub.stats.bytes_served)
            t0 = time.perf_counter()
            Store(manifest, cache_dir=cache / "f").resolve(spec)
            full_times.append(time.perf_counter() - t0)

        mib = 1024 * 1024
        print(f"file: {size / mib:.1f} MiB; tensors wanted + header: {useful / mib:.2f} MiB")
        print(
            f"cold partial read: {max(sent) / mib:.2f} MiB transferred = "
            f"{max(sent) / useful:.3f}x the wanted bytes (target <= 1.2), "
            f"{100 * max(sent) / size:.1f}% of the file (goal < 15%)"
        )
        p_min, p_med = min(partial_times), statistics.median(partial_times)
        f_min, f_med = min(full_times), statistics.median(full_times)
        print(f"partial read: min {p_min:.3f}s, median {p_med:.3f}s")
        print(f"full download + verify: min {f_min:.3f}s, median {f_med:.3f}s")
        print(f"time ratio partial/full: min {p_min / f_min:.3f}, median {p_med / f_med:.3f}")
        print(f"warm partial read: {max(warm_bytes)} bytes transferred (target 0)")


if __name__ == "__main__":
    main()
