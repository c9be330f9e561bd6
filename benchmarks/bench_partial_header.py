"""Memory of a huge safetensors header (issue 17 point 7): ``lock --tensors`` and a
partial read of one 8-byte tensor, each in a fresh process.

The file holds ~1.43 million one-byte tensors and one 8-byte tensor: a 99 MB header,
just under safetensors' own 100 MB limit. Printed per step: the peak RSS growth
(VmHWM after the step minus RSS before it, imports and the HTTP client warmed first),
as a multiple of the header size, and the wall time.

    python benchmarks/bench_partial_header.py [--tensors 1430000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from pytest_ckpts.testing import LocalHub

REPO = "bench/huge-header"

STEP = """
import io, json, sys, time
import huggingface_hub, filelock, yaml
from pytest_ckpts import load_manifest
from pytest_ckpts.cli import main
from pytest_ckpts.partial import PartialReader
from pytest_ckpts.store import Store

manifest, what = sys.argv[1], sys.argv[2]
if what == "read":
    import torch
    m = load_manifest(manifest)
    store = Store(m)
    store.hub.probe(m.get("llm"))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")

def status(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key + ":"))

before, t0 = status("VmRSS"), time.perf_counter()
if what == "lock":
    out = io.StringIO()
    code = main(["--manifest", manifest, "lock", "--tensors", "--from", sys.argv[3], "llm"], out=out)
    assert code == 0, out.getvalue()
else:
    got = PartialReader(store).read(m.get("llm"), ["x"])
    assert got.tensors["x"].tolist() == [7]
print(json.dumps({"grew": status("VmHWM") - before, "seconds": time.perf_counter() - t0}))
"""


def make_file(count: int) -> bytes:
    parts = [b'{"x":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}']
    parts += [
        b',"t%07d":{"dtype":"U8","shape":[1],"data_offsets":[%d,%d]}' % (i, 8 + i, 9 + i)
        for i in range(count)
    ]
    header = b"".join(parts) + b"}"
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + (7).to_bytes(8, "little") + bytes(count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tensors", type=int, default=1_430_000)
    args = parser.parse_args()
    raw = make_file(args.tensors)
    header = int.from_bytes(raw[:8], "little")
    with tempfile.TemporaryDirectory() as tmp_str, LocalHub() as hub:
        tmp = Path(tmp_str)
        (tmp / "src").mkdir()
        (tmp / "src" / "model.safetensors").write_bytes(raw)
        commit = hub.add_file(REPO, "model.safetensors", raw)
        manifest = tmp / "project" / "checkpoints" / "checkpoints.yaml"
        manifest.parent.mkdir(parents=True)
        manifest.write_text(
            "checkpoints:\n  llm:\n    hf_path: model.safetensors\n"
            f'    sha256: "{hashlib.sha256(raw).hexdigest()}"\n'
            f"config:\n  hf_repo: {REPO}\n  endpoint: {hub.endpoint}\n"
            f'  revision: "{commit}"\n'
            '  cache_dir: "./checkpoints"\n'
        )
        del raw
        print(f"header: {header / 1e6:.1f} MB, {args.tensors + 1} tensors")
        for what in ("lock", "read"):
            done = subprocess.run(
                [sys.executable, "-c", STEP, str(manifest), what, str(tmp / "src")],
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode:
                sys.exit(done.stderr)
            got = json.loads(done.stdout.strip().splitlines()[-1])
            print(
                f"{what}: peak RSS +{got['grew'] / 1e6:.0f} MB = {got['grew'] / header:.1f}x "
                f"the header, {got['seconds']:.1f} s"
            )
        size = (manifest.parent / "tensors" / "llm.json").stat().st_size
        print(f"index file: {size / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
