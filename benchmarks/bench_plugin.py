"""Plugin overhead benchmarks (issue: plugin). Ratios measured in one run, from paired
runs (the two cases alternate); min and median of the ratios.

1. collection + run of a 1000-test suite that uses no checkpoints, plugin on vs
   ``-p no:ckpts`` (target: <= 1.03);
2. 20 tests using 4 warm 64 MiB checkpoints vs the same tests with no checkpoint
   use (target: <= 1.10).

    python benchmarks/bench_plugin.py [--repeats 5] [--size-mib 64]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from pytest_ckpts.testing import LocalHub

REPO = "bench/weights"


#: CPU seconds (user + sys) of the last :func:`once` (wall time follows others' load)
LAST_CPU = [0.0]


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def once(args: list[str], cwd: Path) -> float:
    cpu = _children_cpu()
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=cwd,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    took = time.perf_counter() - t0
    LAST_CPU[0] = _children_cpu() - cpu
    return took


def paired(a: Callable[[], float], b: Callable[[], float], repeats: int) -> tuple[float, ...]:
    """Alternating runs of ``a`` and ``b``: medians of each, min and median of a/b (wall),
    min and median of a/b in CPU time."""
    ta, tb, ratios, cpu = [], [], [], []
    for _ in range(repeats):
        x = a()
        cx = LAST_CPU[0]
        y = b()
        ta.append(x)
        tb.append(y)
        ratios.append(x / y)
        cpu.append(cx / LAST_CPU[0] if LAST_CPU[0] else float("nan"))
    return (
        statistics.median(ta),
        statistics.median(tb),
        min(ratios),
        statistics.median(ratios),
        min(cpu),
        statistics.median(cpu),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--only", default="1,2")
    args = parser.parse_args()
    chosen = set(args.only.split(","))

    with tempfile.TemporaryDirectory() as tmp_str:
        tmp = Path(tmp_str)
        plain = tmp / "plain"
        plain.mkdir()
        (plain / "pytest.ini").write_text("[pytest]\n")
        body = "\n\n".join(f"def test_{i}():\n    assert {i} + 1 > {i}" for i in range(1000))
        (plain / "test_many.py").write_text(body + "\n")
        if "1" in chosen:
            on, off, low, mid, clow, cmid = paired(
                lambda: once([], plain), lambda: once(["-p", "no:ckpts"], plain), args.repeats
            )
            print(f"1000 tests: plugin on {on:.3f}s, -p no:ckpts {off:.3f}s (medians)")
            print(
                f"overhead ratio (target <= 1.03): min {low:.3f} median {mid:.3f}; "
                f"CPU time: min {clow:.3f} median {cmid:.3f}"
            )

        if "2" not in chosen:
            return
        with LocalHub() as hub:
            project = tmp / "ckpts"
            (project / "checkpoints").mkdir(parents=True)
            (project / "pytest.ini").write_text("[pytest]\n")
            files, lines = {}, ["checkpoints:"]
            for i in range(4):
                data = os.urandom(1024 * 1024) * args.size_mib
                files[f"w{i}.bin"] = data
                digest = hashlib.sha256(data).hexdigest()
                lines += [f"  w{i}:", f"    hf_path: w{i}.bin", f"    sha256: {digest}"]
            commit = hub.add_files(REPO, files)
            lines += [
                "config:",
                f"  hf_repo: {REPO}",
                f"  endpoint: {hub.endpoint}",
                f'  revision: "{commit}"',
                '  cache_dir: "./checkpoints"',
            ]
            (project / "checkpoints" / "checkpoints.yaml").write_text("\n".join(lines) + "\n")
            with_ckpt = "\n\n".join(
                f"@pytest.mark.requires_checkpoints('w{i % 4}')\n"
                f"def test_{i}(checkpoints):\n    assert checkpoints['w{i % 4}'].size > 0"
                for i in range(20)
            )
            (project / "test_ckpt.py").write_text("import pytest\n\n" + with_ckpt + "\n")
            subprocess.run(  # warm the cache once
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                cwd=project,
                check=True,
                stdout=subprocess.DEVNULL,
            )
            without = project / "without"
            without.mkdir()
            (without / "pytest.ini").write_text("[pytest]\n")
            (without / "test_plain.py").write_text(
                "\n\n".join(f"def test_{i}():\n    assert 1 > 0" for i in range(20)) + "\n"
            )
            warm, base, low, mid, clow, cmid = paired(
                lambda: once(["test_ckpt.py"], project), lambda: once([], without), args.repeats
            )
            print(
                f"20 tests, 4 warm {args.size_mib} MiB checkpoints {warm:.3f}s, "
                f"no checkpoints {base:.3f}s (medians)"
            )
            print(
                f"warm-checkpoint ratio (target <= 1.10): min {low:.3f} median {mid:.3f}; "
                f"CPU time: min {clow:.3f} median {cmid:.3f}"
            )


if __name__ == "__main__":
    main()
