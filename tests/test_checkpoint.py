"""Checkpoint.load() and Checkpoint.tensors(): memory maps, laziness, refusals that say what to do.

Real files written by torch and safetensors into tmp_path. Whether a file is mapped
is read from ``/proc/self/maps``: the kernel's own list of this process's mappings.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from pytest_ckpts import Checkpoint, CheckpointsError
from pytest_ckpts.errors import UnsafeCheckpointError

needs_proc_maps = pytest.mark.skipif(
    not Path("/proc/self/maps").exists(), reason="needs Linux /proc/self/maps"
)


class TrainConfig:
    """A config object of the kind training checkpoints pickle next to the weights."""

    def __init__(self, lr: float = 0.1) -> None:
        self.lr = lr


class OtherConfig:
    pass


def qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def ckpt(path: Path, name: str = "demo_model") -> Checkpoint:
    data = path.read_bytes()
    return Checkpoint(
        name=name,
        path=path,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        revision="0" * 40,
    )


def state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "encoder.weight": torch.randn(64, 32, generator=g),
        "encoder.bias": torch.randn(64, generator=g),
        "head.weight": torch.randn(8, 64, generator=g).to(torch.bfloat16),
        "steps": torch.arange(5),
    }


def mapped(path: Path) -> bool:
    """Whether this process currently has ``path`` memory-mapped."""
    target = os.path.realpath(path)
    with open("/proc/self/maps") as fh:
        return any(line.rstrip("\n").endswith(" " + target) for line in fh)


def assert_same(got: dict[str, Any], want: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k].dtype == v.dtype, k
        assert torch.equal(got[k], v), k


@pytest.fixture
def pt_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.pt"
    torch.save(state(), path)
    return path


@pytest.fixture
def legacy_file(tmp_path: Path) -> Path:
    path = tmp_path / "legacy.pt"
    torch.save(state(), path, _use_new_zipfile_serialization=False)
    return path


@pytest.fixture
def st_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.safetensors"
    save_file(state(), str(path))
    return path


@pytest.fixture
def training_file(tmp_path: Path) -> Path:
    """A training checkpoint: weights under ``state_dict`` plus a pickled config object."""
    path = tmp_path / "train.ckpt"
    torch.save(
        {
            "state_dict": {"encoder": {"weight": torch.ones(3, 2)}, "head.bias": torch.zeros(2)},
            "optimizer": {"lr": 0.1},
            "config": TrainConfig(0.5),
            "epoch": 3,
        },
        path,
    )
    return path


# ------------------------------------------------------------------ load(): torch files


@needs_proc_maps
def test_torch_load_maps_the_file_by_default(pt_file: Path) -> None:
    loaded = ckpt(pt_file).load()
    assert mapped(pt_file)
    assert_same(loaded, state())
    del loaded
    assert not mapped(pt_file)


@needs_proc_maps
def test_torch_load_mmap_false_reads_into_memory(pt_file: Path) -> None:
    loaded = ckpt(pt_file).load(mmap=False)
    assert not mapped(pt_file)
    assert_same(loaded, state())


def test_writing_a_loaded_tensor_never_changes_the_file(pt_file: Path, st_file: Path) -> None:
    for path in (pt_file, st_file):
        before = path.read_bytes()
        loaded = ckpt(path).load()
        loaded["encoder.weight"].add_(1.0)
        loaded["steps"][0] = 99
        assert path.read_bytes() == before, path
        assert_same(ckpt(path).load(), state())


@needs_proc_maps
def test_legacy_torch_file_falls_back_to_a_plain_load(legacy_file: Path) -> None:
    with pytest.raises(RuntimeError, match="mmap"):  # what a bare mmap=True load does
        torch.load(legacy_file, mmap=True, weights_only=True)
    loaded = ckpt(legacy_file).load()
    assert_same(loaded, state())
    assert not mapped(legacy_file)
    assert_same(ckpt(legacy_file).load(mmap=False), state())


def test_weights_only_false_is_the_escape_hatch(training_file: Path) -> None:
    loaded = ckpt(training_file).load(weights_only=False)
    assert isinstance(loaded["config"], TrainConfig)
    assert loaded["config"].lr == 0.5


# ------------------------------------------------------------------ map_location


@pytest.mark.parametrize(
    "location",
    ["cpu", torch.device("cpu"), None, {"cpu": "cpu"}],
    ids=["str", "device", "none", "dict"],
)
@pytest.mark.parametrize("kind", ["pt", "safetensors"])
def test_map_location_cpu(location: Any, kind: str, pt_file: Path, st_file: Path) -> None:
    path = pt_file if kind == "pt" else st_file
    loaded = ckpt(path).load(map_location=location)
    assert all(t.device.type == "cpu" for t in loaded.values())
    assert_same(loaded, state())


@pytest.mark.parametrize("kind", ["pt", "safetensors"])
def test_map_location_callable(kind: str, pt_file: Path, st_file: Path) -> None:
    path = pt_file if kind == "pt" else st_file
    seen: list[str] = []

    def to_cpu(storage: Any, location: str) -> Any:
        seen.append(location)
        return storage

    assert_same(ckpt(path).load(map_location=to_cpu), state())
    assert seen
    assert set(seen) == {"cpu"}

    def copy(storage: Any, location: str) -> Any:
        return storage.clone()

    assert_same(ckpt(path).load(map_location=copy), state())


@pytest.mark.parametrize("kind", ["pt", "safetensors"])
@pytest.mark.parametrize("location", ["meta", torch.device("meta")], ids=["str", "device"])
def test_map_location_meta(location: Any, kind: str, pt_file: Path, st_file: Path) -> None:
    path = pt_file if kind == "pt" else st_file
    loaded = ckpt(path).load(map_location=location)
    want = state()
    assert set(loaded) == set(want)
    for k, t in loaded.items():
        assert t.device.type == "meta"
        assert (t.shape, t.dtype) == (want[k].shape, want[k].dtype)


# ------------------------------------------------------------------ load(): safetensors


@needs_proc_maps
def test_safetensors_load_is_mapped(st_file: Path) -> None:
    loaded = ckpt(st_file).load()
    assert mapped(st_file)
    assert_same(loaded, state())
    del loaded
    assert not mapped(st_file)


@needs_proc_maps
def test_safetensors_mmap_false_owns_its_memory(st_file: Path) -> None:
    loaded = ckpt(st_file).load(mmap=False)
    assert not mapped(st_file)
    assert_same(loaded, state())


# ------------------------------------------------------------------ safe_globals, refusals


def test_safe_globals_allows_the_listed_type_only(training_file: Path) -> None:
    loaded = ckpt(training_file).load(safe_globals=[TrainConfig])
    assert isinstance(loaded["config"], TrainConfig)
    assert loaded["config"].lr == 0.5
    assert torch.equal(loaded["state_dict"]["encoder"]["weight"], torch.ones(3, 2))
    # the allow-list lasts for that call only: weights_only is back in force afterwards
    with pytest.raises(UnsafeCheckpointError):
        ckpt(training_file).load()


def test_refusal_names_checkpoint_path_type_and_both_ways_out(training_file: Path) -> None:
    with pytest.raises(UnsafeCheckpointError) as info:
        ckpt(training_file, name="mp_20_vae").load()
    err = info.value
    message = str(err)
    assert message.startswith("pytest-ckpts: checkpoint 'mp_20_vae'")
    assert str(training_file) in message
    assert qualified(TrainConfig) in message
    assert f".load(safe_globals=[{qualified(TrainConfig)}])" in message
    assert ".load(weights_only=False)" in message
    assert "trust" in message
    assert "\n" not in message
    assert (err.name, err.path, err.type_name) == (
        "mp_20_vae",
        training_file,
        qualified(TrainConfig),
    )
    # existing except clauses keep working, and torch's own error stays attached
    assert isinstance(err, pickle.UnpicklingError)
    assert isinstance(err, CheckpointsError)
    assert isinstance(err.__cause__, pickle.UnpicklingError)
    assert "Weights only load failed" in str(err.__cause__)


def test_refusal_after_partial_allow_list_names_the_next_type(tmp_path: Path) -> None:
    path = tmp_path / "two.ckpt"
    torch.save({"a": TrainConfig(), "b": OtherConfig()}, path)
    with pytest.raises(UnsafeCheckpointError) as info:
        ckpt(path).load(safe_globals=[TrainConfig])
    assert info.value.type_name == qualified(OtherConfig)
    expected = f"safe_globals=[{qualified(TrainConfig)}, {qualified(OtherConfig)}]"
    assert expected in str(info.value)
    loaded = ckpt(path).load(safe_globals=[TrainConfig, OtherConfig])
    assert isinstance(loaded["b"], OtherConfig)


def test_refusal_torch_cannot_name_still_says_what_to_do(tmp_path: Path) -> None:
    """A dict subclass is refused even when allow-listed: no type to suggest, torch's reason."""
    dict_subclass = type("Hyper", (dict,), {"__module__": __name__})
    sys.modules[__name__].Hyper = dict_subclass  # type: ignore[attr-defined]
    try:
        path = tmp_path / "hyper.ckpt"
        torch.save({"h": dict_subclass(a=1)}, path)
        with pytest.raises(UnsafeCheckpointError) as info:
            ckpt(path).load(safe_globals=[dict_subclass])
    finally:
        delattr(sys.modules[__name__], "Hyper")
    message = str(info.value)
    assert "'demo_model'" in message
    assert str(path) in message
    assert "torch: " in message
    assert "weights_only=False" in message


def test_corrupt_file_is_not_called_unsafe(tmp_path: Path) -> None:
    path = tmp_path / "broken.pt"
    path.write_bytes(b"\x80\x02garbage that is not a checkpoint")
    with pytest.raises(pickle.UnpicklingError) as info:
        ckpt(path).load()
    assert not isinstance(info.value, UnsafeCheckpointError)  # torch's own message stands
    assert "Unsupported operand" in str(info.value)


# ------------------------------------------------------------------ tensors()


def test_tensors_of_safetensors_is_lazy_and_read_only(st_file: Path) -> None:
    want = state()
    with ckpt(st_file).tensors() as tensors:
        assert sorted(tensors) == sorted(want)
        assert len(tensors) == len(want)
        assert "head.weight" in tensors
        assert "nope" not in tensors
        head = tensors["head.weight"]
        assert head.dtype == torch.bfloat16
        assert torch.equal(head, want["head.weight"])
        with pytest.raises(KeyError, match=r"did you mean 'encoder\.bias'"):
            tensors["encoder.bais"]
        with pytest.raises(TypeError):
            tensors["x"] = torch.ones(1)  # type: ignore[index]
        if Path("/proc/self/maps").exists():
            assert mapped(st_file)
    assert torch.equal(head, want["head.weight"])  # taken tensors outlive the block
    with pytest.raises(ValueError, match="after its `with` block"):
        tensors["head.weight"]


@needs_proc_maps
def test_tensors_of_torch_file_maps_it(pt_file: Path) -> None:
    with ckpt(pt_file).tensors() as tensors:
        assert mapped(pt_file)
        assert sorted(tensors) == sorted(state())
        assert torch.equal(tensors["encoder.bias"], state()["encoder.bias"])
    assert not mapped(pt_file)


def test_tensors_of_training_checkpoint_flattens_state_dict(training_file: Path) -> None:
    with pytest.raises(UnsafeCheckpointError) as info, ckpt(training_file).tensors():
        pass
    assert f".tensors(safe_globals=[{qualified(TrainConfig)}])" in str(info.value)
    assert ".load(weights_only=False)" in str(info.value)
    with ckpt(training_file).tensors(safe_globals=[TrainConfig]) as tensors:
        assert sorted(tensors) == ["encoder.weight", "head.bias"]
        assert torch.equal(tensors["encoder.weight"], torch.ones(3, 2))


def test_tensors_of_legacy_file(legacy_file: Path) -> None:
    with ckpt(legacy_file).tensors() as tensors:
        assert_same(dict(tensors), state())


def test_tensors_of_nested_top_level_skips_non_tensors(tmp_path: Path) -> None:
    path = tmp_path / "nested.pt"
    torch.save({"vae": {"enc": {"w": torch.ones(1)}}, "step": 7, "b": torch.zeros(1)}, path)
    with ckpt(path).tensors() as tensors:
        assert dict(tensors).keys() == {"vae.enc.w", "b"}


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (torch.ones(2), r"holds a Tensor, not a mapping of tensors; use \.load\(\)"),
        ({"a.b": torch.ones(1), "a": {"b": torch.ones(1)}}, r"names tensor 'a\.b' twice"),
    ],
    ids=["bare-tensor", "name-clash"],
)
def test_tensors_refuses_what_it_cannot_name(tmp_path: Path, payload: Any, match: str) -> None:
    path = tmp_path / "odd.pt"
    torch.save(payload, path)
    with pytest.raises(ValueError, match=match) as info, ckpt(path, name="odd").tensors():
        pass
    assert "checkpoint 'odd'" in str(info.value)
    assert str(path) in str(info.value)


def test_checkpoint_keeps_fields_and_fspath(pt_file: Path) -> None:
    c = ckpt(pt_file)
    assert os.fspath(c) == str(pt_file)
    assert torch.equal(torch.load(c, weights_only=True)["steps"], torch.arange(5))
    with pytest.raises(AttributeError):
        c.name = "other"  # type: ignore[misc]


def test_plugin_import_does_not_import_torch() -> None:
    """Loading lives in pytest_ckpts._loading, imported when a checkpoint is loaded."""
    import subprocess

    code = (
        "import sys, pytest_ckpts, pytest_ckpts.checkpoint, pytest_ckpts._loading, "
        "pytest_ckpts.baseline, pytest_ckpts.plugin; "
        "print(sorted(m for m in ('torch', 'safetensors') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]"
