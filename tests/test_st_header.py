"""safetensors headers (pytest_ckpts._st_header): valid orders, and bounded memory for a big header."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pytest_ckpts.testing import LocalHub
from tests import partial_files
from tests.helpers import REPO
from tests.partial_files import HF_PATH

pytest.importorskip("torch")
pytest.importorskip("safetensors")


data = partial_files.data  # shared fixtures (tests/partial_files.py)
manifest = partial_files.manifest


def _file(header: bytes, body: bytes) -> bytes:
    return len(header).to_bytes(8, "little") + header + body


MEMORY_SCRIPT = textwrap.dedent(
    """
    import io, json, sys
    import huggingface_hub, filelock, yaml  # their memory is not the header's
    from pytest_ckpts import load_manifest
    from pytest_ckpts.cli import main
    from pytest_ckpts.partial import PartialReader
    from pytest_ckpts.store import Store
    import pytest_ckpts.hub_client, pytest_ckpts.publish

    manifest, what = sys.argv[1], sys.argv[2]
    if what == "read":  # torch, the HTTP client and its first request: not the header's
        import torch
        m = load_manifest(manifest)
        store = Store(m)
        store.hub.probe(m.get("llm"))
    with open("/proc/self/clear_refs", "w") as f:  # peak RSS := current RSS (Linux >= 4.0)
        f.write("5")

    def peak():
        # VmHWM, not getrusage's ru_maxrss: after exec that also counts the pre-exec
        # (forked pytest) image, which is larger than anything measured here
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))

    before = peak()
    if what == "lock":
        out = io.StringIO()
        code = main(["--manifest", manifest, "lock", "--tensors", "--from", sys.argv[3], "llm"], out=out)
        assert code == 0, out.getvalue()
    else:
        got = PartialReader(store).read(m.get("llm"), ["x"])
        assert got.tensors["x"].tolist() == [7], got.tensors
    print(json.dumps({"grew": peak() - before}))
    """
)


def _many_tensors_file(count: int) -> bytes:
    """A valid safetensors file with ``count`` one-byte tensors and one 8-byte tensor."""
    parts = [b'{"x":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}']
    parts += [
        b',"t%07d":{"dtype":"U8","shape":[1],"data_offsets":[%d,%d]}' % (i, 8 + i, 9 + i)
        for i in range(count)
    ]
    header = b"".join(parts) + b"}"
    header += b" " * (-len(header) % 8)
    return _file(header, (7).to_bytes(8, "little") + bytes(count))


def test_header_listing_tensors_out_of_file_order_is_valid(tmp_path: Path) -> None:
    """safetensors sorts by offsets when it reads: a header in another order is fine."""
    from safetensors import safe_open

    from pytest_ckpts.tensor_index import build_index

    header = (
        b'{"c":{"dtype":"U8","shape":[2],"data_offsets":[4,6]},'
        b'"e":{"dtype":"U8","shape":[0],"data_offsets":[2,2]},'
        b'"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},'
        b'"b":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}}'
    )
    raw = _file(header, b"abcdef")
    path = tmp_path / "x.safetensors"
    path.write_bytes(raw)
    with safe_open(str(path), framework="pt") as f:
        assert bytes(f.get_tensor("c").tolist()) == b"ef"
    doc = json.loads(build_index(path, hashlib.sha256(raw).hexdigest()))
    assert [doc["tensors"][n]["begin"] - 8 - len(header) for n in "abce"] == [0, 2, 4, 2]


@pytest.mark.slow
def test_big_header_costs_a_few_times_its_size(project: Path, hub: LocalHub) -> None:
    """Lock and a read of one 8-byte tensor stay within a few times the header size."""
    from tests.partial_files import write_manifest

    raw = _many_tensors_file(100_000)  # main f51f74f: lock 30x, read 22x the header
    header = int.from_bytes(raw[:8], "little")
    assert header > 6_000_000
    src = project / "src"
    (src / HF_PATH).parent.mkdir(parents=True)
    (src / HF_PATH).write_bytes(raw)
    commit = hub.add_file(REPO, HF_PATH, raw)
    manifest = write_manifest(project, hub.endpoint, raw, revision=commit)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    grew = {}
    for what in ("lock", "read"):
        done = subprocess.run(
            [sys.executable, "-c", MEMORY_SCRIPT, str(manifest), what, str(src)],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        grew[what] = json.loads(done.stdout.strip().splitlines()[-1])["grew"]
    limit = 6 * header + 32 * 2**20
    assert grew["lock"] <= limit, (grew, header)
    assert grew["read"] <= limit, (grew, header)
