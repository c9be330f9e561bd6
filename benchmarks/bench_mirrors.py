"""Mirror benchmark (README "Mirrors"). Ratios measured in one run.

1. Folder mirror, one file (default 512 MiB): ``Store.resolve`` from a folder mirror
   (stream, hash while copying, place in the cache) vs ``cp`` + ``sha256sum`` of the same
   file. Target <= 1.0x.
2. S3 mirror (moto's S3 server in a subprocess on 127.0.0.1), the same size:
   ``Store.resolve`` from ``s3://`` vs s3fs ``get`` of the same object followed by
   ``sha256sum``. Target <= 1.0x.
3. A fleet: 3 concurrent ``pytest -n 2`` jobs on fresh caches, the hub down (a live local
   hub answering every request 503, so its log proves what was asked), an S3 mirror
   holding every pinned file. Target: all pass, 0 hub requests, each object read once
   per job (the bytes each job's report counts equal the files' total size).

Both sides of each pair start with the source in the page cache; pairs alternate order;
min and median of the ratios are printed.

    python benchmarks/bench_mirrors.py [--size-mib 512] [--repeats 3] [--fleet-files 6]
        [--only folder|s3|fleet]

s3fs's ``get`` splits a large object into 10 concurrent ranged GETs by default; a
second S3 line compares with one streamed GET (``max_concurrency=1``) as well.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from pytest_ckpts import load_manifest
from pytest_ckpts.store import Store
from pytest_ckpts.testing import LocalHub

REPO = "bench/mirror"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def write_manifest(root: Path, files: dict[str, str], endpoint: str) -> Path:
    lines = ["checkpoints:"]
    for name, sha in files.items():
        lines += [f"  {name}:", f"    hf_path: w/{name}.bin", f'    sha256: "{sha}"']
    lines += [
        "config:",
        f"  hf_repo: {REPO}",
        f'  revision: "{COMMIT}"',
        f"  endpoint: {endpoint}",
        '  cache_dir: "./cache"',
    ]
    path = root / "checkpoints" / "checkpoints.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def random_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for i in range(size >> 20):
            chunk = block[i % 7 :] + block[: i % 7]
            f.write(chunk)
            digest.update(chunk)
    return digest.hexdigest()


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def sha256sum(path: Path) -> str:
    out = subprocess.run(["sha256sum", str(path)], check=True, capture_output=True, text=True)
    return out.stdout.split()[0]


def pairs(
    label: str, ours: Callable[[int], object], base: Callable[[int], object], repeats: int
) -> float:
    ratios, ours_t, base_t = [], [], []
    for i in range(repeats):
        if i % 2:
            o = timed(lambda i=i: ours(i))
            b = timed(lambda i=i: base(i))
        else:
            b = timed(lambda i=i: base(i))
            o = timed(lambda i=i: ours(i))
        ours_t.append(o)
        base_t.append(b)
        ratios.append(o / b)
    print(
        f"{label}: mirror fetch {min(ours_t):.2f}s (median {statistics.median(ours_t):.2f}s), "
        f"baseline {min(base_t):.2f}s (median {statistics.median(base_t):.2f}s); "
        f"ratio min {min(ratios):.2f}x, median {statistics.median(ratios):.2f}x (target <= 1.0x)"
    )
    return statistics.median(ratios)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Moto:
    def __init__(self) -> None:
        self.endpoint = f"http://127.0.0.1:{free_port()}"
        port = self.endpoint.rsplit(":", 1)[1]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", port],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(300):
            try:
                urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        self.env = {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        os.environ.update(self.env)  # a benchmark script: the process is ours

    def fs(self) -> object:
        import s3fs

        return s3fs.S3FileSystem(endpoint_url=self.endpoint, skip_instance_cache=True)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def bench_folder(tmp: Path, size: int, repeats: int) -> float:
    mirror = tmp / "mirror"
    mirror.mkdir()
    src = tmp / "source.bin"
    sha = random_file(src, size)
    os.replace(src, mirror / sha)
    manifest = load_manifest(write_manifest(tmp / "folder", {"big": sha}, LocalHub.dead_endpoint()))

    def ours(i: int) -> None:
        cache = tmp / f"fc{i}"
        ckpt = Store(manifest, cache_dir=cache, mirrors=(str(mirror),)).resolve(manifest.get("big"))
        assert ckpt.mirror is not None
        assert ckpt.sha256 == sha
        shutil.rmtree(cache)

    def base(i: int) -> None:
        dst = tmp / f"cp{i}.bin"
        subprocess.run(["cp", str(mirror / sha), str(dst)], check=True)
        assert sha256sum(dst) == sha
        dst.unlink()

    return pairs(f"folder mirror, {size >> 20} MiB", ours, base, repeats)


def bench_s3(tmp: Path, moto: Moto, size: int, repeats: int) -> float:
    fs = moto.fs()
    fs.mkdir("bench-big")  # type: ignore[attr-defined]
    src = tmp / "s3source.bin"
    sha = random_file(src, size)
    # one PUT (boto3): moto may answer 500 to CompleteMultipartUpload of 512 MiB here
    import boto3

    with open(src, "rb") as body:
        boto3.client("s3", endpoint_url=moto.endpoint).put_object(
            Bucket="bench-big", Key=sha, Body=body
        )
    src.unlink()
    manifest = load_manifest(write_manifest(tmp / "s3", {"big": sha}, LocalHub.dead_endpoint()))

    def ours(i: int) -> None:
        cache = tmp / f"sc{i}"
        ckpt = Store(manifest, cache_dir=cache, mirrors=("s3://bench-big",)).resolve(
            manifest.get("big")
        )
        assert ckpt.mirror is not None
        assert ckpt.sha256 == sha
        shutil.rmtree(cache)

    def base(i: int) -> None:
        dst = tmp / f"get{i}.bin"
        moto.fs().get_file(f"bench-big/{sha}", str(dst))  # type: ignore[attr-defined]
        assert sha256sum(dst) == sha
        dst.unlink()

    ratio = pairs(f"S3 mirror (moto), {size >> 20} MiB", ours, base, repeats)

    def base_one_stream(i: int) -> None:  # s3fs's default splits the GET in 10 ranges
        dst = tmp / f"get1-{i}.bin"
        moto.fs().get_file(f"bench-big/{sha}", str(dst), max_concurrency=1)  # type: ignore[attr-defined]
        assert sha256sum(dst) == sha
        dst.unlink()

    pairs(
        f"S3 mirror (moto), {size >> 20} MiB vs get(max_concurrency=1)",
        ours,
        base_one_stream,
        repeats,
    )
    fs.rm(f"bench-big/{sha}")  # type: ignore[attr-defined]
    return ratio


def bench_fleet(tmp: Path, moto: Moto, files: int, file_mib: int) -> bool:
    fs = moto.fs()
    fs.mkdir("fleet")  # type: ignore[attr-defined]
    shas = {}
    for i in range(files):
        src = tmp / f"f{i}.bin"
        shas[f"ckpt{i}"] = random_file(src, file_mib << 20)
        fs.put_file(str(src), f"fleet/ckpts/{shas[f'ckpt{i}']}")  # type: ignore[attr-defined]
        src.unlink()
    ok = True
    with LocalHub() as hub:
        hub.faults.fail_next(10**9, 503)  # down: every request answered 503 (and logged)
        project = tmp / "fleet"
        write_manifest(project, shas, hub.endpoint)
        tests = "\n".join(
            textwrap.dedent(
                f"""
                import pytest

                @pytest.mark.requires_checkpoints("{name}")
                def test_{name}(checkpoints):
                    assert checkpoints["{name}"].size == {file_mib << 20}
                """
            )
            for name in shas
        )
        (project / "test_fleet.py").write_text(tests)
        env = {
            **os.environ,
            "PYTEST_CKPTS_MIRRORS": "s3://fleet/ckpts",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1])])),
        }
        jobs = []
        started = time.perf_counter()
        for j in range(3):
            report = tmp / f"report{j}.json"
            jobs.append(
                (
                    report,
                    subprocess.Popen(
                        [
                            sys.executable, "-m", "pytest", "-q", "-n", "2", "-p", "no:randomly",
                            "-p", "no:cacheprovider", "--ckpts=require",
                            f"--ckpts-cache-dir={tmp / f'cache{j}'}", f"--ckpts-report={report}",
                        ],
                        cwd=project,
                        env=env,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                        text=True,
                    ),
                )
            )  # fmt: skip
        total = files * (file_mib << 20)
        for j, (report, proc) in enumerate(jobs):
            out, _ = proc.communicate()
            rows = json.loads(report.read_text())["checkpoints"] if report.exists() else []
            read = sum(r["bytes"] for r in rows)
            mirrored = sum(1 for r in rows if r["source"] == "s3://fleet/ckpts/{sha256}")
            passed = proc.returncode == 0
            ok = ok and passed and read == total and mirrored == files
            print(
                f"fleet job {j}: exit {proc.returncode}, {mirrored}/{files} files from the "
                f"mirror, {read} bytes read (files total {total}: each object once)"
            )
            if not passed:
                print(out[-2000:])
        wall = time.perf_counter() - started
        print(
            f"fleet: 3 jobs x -n 2, hub down, S3 mirror: {wall:.1f}s wall, "
            f"{hub.stats.request_count} hub requests (target 0)"
        )
        ok = ok and hub.stats.request_count == 0
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fleet-files", type=int, default=6)
    parser.add_argument("--fleet-file-mib", type=int, default=8)
    parser.add_argument("--only", choices=["folder", "s3", "fleet"], default=None)
    args = parser.parse_args()
    size = args.size_mib << 20
    with tempfile.TemporaryDirectory() as tmp_str:
        tmp = Path(tmp_str)
        folder = s3 = 0.0
        fleet = True
        if args.only in (None, "folder"):
            folder = bench_folder(tmp, size, args.repeats)
        moto = Moto()
        try:
            if args.only in (None, "s3"):
                s3 = bench_s3(tmp, moto, size, args.repeats)
            if args.only in (None, "fleet"):
                fleet = bench_fleet(tmp, moto, args.fleet_files, args.fleet_file_mib)
        finally:
            moto.stop()
    print(
        f"summary: folder {folder:.2f}x, s3 {s3:.2f}x (targets <= 1.0x); fleet "
        f"{'ok' if fleet else 'FAILED'}"
    )


if __name__ == "__main__":
    main()
