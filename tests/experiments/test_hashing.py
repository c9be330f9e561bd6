"""The experiment hash: stable across processes and orders, names what it refuses."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pytest_ckpts.errors import ExperimentTypeError
from pytest_ckpts.experiments import ExperimentHashGenerator
from pytest_ckpts.experiments.hashing import CanonicalWalker
from pytest_ckpts.experiments.payload import PayloadWalker, PlainWalker
from tests.experiment_models import CONFIG, UIDS, Act, make_model


def test_hash_is_16_hex_and_tracks_each_component() -> None:
    gen = ExperimentHashGenerator()
    base = gen.generate_hash(make_model(), CONFIG, UIDS)
    assert len(base) == 16
    assert int(base, 16) >= 0
    assert set(gen.get_component_hashes()) == {"model", "config", "data", "combined"}
    assert gen.get_last_hash() == base
    assert gen.has_changed(make_model(), CONFIG, UIDS) == (False, [])
    variants = {
        "added layer": (make_model(extra=True), CONFIG, UIDS, ["model"]),
        "changed width": (make_model(width=16), CONFIG, UIDS, ["model"]),
        "changed lr": (make_model(), {**CONFIG, "lr": 2e-3}, UIDS, ["config"]),
        "discarded uid": (make_model(), CONFIG, UIDS[1:], ["data"]),
    }
    for label, (model, config, uids, changed) in variants.items():
        assert ExperimentHashGenerator().generate_hash(model, config, uids) != base, label
        assert gen.has_changed(model, config, uids) == (True, changed), label


def test_retrained_weights_keep_the_hash() -> None:
    model = make_model()
    before = ExperimentHashGenerator().generate_hash(model, CONFIG, UIDS)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    assert ExperimentHashGenerator().generate_hash(model, CONFIG, UIDS) == before


def test_unhashable_value_names_its_key_path() -> None:
    with pytest.raises(TypeError, match=r"config\['optimizer'\]\['fn'\]"):
        ExperimentHashGenerator().generate_hash(None, {"optimizer": {"fn": object()}})
    with pytest.raises(TypeError, match=r"config\['layers'\]\[1\]: value of type .*function"):
        ExperimentHashGenerator().generate_hash(None, {"layers": [4, lambda x: x]})
    with pytest.raises(TypeError, match=r"expected a torch\.nn\.Module"):
        ExperimentHashGenerator().generate_hash(model="resnet")


def test_equal_values_hash_equal_whatever_their_type_or_order() -> None:
    gen = ExperimentHashGenerator()
    a = gen.generate_hash(None, {"lr": 0.1, "act": Act.RELU, "p": Path("a/b")}, ["b", "a"])
    b = gen.generate_hash(None, {"p": Path("a/b"), "act": Act.RELU, "lr": 0.1}, ("a", "b", "a"))
    assert a == b
    # distinct values that a naive str() or hash() would conflate stay distinct
    assert gen.generate_hash(None, {"x": 1}) != gen.generate_hash(None, {"x": "1"})
    assert gen.generate_hash(None, {"x": 1}) != gen.generate_hash(None, {"x": 1.0})
    assert gen.generate_hash(None, None, [1]) != gen.generate_hash(None, None, ["1"])
    assert gen.generate_hash(None, None, []) != gen.generate_hash(None, None, None)


SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from torch import nn
    from pytest_ckpts.experiments import ExperimentHashGenerator
    import enum
    class Act(enum.Enum):
        RELU = 1
    import dataclasses
    @dataclasses.dataclass
    class Sched:
        warmup: int = 10
        gamma: float = 0.5
    class Width(enum.IntEnum):
        SMALL = 8
    reverse = sys.argv[1] == "1"
    opt = [("name", "adam"), ("eps", 1e-8), ("betas", (0.9, 0.999))]
    items = [("lr", 0.001), ("layers", [4, 8, 2]), ("act", Act.RELU), ("out", Path("runs/x")),
             ("width", Width.SMALL), ("sched", Sched()), ("tags", {"x", "y", "z", "w"}),
             ("ids", frozenset(range(40))), ("mixed", {3: "a", "3": "b", 1.5: "c"})]
    if reverse:
        items.reverse()
        opt.reverse()
    config = dict(items)
    config["opt"] = dict(opt)
    uids = [f"uid{i}" for i in range(50)]
    if reverse:
        uids = sorted(uids, reverse=True) + ["uid7"]  # order and duplicates do not matter
    uids = set(uids) if sys.argv[2] == "set" else uids
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    print(ExperimentHashGenerator().generate_hash(model, config, uids))
    """
)


def test_hash_stable_across_processes_and_hash_seeds() -> None:
    hashes = set()
    for seed, reverse, kind in (("0", "0", "list"), ("1", "1", "set"), ("12345", "1", "list")):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        out = subprocess.run(
            [sys.executable, "-c", SCRIPT, reverse, kind],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        hashes.add(out.stdout.strip())
    assert len(hashes) == 1, hashes
    assert len(hashes.pop()) == 16


def test_hash_value_is_pinned() -> None:
    """Existing experiment directories are named by this hash: changing the canonical
    form would orphan every one of them, so it may only change on purpose."""
    config = {
        "lr": 0.001,
        "batch_size": 32,
        "optimizer": {"name": "adam", "betas": (0.9, 0.999)},
        "tags": {"a", "b"},
    }
    h = ExperimentHashGenerator().generate_hash(None, config, ["s1", "s2", "s3"])
    assert h == "4cff75d4ba5df4a4"


def test_importing_the_module_does_not_import_torch() -> None:
    code = "import sys, pytest_ckpts.experiments; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_architecture_hash_ignores_the_defining_module_but_not_the_class() -> None:
    def model_class(module: str, name: str = "Net") -> type[nn.Module]:
        def init(self: nn.Module) -> None:
            nn.Module.__init__(self)
            self.fc = nn.Linear(2, 3)

        return type(name, (nn.Module,), {"__init__": init, "__module__": module})

    as_script = model_class("__main__")()
    as_import = model_class("train")()
    renamed = model_class("train", "OtherNet")()
    gen = ExperimentHashGenerator()
    assert gen.generate_hash(as_script) == gen.generate_hash(as_import)
    assert gen.generate_hash(as_script) != gen.generate_hash(renamed)
    # a lazy module hashes (shape unknown) and its architecture file can be written
    assert len(gen.generate_hash(nn.LazyLinear(3))) == 16


@dataclasses.dataclass
class Sched:
    warmup: int = 10
    path: Path = Path("runs/a")


ACCEPTED = {
    "none": None,
    "flag": True,
    "n": 3,
    "lr": 1e-3,
    "name": "adam",
    "act": Act.RELU,
    "out": Path("runs/x"),
    "sched": Sched(),
    "np": np.float32(0.5),
    "steps": torch.tensor(7),
    "nested": {1: [1, 2, (3, 4)], "tags": frozenset({"b", "a"})},
}


@pytest.mark.parametrize(
    ("bad", "path"),
    [
        ({"fn": len}, "x['fn']"),
        ({"deep": [1, {"obj": object()}]}, "x['deep'][1]['obj']"),
        ({"sched": Sched(warmup=object())}, "x['sched']['warmup']"),  # type: ignore[arg-type]
        ({(1, 2): "tuple key"}, "x"),
        ({"arr": np.zeros(3)}, "x['arr']"),
        ({"s": {object()}}, "x['s']{...}"),
    ],
)
def test_hash_yaml_and_checkpoint_accept_and_refuse_the_same_values(
    bad: dict[object, object], path: str
) -> None:
    """One walk serves the hash, the config file and checkpoint metadata: a value one
    of them takes the others take, and a refusal names the same key path in all."""
    walkers = [CanonicalWalker(), PlainWalker(), PayloadWalker(torch)]
    copies = [w.walk(ACCEPTED, "x") for w in walkers]
    assert copies[1]["sched"] == {"warmup": 10, "path": "runs/a"}
    assert copies[1]["nested"] == {1: [1, 2, [3, 4]], "tags": ["a", "b"]}
    assert copies[2]["nested"][1][2] == (3, 4)  # a checkpoint keeps tuples
    assert torch.equal(copies[2]["steps"], torch.tensor(7))  # and 0-d tensors
    assert copies[1]["steps"] == 7
    assert copies[1]["np"] == 0.5
    assert type(copies[1]["np"]) is float
    for walker in walkers:
        with pytest.raises(ExperimentTypeError) as info:
            walker.walk(bad, "x")
        assert info.value.key_path == path, walker
        assert isinstance(info.value, TypeError)
        assert f"cannot {'hash' if walker is walkers[0] else 'store'} {path}" in str(info.value)
