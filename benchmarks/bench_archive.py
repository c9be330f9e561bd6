"""Archive benchmark (issue: uploads). Ratios measured in one run.

Archives a directory of float32 tensors with ``create_archive`` and with ``tar czf``
and prints the speed ratio (target >= 10x), the peak RSS of ``create_archive`` in a
child process (target < 150 MiB) and both compressed sizes.

    python benchmarks/bench_archive.py [--size-mib 256] [--files 8]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# Peak RSS from /proc (VmHWM, KiB): ru_maxrss of a forked child can include the
# parent's pages from before exec, which here hold the generated tensors.
CHILD = """
import sys, time
from pytest_ckpts.archive import create_archive
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
t0 = time.perf_counter()
create_archive(sys.argv[1], sys.argv[2])
elapsed = time.perf_counter() - t0
print(elapsed, hwm())
"""

BASELINE_RSS = """
import pytest_ckpts.archive
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        print(int(line.split()[1]))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--files", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_str:
        tmp = Path(tmp_str)
        src = tmp / "ckpt"
        src.mkdir()
        rng = np.random.default_rng(0)
        per_file = args.size_mib * 1024 * 1024 // args.files // 4
        for i in range(args.files):
            # trained weights: small-magnitude normals, like a real state dict
            (src / f"layer{i}.bin").write_bytes(
                (rng.standard_normal(per_file) * 0.02).astype(np.float32).tobytes()
            )
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(src), str(tmp / "ours.tar.gz")],
            capture_output=True,
            text=True,
            check=True,
        )
        ours_s, rss_kib = out.stdout.split()
        idle = int(
            subprocess.run(
                [sys.executable, "-c", BASELINE_RSS], capture_output=True, text=True, check=True
            ).stdout
        )
        t0 = time.perf_counter()
        subprocess.run(["tar", "czf", str(tmp / "tar.tar.gz"), "-C", str(src), "."], check=True)
        tar_s = time.perf_counter() - t0
        ours = float(ours_s)
        print(f"{args.size_mib} MiB float32: create_archive {ours:.2f}s, tar czf {tar_s:.2f}s")
        print(f"speed ratio (tar czf / create_archive, target >= 10): {tar_s / ours:.1f}x")
        print(
            f"peak RSS of create_archive: {int(rss_kib) / 1024:.0f} MiB "
            f"(interpreter + imports alone: {idle / 1024:.0f} MiB; target < 150 MiB)"
        )
        print(
            f"sizes: create_archive {(tmp / 'ours.tar.gz').stat().st_size / 2**20:.1f} MiB, "
            f"tar czf {(tmp / 'tar.tar.gz').stat().st_size / 2**20:.1f} MiB"
        )


if __name__ == "__main__":
    main()
