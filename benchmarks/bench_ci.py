"""CI and fleet benchmarks (issue: CI reality). Ratios against a baseline measured in the
same run; min and median of paired runs (this machine is noisy).

1. prefetch on vs off: 4 checkpoints on a slowed local hub (1 s each), 4 tests that use
   one each and take 1 s (target <= 0.8x, goal 0.6x);
2. ``pytest-ckpts fetch -j 4`` vs ``-j 1`` on the same slowed hub (target <= 0.6x);
3. pinned revisions with the hub down (port closed) and blackholed (accepts, never
   answers): whole-run seconds of 4 tests;
4. a warm run of 1000 pinned checkpoints of 1 KiB, tests using the marker and the
   ``checkpoints`` fixture with prefetch at its default, vs the same suite with a plain
   ``hf_hub_download(local_files_only=True)`` fixture (target <= 1.0x); the lazy
   ``checkpoint()`` fixture on the same cache too.

    python benchmarks/bench_ci.py [--repeats 3] [--only 1,2,3,4]
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

REPO = "bench/ci"


#: CPU seconds (user + sys) of the last :func:`run`: on a shared machine wall time follows
#: the load of others, CPU time much less, so ratios print both
LAST_CPU = [0.0]


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(args: list[str], cwd: Path, *, check: bool = True) -> float:
    cpu = _children_cpu()
    t0 = time.perf_counter()
    subprocess.run(args, cwd=cwd, check=check, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    took = time.perf_counter() - t0
    LAST_CPU[0] = _children_cpu() - cpu
    return took


def pytest_cmd(*args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:randomly",
        *args,
    ]


def write_manifest(
    root: Path, hub_endpoint: str, files: dict[str, bytes], commit: str | None
) -> None:
    lines = ["checkpoints:"]
    for name, data in files.items():
        lines += [
            f"  {name}:",
            f"    hf_path: w/{name}.bin",
            f'    sha256: "{hashlib.sha256(data).hexdigest()}"',
        ]
    lines += [
        "config:",
        f"  hf_repo: {REPO}",
        f"  endpoint: {hub_endpoint}",
        '  cache_dir: "./checkpoints"',
    ]
    if commit:
        lines.append(f'  revision: "{commit}"')
    (root / "checkpoints").mkdir(parents=True, exist_ok=True)
    (root / "checkpoints" / "checkpoints.yaml").write_text("\n".join(lines) + "\n")
    (root / "pytest.ini").write_text("[pytest]\n")


def paired(
    label: str, a: Callable[[], float], b: Callable[[], float], repeats: int, target: str
) -> None:
    ratios, ta, tb, cpu_ratios = [], [], [], []
    for _ in range(repeats):
        x = a()
        cx = LAST_CPU[0]
        y = b()
        cy = LAST_CPU[0]
        ta.append(x)
        tb.append(y)
        ratios.append(x / y)
        cpu_ratios.append(cx / cy if cy else float("nan"))
    print(
        f"{label}: {statistics.median(ta):.2f}s vs {statistics.median(tb):.2f}s (median); "
        f"ratio min {min(ratios):.2f} median {statistics.median(ratios):.2f} ({target}); "
        f"CPU-time ratio min {min(cpu_ratios):.2f} median {statistics.median(cpu_ratios):.2f}"
    )


def bench_prefetch(tmp: Path, repeats: int) -> None:
    size = 2 * 1024 * 1024
    files = {f"c{i}": os.urandom(size) for i in range(4)}
    with LocalHub() as hub:
        hub.add_files(REPO, {f"w/{n}.bin": d for n, d in files.items()})
        hub.faults.slow(bytes_per_second=size, route="file")  # 1 s per checkpoint
        root = tmp / "prefetch"
        write_manifest(root, hub.endpoint, files, None)
        (root / "test_it.py").write_text(
            "import time\nimport pytest\n\n"
            "@pytest.mark.parametrize('name', ['c0', 'c1', 'c2', 'c3'])\n"
            "def test_each(name):\n    pass\n\n"
            + "\n".join(
                f"@pytest.mark.requires_checkpoints('c{i}')\n"
                f"def test_uses_{i}(checkpoints):\n    time.sleep(1.0)\n"
                for i in range(4)
            )
        )

        def once(prefetch: str) -> float:
            import shutil

            shutil.rmtree(root / "checkpoints" / "hub", ignore_errors=True)  # SPEC §2 layout
            shutil.rmtree(root / "checkpoints" / ".ckpts", ignore_errors=True)
            return run(pytest_cmd("--ckpts-prefetch", prefetch), root)

        paired(
            "1. prefetch 4 vs off", lambda: once("4"), lambda: once("0"), repeats, "target <= 0.8"
        )


def bench_fetch_jobs(tmp: Path, repeats: int) -> None:
    size = 2 * 1024 * 1024
    files = {f"j{i}": os.urandom(size) for i in range(4)}
    with LocalHub() as hub:
        hub.add_files(REPO, {f"w/{n}.bin": d for n, d in files.items()})
        hub.faults.slow(bytes_per_second=size, route="file")
        root = tmp / "jobs"
        write_manifest(root, hub.endpoint, files, None)

        def once(jobs: str) -> float:
            import shutil

            shutil.rmtree(root / "checkpoints" / "hub", ignore_errors=True)  # SPEC §2 layout
            shutil.rmtree(root / "checkpoints" / ".ckpts", ignore_errors=True)
            return run([sys.executable, "-m", "pytest_ckpts.cli", "fetch", "-q", "-j", jobs], root)

        paired(
            "2. fetch -j 4 vs -j 1", lambda: once("4"), lambda: once("1"), repeats, "target <= 0.6"
        )


def bench_dead(tmp: Path, repeats: int) -> None:
    files = {f"d{i}": os.urandom(1024) for i in range(4)}
    tests = "import pytest\n\n@pytest.mark.parametrize('n', ['d0','d1','d2','d3'])\ndef test_each(checkpoint, n):\n    checkpoint(n)\n"
    root = tmp / "dead"
    write_manifest(root, LocalHub.dead_endpoint(), files, "d" * 40)
    (root / "test_it.py").write_text(tests)
    skip_only = [run(pytest_cmd("--ckpts=skip"), root, check=False) for _ in range(repeats)]
    down = [run(pytest_cmd(), root, check=False) for _ in range(repeats)]
    print(
        f"3. 4 pinned checkpoints, hub down: whole run min {min(down):.2f}s median "
        f"{statistics.median(down):.2f}s (same run with --ckpts=skip: {statistics.median(skip_only):.2f}s; "
        "target: well under 10 s)"
    )
    with LocalHub() as hub:
        hub.add_files(REPO, {f"w/{n}.bin": d for n, d in files.items()})
        root = tmp / "blackhole"
        write_manifest(root, hub.endpoint, files, hub.commit_sha(REPO))
        (root / "test_it.py").write_text(tests)
        hub.blackhole()
        holes = [run(pytest_cmd(), root, check=False) for _ in range(repeats)]
        # -n 2 starts two worker processes (seconds on 2 cores): its own --ckpts=skip run
        # is the baseline, so the figure is what the blackholed hub adds.
        skip_x, holes_x = [], []
        for _ in range(repeats):
            skip_x.append(run(pytest_cmd("-n", "2", "--ckpts=skip"), root, check=False))
            holes_x.append(run(pytest_cmd("-n", "2"), root, check=False))
        unanswered = hub.stats.count(status=0)
        hub.blackhole(False)
    added = [h - s for h, s in zip(holes_x, skip_x, strict=True)]
    print(
        f"   blackholed: whole run min {min(holes):.2f}s median {statistics.median(holes):.2f}s "
        f"(+{statistics.median(holes) - statistics.median(skip_only):.2f}s over --ckpts=skip); "
        f"-n 2: median {statistics.median(holes_x):.2f}s, +{min(added):.2f}s / "
        f"+{statistics.median(added):.2f}s (min / median) over its own --ckpts=skip run; "
        f"{unanswered} unanswered requests in {2 * repeats} runs "
        "(probe timeout 5 s; target: 5 s + a few, one probe per run)"
    )


MARKED = (
    "import pytest\n\n"
    "NAMES = [f'm{{i:04d}}' for i in range({n})]\n\n"
    "@pytest.mark.parametrize(\n"
    "    'name', [pytest.param(n, marks=pytest.mark.requires_checkpoints(n)) for n in NAMES]\n"
    ")\n"
    "def test_one(checkpoints, name):\n    assert checkpoints[name].path.is_file()\n"
)

#: the same suite without the plugin: a ``checkpoints`` fixture of plain hf_hub_download
PLAIN_CONFTEST = (
    "from pathlib import Path\n\nimport pytest\nfrom huggingface_hub import hf_hub_download\n\n"
    "def pytest_configure(config):\n"
    "    config.addinivalue_line('markers', 'requires_checkpoints(*names): needs them')\n\n"
    "@pytest.fixture\ndef checkpoints(request):\n"
    "    names = request.node.get_closest_marker('requires_checkpoints').args\n"
    "    return {{n: Path(hf_hub_download({repo!r}, f'w/{{n}}.bin', revision={commit!r}, "
    "cache_dir={cache!r}, local_files_only=True)) for n in names}}\n"
)
PLAIN_TEST = MARKED.replace("checkpoints[name].path.is_file()", "checkpoints[name].is_file()")


def bench_warm_1000(tmp: Path, repeats: int) -> None:
    n = 1000
    files = {f"m{i:04d}": os.urandom(1024 - 8) + i.to_bytes(8, "little") for i in range(n)}
    with LocalHub() as hub:
        commit = hub.add_files(REPO, {f"w/{k}.bin": d for k, d in files.items()})
        root = tmp / "warm"
        write_manifest(root, hub.endpoint, files, commit)
        (root / "test_ours.py").write_text(MARKED.format(n=n))
        (root / "test_lazy.py").write_text(
            "import pytest\n\n"
            f"@pytest.mark.parametrize('name', [f'm{{i:04d}}' for i in range({n})])\n"
            "def test_one(checkpoint, name):\n    assert checkpoint(name).path.is_file()\n"
        )
        plain = tmp / "plain"
        plain.mkdir()
        (plain / "pytest.ini").write_text("[pytest]\n")
        cache = root / "checkpoints" / "hub"  # huggingface_hub cache inside ours (SPEC §2)
        (plain / "conftest.py").write_text(
            PLAIN_CONFTEST.format(repo=REPO, commit=commit, cache=str(cache))
        )
        (plain / "test_plain.py").write_text(PLAIN_TEST.format(n=n))
        run([sys.executable, "-m", "pytest_ckpts.cli", "fetch", "-q", "-j", "8"], root)
        run(pytest_cmd("test_ours.py"), root)  # warm: stamps written
    # the hub is gone: a warm pinned run needs none
    base = lambda: run(pytest_cmd("-p", "no:ckpts", "test_plain.py"), plain)  # noqa: E731
    paired(
        f"4. warm run, {n} pinned checkpoints, marker + `checkpoints`, prefetch default, "
        "vs a plain hf_hub_download(local_files_only) fixture",
        lambda: run(pytest_cmd("test_ours.py"), root),
        base,
        repeats,
        "target <= 1.0",
    )
    paired(
        "   same, lazy `checkpoint()` fixture",
        lambda: run(pytest_cmd("test_lazy.py"), root),
        base,
        repeats,
        "target <= 1.0",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default="1,2,3,4")
    args = parser.parse_args()
    chosen = set(args.only.split(","))
    with tempfile.TemporaryDirectory() as tmp_str:
        tmp = Path(tmp_str)
        for key, fn in (
            ("1", bench_prefetch),
            ("2", bench_fetch_jobs),
            ("3", bench_dead),
            ("4", bench_warm_1000),
        ):
            if key in chosen:
                fn(tmp, args.repeats)


if __name__ == "__main__":
    main()
