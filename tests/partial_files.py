"""Shared setup of the partial-read tests: a real ``.safetensors`` file on the local hub."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_ckpts import load_manifest
from pytest_ckpts.partial import Partial, PartialReader
from pytest_ckpts.store import Store
from tests.helpers import REPO, cli

if TYPE_CHECKING:
    from pytest_ckpts.testing import LocalHub

HF_PATH = "llm/model.safetensors"


def make_tensors(big: int = 256) -> dict[str, Any]:
    """Tensors of several dtypes; ``block.w`` is ``big`` x ``big`` float32."""
    import torch

    g = torch.Generator().manual_seed(0)
    return {
        "embed": torch.randn(64, 32, generator=g),
        "norm": torch.randn(32, generator=g).to(torch.bfloat16),
        "ids": torch.arange(7, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "half": torch.randn(5, 3, generator=g).to(torch.float16),
        "block.w": torch.randn(big, big, generator=g),
        "empty": torch.zeros(0, 4),
    }


def safetensors_bytes(tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> bytes:
    from safetensors.torch import save

    return bytes(save(tensors, metadata=metadata))


def write_manifest(
    root: Path,
    endpoint: str,
    data: bytes,
    *,
    revision: str = "main",
    name: str = "llm",
    extra: str = "",
) -> Path:
    sha = hashlib.sha256(data).hexdigest()
    path = root / "checkpoints" / "checkpoints.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "checkpoints:\n"
        f"  {name}:\n"
        f"    hf_path: {HF_PATH}\n"
        f'    sha256: "{sha}"\n'
        f"{extra}"
        "config:\n"
        f"  hf_repo: {REPO}\n"
        '  cache_dir: "./checkpoints"\n'
        f"  endpoint: {endpoint}\n"
        f'  revision: "{revision}"\n',
        encoding="utf-8",
    )
    return path


def publish(
    root: Path, hub: LocalHub, data: bytes, *, pinned: bool = True, name: str = "llm"
) -> Path:
    """Commit ``data`` at ``HF_PATH`` and write a manifest for it (not yet indexed)."""
    commit = hub.add_file(REPO, HF_PATH, data)
    return write_manifest(
        root, hub.endpoint, data, revision=commit if pinned else "main", name=name
    )


def index(manifest: Path, *names: str, source: Path | None = None) -> str:
    """Run ``pytest-ckpts lock --tensors`` (into a cache of its own) and return its output."""
    extra = ["--from", str(source)] if source is not None else []
    cache = manifest.parent.parent / "maintainer-cache"
    code, out = cli(
        "--manifest",
        str(manifest),
        "--cache-dir",
        str(cache),
        "lock",
        "--tensors",
        *extra,
        *(names or ("llm",)),
    )
    assert code == 0, out
    return out


def read_tensors(manifest: Path, names: list[str], *, offline: bool = False) -> Partial:
    """Read ``names`` of the entry ``llm`` of ``manifest`` through a fresh store."""
    m = load_manifest(manifest)
    return PartialReader(Store(m, offline=offline)).read(m.get("llm"), names)


def served_bytes(hub: LocalHub) -> int:
    """Bytes of the safetensors file the hub has served so far."""
    return sum(r.bytes_sent for r in hub.stats.requests if "model.safetensors" in r.path)


def assert_one_line(exc: BaseException, *words: str) -> None:
    """``exc`` says all of ``words`` in one line."""
    message = str(exc)
    assert "\n" not in message, message
    for word in words:
        assert word in message, (word, message)


def index_rows(manifest: Path) -> dict[str, Any]:
    """The rows of the committed tensor index of ``llm``."""
    doc = json.loads((manifest.parent / "tensors" / "llm.json").read_text())
    rows: dict[str, Any] = doc["tensors"]
    return rows


# The published, indexed safetensors file test_pieces, test_tensor_index and test_st_header
# start from; each module takes these fixtures as its own (``data = partial_files.data``).


@pytest.fixture
def data() -> bytes:
    """A safetensors file of :func:`make_tensors` (big=512) with metadata."""
    return safetensors_bytes(make_tensors(big=512), metadata={"arch": "test"})


@pytest.fixture
def manifest(project: Path, hub: LocalHub, data: bytes) -> Path:
    """``data`` published on the local hub with its tensor index locked; hub counters reset."""
    path = publish(project, hub, data)
    index(path)
    hub.stats.reset()
    return path
