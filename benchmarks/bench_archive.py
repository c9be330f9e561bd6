"""Archive benchmark: ``create_archive``/``verify_archive`` vs plain shell pipes, paired.

Builds a directory of float32 tensor files and times, in several paired rounds within
this one process run (the order inside each pair alternates, the machine is noisy):

- ``create_archive`` vs ``tar cf - dir | python -m isal.igzip -1`` (same data, same
  ISA-L level, no hashing and no manifest): target ratio <= 1.3;
- ``verify_archive`` vs ``python -m isal.igzip -d -c archive | tar tf -`` (decompress
  and list, no hashing): target ratio <= 1.3.

It prints min and median of each side and of the per-pair ratios, the CPU seconds
(user + system, children included: steadier than wall time on a busy box), the
compressed sizes and the peak RSS of a child process running ``create_archive`` then
``verify_archive`` (target < 150 MiB). ``--tar-czf`` adds one ``tar czf`` run (zlib -6, the old baseline).
Everything lives in a temp directory that is removed at the end.

    python benchmarks/bench_archive.py [--size-mib 256] [--files 8] [--runs 5] [--tar-czf]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pytest_ckpts.archive import create_archive, verify_archive

# The child reports resource.getrusage(RUSAGE_SELF).ru_maxrss (KiB on Linux). Linux
# carries the parent's high-water mark across fork/exec into ru_maxrss, so the parent
# generates tensors in small chunks to stay far below the target; /proc VmHWM (which
# starts fresh at exec) is printed beside it as a cross-check.
CHILD = """
import resource, sys
from pytest_ckpts.archive import create_archive, verify_archive
verify_archive(create_archive(sys.argv[1], sys.argv[2]))
hwm = 0
try:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
except OSError:
    pass
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, hwm)
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


def _cpu() -> float:
    """CPU seconds (user + system) of this process and of its finished children."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def _timed(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall and CPU seconds of ``fn``: on a shared box the CPU time is the steadier one."""
    c0, t0 = _cpu(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, _cpu() - c0


def _sh(cmd: list[str]) -> Callable[[], object]:
    return lambda: subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def _paired(ours: Callable[[], object], pipe: Callable[[], object], runs: int) -> dict[str, float]:
    mine, theirs, ratios, cpu_mine, cpu_theirs = [], [], [], [], []
    for i in range(runs):
        if i % 2:
            b, a = _timed(pipe), _timed(ours)
        else:
            a, b = _timed(ours), _timed(pipe)
        mine.append(a[0])
        theirs.append(b[0])
        ratios.append(a[0] / b[0])
        cpu_mine.append(a[1])
        cpu_theirs.append(b[1])
    return {
        "ours_min": min(mine),
        "ours_med": statistics.median(mine),
        "pipe_min": min(theirs),
        "pipe_med": statistics.median(theirs),
        "ratio_min": min(mine) / min(theirs),
        "ratio_med": statistics.median(ratios),
        "cpu_ours": statistics.median(cpu_mine),
        "cpu_pipe": statistics.median(cpu_theirs),
    }


def _report(label: str, pipe_label: str, r: dict[str, float], size_mib: int) -> None:
    print(
        f"{label:<15} min {r['ours_min']:.2f}s ({size_mib / r['ours_min']:.0f} MiB/s)"
        f"  median {r['ours_med']:.2f}s"
    )
    print(
        f"{pipe_label:<15} min {r['pipe_min']:.2f}s ({size_mib / r['pipe_min']:.0f} MiB/s)"
        f"  median {r['pipe_med']:.2f}s"
    )
    print(
        f"  ratio {label}/{pipe_label} (target <= 1.3): min-vs-min {r['ratio_min']:.2f}, "
        f"median of paired {r['ratio_med']:.2f}"
    )
    print(
        f"  CPU seconds (median): {label} {r['cpu_ours']:.2f}, {pipe_label} {r['cpu_pipe']:.2f}"
        f" (ratio {r['cpu_ours'] / r['cpu_pipe']:.2f})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256, help="total tensor data (MiB)")
    parser.add_argument("--files", type=int, default=8, help="number of tensor files")
    parser.add_argument("--runs", type=int, default=5, help="paired rounds per comparison")
    parser.add_argument("--tar-czf", action="store_true", help="also time one `tar czf`")
    args = parser.parse_args()
    if args.size_mib < 1 or args.files < 1 or args.runs < 1:
        parser.error("--size-mib, --files and --runs must be >= 1")
    with tempfile.TemporaryDirectory(prefix="bench-archive-") as tmp_str:
        tmp = Path(tmp_str)
        src = tmp / "ckpt"
        src.mkdir()
        _write_tensors(src, args.size_mib, args.files)
        ours_path, pipe_path = tmp / "ours.tar.gz", tmp / "pipe.tar.gz"
        # warm the page cache so neither side pays for the first read
        subprocess.run(
            ["cat", *map(str, sorted(src.iterdir()))], stdout=subprocess.DEVNULL, check=True
        )
        igzip = [sys.executable, "-m", "isal.igzip"]
        tar_pipe = f"tar cf - -C '{src}' . | {' '.join(igzip)} -1 -c > '{pipe_path}'"
        create = _paired(
            lambda: create_archive(src, ours_path),
            _sh(["bash", "-c", f"set -o pipefail; {tar_pipe}"]),
            args.runs,
        )
        verify = _paired(
            lambda: verify_archive(ours_path),
            _sh(
                [
                    "bash",
                    "-c",
                    f"set -o pipefail; {' '.join(igzip)} -d -c '{ours_path}' | tar tf -",
                ]
            ),
            args.runs,
        )
        mib = 2**20
        print(f"{args.size_mib} MiB float32 in {args.files} files, {args.runs} paired runs each")
        _report("create_archive", "tar|igzip -1", create, args.size_mib)
        _report("verify_archive", "igzip -d|tar t", verify, args.size_mib)
        print(
            f"compressed: create_archive {ours_path.stat().st_size / mib:.1f} MiB, "
            f"tar|igzip -1 {pipe_path.stat().st_size / mib:.1f} MiB"
        )
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(src), str(tmp / "child.tar.gz")],
            capture_output=True,
            text=True,
            check=True,
        )
        maxrss_kib, hwm_kib = out.stdout.split()
        print(
            f"peak RSS of create_archive + verify_archive (ru_maxrss, target < 150 MiB): "
            f"{int(maxrss_kib) / 1024:.0f} MiB (VmHWM {int(hwm_kib) / 1024:.0f} MiB)"
        )
        if args.tar_czf:
            czf, _ = _timed(_sh(["tar", "czf", str(tmp / "czf.tar.gz"), "-C", str(src), "."]))
            print(
                f"tar czf (zlib -6) {czf:.2f}s: {czf / create['ours_min']:.1f}x "
                "the time of create_archive (min)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
