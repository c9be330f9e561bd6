"""Archive benchmark (SPEC §6): ``create_archive`` vs ``tar czf`` in one run.

Builds a directory of float32 tensor files, archives it with ``create_archive`` (in a
child process, so its peak RSS is its own) and with ``tar czf``, and prints the speed
ratio (target >= 10x), the child's peak RSS (target < 150 MiB) and both compressed
sizes. Everything lives in a temp directory that is removed at the end.

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

# The child reports resource.getrusage(RUSAGE_SELF).ru_maxrss (KiB on Linux). Linux
# carries the parent's high-water mark across fork/exec into ru_maxrss, so the parent
# generates tensors in small chunks to stay far below the target; /proc VmHWM (which
# starts fresh at exec) is printed beside it as a cross-check.
CHILD = """
import resource, sys, time
from pytest_ckpts.archive import _compressor, create_archive
t0 = time.perf_counter()
create_archive(sys.argv[1], sys.argv[2])
elapsed = time.perf_counter() - t0
hwm = 0
try:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
except OSError:
    pass
print(elapsed, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, hwm, _compressor(None)[1])
"""

_CHUNK_FLOATS = 1 << 20  # 4 MiB of float32 per write keeps the parent's RSS small


def _write_tensors(src: Path, size_mib: int, files: int) -> None:
    rng = np.random.default_rng(0)
    per_file = size_mib * 1024 * 1024 // files // 4
    for i in range(files):
        with (src / f"layer{i}.bin").open("wb") as f:
            left = per_file
            while left:
                n = min(left, _CHUNK_FLOATS)
                # trained weights: small-magnitude normals, like a real state dict
                f.write((rng.standard_normal(n, dtype=np.float32) * 0.02).tobytes())
                left -= n


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256, help="total tensor data (MiB)")
    parser.add_argument("--files", type=int, default=8, help="number of tensor files")
    args = parser.parse_args()
    if args.size_mib < 1 or args.files < 1:
        parser.error("--size-mib and --files must be >= 1")
    with tempfile.TemporaryDirectory(prefix="bench-archive-") as tmp_str:
        tmp = Path(tmp_str)
        src = tmp / "ckpt"
        src.mkdir()
        _write_tensors(src, args.size_mib, args.files)
        ours_path, tar_path = tmp / "ours.tar.gz", tmp / "tar.tar.gz"
        # warm the page cache so neither side pays for the first read
        subprocess.run(
            ["cat", *map(str, sorted(src.iterdir()))], stdout=subprocess.DEVNULL, check=True
        )
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(src), str(ours_path)],
            capture_output=True,
            text=True,
            check=True,
        )
        ours_s, maxrss_kib, hwm_kib, backend = out.stdout.split()
        t0 = time.perf_counter()
        subprocess.run(["tar", "czf", str(tar_path), "-C", str(src), "."], check=True)
        tar_s = time.perf_counter() - t0
        ours = float(ours_s)
        mib = 2**20
        print(f"{args.size_mib} MiB float32 in {args.files} files (compressor: {backend})")
        print(f"create_archive {ours:.2f}s ({args.size_mib / ours:.0f} MiB/s)")
        print(f"tar czf        {tar_s:.2f}s ({args.size_mib / tar_s:.0f} MiB/s)")
        print(f"speed ratio (tar czf / create_archive, target >= 10): {tar_s / ours:.1f}x")
        print(
            f"peak RSS of create_archive (getrusage ru_maxrss, target < 150 MiB): "
            f"{int(maxrss_kib) / 1024:.0f} MiB (VmHWM {int(hwm_kib) / 1024:.0f} MiB)"
        )
        print(
            f"compressed: create_archive {ours_path.stat().st_size / mib:.1f} MiB, "
            f"tar czf {tar_path.stat().st_size / mib:.1f} MiB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
