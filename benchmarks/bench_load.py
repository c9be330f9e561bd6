"""Loading benchmarks (issue: big checkpoints). Prints ratios against baselines of the same run.

1. ``Checkpoint.load()`` (memory-mapped) of a torch state dict vs a plain
   ``torch.load(weights_only=True)`` of the same file: time ratio (target <= 0.2x,
   goal <= 0.02x) and peak RSS growth until a tensor is touched (target < 128 MiB);
2. one 16 MiB tensor of a ``.safetensors`` of the same size via ``Checkpoint.tensors()``,
   looked up (mapped, untouched) and read whole (summed) (target < 1 s and < 128 MiB
   RSS growth, goal < 10 ms), next to reading the whole file
   (``safetensors.torch.load(bytes)``, what "read whole" costs);
3. cases 1 and 2 in two processes at once (as under ``pytest -n 2``): per-process
   peak RSS growth.

Every case runs in a fresh subprocess that reports its own time and the growth of its
peak RSS (``VmHWM`` in ``/proc/self/status``, ``ru_maxrss`` elsewhere) after torch is
imported, so one case's memory never hides another's. Runs are paired and repeated;
min and median are printed. The files are made in a temporary directory, read once
to warm the page cache (every case then reads from memory, as a warm CI run does),
and deleted at the end.

    python benchmarks/bench_load.py [--size-mib 512] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CASES = (
    "torch_plain",
    "ckpt_load",
    "ckpt_load_nommap",
    "st_whole",
    "st_one_lookup",
    "st_one_tensor",
)

CHILD = r"""
import json, os, resource, sys, time
from pathlib import Path

def peak_mib():
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20

case, path = sys.argv[1], Path(sys.argv[2])
import torch, safetensors.torch
from pytest_ckpts import Checkpoint
import pytest_ckpts._loading  # imported by the first load(); a once-per-process cost
ckpt = Checkpoint(name="bench", path=path, sha256="", size=path.stat().st_size, revision="bench")
before = peak_mib()
t0 = time.perf_counter()
if case == "torch_plain":
    out = torch.load(path, weights_only=True)
elif case == "ckpt_load":
    out = ckpt.load()
elif case == "ckpt_load_nommap":
    out = ckpt.load(mmap=False)
elif case == "st_whole":
    out = safetensors.torch.load(path.read_bytes())
elif case == "st_one_lookup":
    with ckpt.tensors() as tensors:
        out = tensors["layer7.weight"]  # mapped: its pages are read when touched
elif case == "st_one_tensor":
    with ckpt.tensors() as tensors:
        out = float(tensors["layer7.weight"].sum())  # touches every byte of that tensor
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "rss_mib": peak_mib() - before, "kept": out is not None}))
"""


def make_files(tmp: Path, size_mib: int) -> tuple[Path, Path]:
    import torch
    from safetensors.torch import save_file

    per = 16  # MiB per tensor, like a large linear layer
    g = torch.Generator().manual_seed(0)
    state = {
        f"layer{i}.weight": torch.randn(1024, per * 256, generator=g)
        for i in range(max(1, size_mib // per))
    }
    pt, st = tmp / "model.pt", tmp / "model.safetensors"
    torch.save(state, pt)
    save_file(state, str(st))
    return pt, st


def warm(path: Path) -> None:
    with path.open("rb") as fh:
        while fh.read(16 * 2**20):
            pass


def run(case: str, path: Path, parallel: int = 1) -> list[dict[str, float]]:
    """Run ``case`` in ``parallel`` fresh processes at once; one result dict per process."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, case, str(path)],
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        for _ in range(parallel)
    ]
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        if proc.returncode:
            raise SystemExit(f"bench_load: case {case} failed (exit {proc.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def stats(values: list[float]) -> tuple[float, float]:
    return min(values), statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp_str:
        pt, st = make_files(Path(tmp_str), args.size_mib)
        for path in (pt, st):
            warm(path)
        files = {c: (st if c.startswith("st_") else pt) for c in CASES}
        times: dict[str, list[float]] = {c: [] for c in CASES}
        rss: dict[str, list[float]] = {c: [] for c in CASES}
        for _ in range(args.repeats):  # paired: every case once per round
            for case in CASES:
                (result,) = run(case, files[case])
                times[case].append(result["seconds"])
                rss[case].append(result["rss_mib"])
        ratios = [o / p for o, p in zip(times["ckpt_load"], times["torch_plain"], strict=True)]
        parallel: dict[str, list[float]] = {}
        for case in ("torch_plain", "ckpt_load", "st_one_lookup", "st_one_tensor"):
            parallel[case] = [r["rss_mib"] for r in run(case, files[case], parallel=2)]

    print(f"file: {args.size_mib} MiB torch state dict and .safetensors; {args.repeats} rounds")
    print(f"{'case':<20} {'time min':>10} {'median':>10} {'RSS+ min':>10} {'median':>10}")
    for case in CASES:
        t_min, t_med = stats(times[case])
        r_min, r_med = stats(rss[case])
        print(
            f"{case:<20} {t_min * 1e3:>8.2f}ms {t_med * 1e3:>8.2f}ms "
            f"{r_min:>7.1f}MiB {r_med:>7.1f}MiB"
        )
    r_min, r_med = stats(ratios)
    print(
        f"Checkpoint.load() / torch.load(weights_only=True): min {r_min:.4f}x, "
        f"median {r_med:.4f}x (target <= 0.2x, goal <= 0.02x)"
    )
    print(
        f"Checkpoint.load() peak RSS growth (untouched): median "
        f"{statistics.median(rss['ckpt_load']):.1f} MiB (target < 128 MiB)"
    )
    for case, what in (("st_one_lookup", "looked up"), ("st_one_tensor", "read whole")):
        t_min, t_med = stats(times[case])
        print(
            f"one 16 MiB tensor via tensors(), {what}: min {t_min * 1e3:.2f} ms, median "
            f"{t_med * 1e3:.2f} ms, RSS growth median {statistics.median(rss[case]):.1f} MiB "
            "(target < 1 s and < 128 MiB, goal < 10 ms)"
        )
    print("two processes at once (pytest -n 2), peak RSS growth per process:")
    for case, values in parallel.items():
        print(f"  {case:<18} " + ", ".join(f"{v:.1f} MiB" for v in values))


if __name__ == "__main__":
    main()
