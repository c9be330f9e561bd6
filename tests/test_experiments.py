"""Hash-named experiment directories (SPEC §7): stable hashes, seed layout, index, retention."""

from __future__ import annotations

import enum
import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch
from torch import nn

from pytest_ckpts.errors import ChecksumMismatchError
from pytest_ckpts.experiments import CheckpointManager, ExperimentHashGenerator
from pytest_ckpts.integrity import calculate_sha256
from pytest_ckpts.testing.experiments import assert_experiment_layout, assert_state_equal


def make_model(width: int = 8, extra: bool = False) -> nn.Module:
    layers: list[nn.Module] = [nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 2)]
    if extra:
        layers.append(nn.Tanh())
    return nn.Sequential(*layers)


CONFIG = {
    "lr": 1e-3,
    "batch_size": 32,
    "optimizer": {"name": "adam", "betas": (0.9, 0.999)},
    "tags": {"a", "b", "c"},
}
UIDS = [f"sample_{i}" for i in range(20)]


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


class Act(enum.Enum):
    RELU = 1


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


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: int) -> None:
    for _ in range(steps):
        loss = model(torch.randn(8, 4)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_training_loop_over_two_hash_changes_produces_the_seed_layout(tmp_path: Path) -> None:
    torch.manual_seed(0)
    mgr = CheckpointManager(tmp_path / "root")
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    config = dict(CONFIG)
    data_file = tmp_path / "samples.h5"
    data_file.write_bytes(b"HDF5-ish sample index")
    h1, new1 = mgr.update_experiment_hash(model, config, UIDS)
    assert new1
    mgr.save_data_backup(data_file)
    for step in (100, 200):
        train(model, opt, 3)
        mgr.save_model_checkpoint(model, step=step, optimizer=opt, metadata={"loss": 1.0 / step})
    config["batch_size"] = 64  # a hyperparameter changes mid-run: new hash
    h2, new2 = mgr.update_experiment_hash(model, config, UIDS)
    assert new2
    assert h2 != h1
    assert mgr.update_experiment_hash(model, config, UIDS) == (h2, False)
    h3, _ = mgr.update_experiment_hash(model, config, UIDS[:-2])  # samples discarded
    mgr.save_data_backup(data_file)
    train(model, opt, 3)
    mgr.save_model_checkpoint(model, step=100, optimizer=opt, metadata={"loss": 0.5})
    every = sorted(
        p.relative_to(tmp_path / "root").as_posix()
        for p in (tmp_path / "root").rglob("*")
        if p.is_file()
    )
    # filelock may leave its (empty) lock file; nothing else hidden, no temp files
    files = [f for f in every if not f.endswith("/.index.lock")]
    assert all(not Path(f).name.startswith(".") for f in files), every
    dirs = sorted(
        p.relative_to(tmp_path / "root").as_posix()
        for p in (tmp_path / "root").rglob("*")
        if p.is_dir()
    )
    assert dirs == sorted(
        ["checkpoints", "data", "logs"]
        + [f"checkpoints/{h}{sub}" for h in (h1, h2, h3) for sub in ("", "/data", "/hp", "/model")]
    )
    assert files == sorted(
        [
            f"checkpoints/{h1}/data/{h1}_data.h5",
            f"checkpoints/{h1}/hp/{h1}_config.yaml",
            f"checkpoints/{h1}/index.json",
            f"checkpoints/{h1}/model/{h1}_architecture.pkl",
            f"checkpoints/{h1}/model/{h1}_architecture.txt",
            f"checkpoints/{h1}/model/{h1}_step_000100.pt",
            f"checkpoints/{h1}/model/{h1}_step_000200.pt",
            f"checkpoints/{h2}/hp/{h2}_config.yaml",
            f"checkpoints/{h2}/model/{h2}_architecture.pkl",
            f"checkpoints/{h2}/model/{h2}_architecture.txt",
            f"checkpoints/{h3}/data/{h3}_data.h5",
            f"checkpoints/{h3}/hp/{h3}_config.yaml",
            f"checkpoints/{h3}/index.json",
            f"checkpoints/{h3}/model/{h3}_architecture.pkl",
            f"checkpoints/{h3}/model/{h3}_architecture.txt",
            f"checkpoints/{h3}/model/{h3}_step_000100.pt",
        ]
    )
    assert (tmp_path / "root" / "data").is_dir()
    assert (tmp_path / "root" / "logs").is_dir()
    assert mgr.list_experiment_hashes() == sorted({h1, h2, h3})
    assert mgr.load_config(h2)["batch_size"] == 64
    assert mgr.load_config(h1)["batch_size"] == 32
    info = mgr.get_checkpoint_info(h1)
    assert info["model_checkpoints"] == [f"{h1}_step_000100.pt", f"{h1}_step_000200.pt"]
    assert info["architecture_saved"]
    assert_experiment_layout(tmp_path / "root", h1, steps=[100, 200], config=True, data_backup=True)


def test_load_latest_restores_model_and_optimizer_bit_exactly(tmp_path: Path) -> None:
    torch.manual_seed(1)
    mgr = CheckpointManager(tmp_path)
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    h, _ = mgr.update_experiment_hash(model, CONFIG, UIDS)
    train(model, opt, 5)
    mgr.save_model_checkpoint(model, step=1, optimizer=opt)
    train(model, opt, 5)
    mgr.save_model_checkpoint(model, step=2, optimizer=opt)
    expected_model = {k: v.clone() for k, v in model.state_dict().items()}
    expected_opt = opt.state_dict()
    fresh = make_model()
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=1e-2)
    data = CheckpointManager(tmp_path).load_latest_checkpoint(
        fresh, exp_hash=h, optimizer=fresh_opt
    )
    assert data is not None
    assert data["step"] == 2
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, expected_model[k])
    got = fresh_opt.state_dict()
    assert got["state"].keys() == expected_opt["state"].keys()
    for pid, state in expected_opt["state"].items():
        assert got["state"][pid].keys() == state.keys()
        for key, value in state.items():
            assert torch.equal(got["state"][pid][key], value)
    assert got["param_groups"] == expected_opt["param_groups"]
    assert_state_equal(fresh.state_dict(), expected_model, name="model")
    assert_state_equal(got, expected_opt, name="optimizer")
    # and training continues identically from the restored state
    torch.manual_seed(7)
    train(model, opt, 2)
    torch.manual_seed(7)
    train(fresh, fresh_opt, 2)
    assert_state_equal(fresh.state_dict(), model.state_dict(), name="model after resume")


def test_killed_save_leaves_no_partial_file_and_latest_still_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mgr = CheckpointManager(tmp_path)
    model = make_model()
    h, _ = mgr.update_experiment_hash(model, CONFIG, UIDS)
    mgr.save_model_checkpoint(model, step=100, metadata={"loss": 0.5})
    index_before = (tmp_path / "checkpoints" / h / "index.json").read_bytes()
    real_save = torch.save

    def killed_save(obj: object, f: object, *args: object, **kwargs: object) -> None:
        import io

        buf = io.BytesIO()
        real_save(obj, buf)
        f.write(buf.getvalue()[: buf.tell() // 2])  # type: ignore[attr-defined]
        raise KeyboardInterrupt("killed mid-save")

    with monkeypatch.context() as m:
        m.setattr(torch, "save", killed_save)
        with pytest.raises(KeyboardInterrupt, match="killed mid-save"):
            mgr.save_model_checkpoint(model, step=200, metadata={"loss": 0.1})
    model_dir = tmp_path / "checkpoints" / h / "model"
    assert sorted(p.name for p in model_dir.iterdir()) == [
        f"{h}_architecture.pkl",
        f"{h}_architecture.txt",
        f"{h}_step_000100.pt",
    ]
    assert (tmp_path / "checkpoints" / h / "index.json").read_bytes() == index_before
    assert mgr.latest()["step"] == 100  # type: ignore[index]
    assert mgr.verify() == []
    data = mgr.load_latest_checkpoint(make_model())
    assert data is not None
    assert data["step"] == 100
    assert data["metrics"] == {"loss": 0.5}


def test_retention_keeps_best_and_latest(tmp_path: Path) -> None:
    mgr = CheckpointManager(
        tmp_path, keep_last=2, keep_best=1, best_metric="val_loss", best_mode="min"
    )
    model = make_model()
    h, _ = mgr.update_experiment_hash(model, CONFIG, UIDS)
    losses = {1: 0.9, 2: 0.1, 3: 0.5, 4: 0.7, 5: 0.6, 6: 0.8}
    for step, loss in losses.items():
        mgr.save_model_checkpoint(model, step=step, metadata={"val_loss": loss})
    assert [e["step"] for e in mgr.checkpoints()] == [2, 5, 6]
    assert mgr.best()["step"] == 2  # type: ignore[index]
    assert mgr.latest()["step"] == 6  # type: ignore[index]
    files = sorted(p.name for p in (mgr.exp_dir() / "model").glob("*_step_*.pt"))
    assert files == [f"{h}_step_{s:06d}.pt" for s in (2, 5, 6)]
    assert mgr.best("val_loss", mode="max")["step"] == 6  # type: ignore[index]
    assert mgr.verify() == []
    best = mgr.load_best_checkpoint(make_model())
    assert best is not None
    assert best["step"] == 2


def test_retention_never_deletes_best_or_latest_even_with_keep_last_1(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, keep_last=1, best_metric="acc", best_mode="max")
    model = make_model()
    mgr.update_experiment_hash(model, CONFIG, UIDS)
    for step, acc in ((10, 0.5), (20, 0.9), (30, 0.7), (40, 0.6)):
        mgr.save_model_checkpoint(model, step=step, metadata={"acc": acc, "note": "x"})
    assert [e["step"] for e in mgr.checkpoints()] == [20, 40]
    # a step saved without the metric is kept as latest, and the best stays
    mgr.save_model_checkpoint(model, step=50)
    assert [e["step"] for e in mgr.checkpoints()] == [20, 50]
    # ties go to the later step in best() and retention alike
    mgr.save_model_checkpoint(model, step=60, metadata={"acc": 0.9})
    assert mgr.best()["step"] == 60  # type: ignore[index]
    assert [e["step"] for e in mgr.checkpoints()] == [60]


def test_retention_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="keep_best needs best_metric"):
        CheckpointManager("unused", keep_best=2)
    with pytest.raises(ValueError, match="keep_last must be a positive int"):
        CheckpointManager("unused", keep_last=0)
    with pytest.raises(ValueError, match="'min' or 'max'"):
        CheckpointManager("unused", best_mode="lowest")


def test_index_sha256_detects_corruption(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path)
    model = make_model()
    mgr.update_experiment_hash(model, CONFIG, UIDS)
    path = mgr.save_model_checkpoint(model, step=1)
    assert mgr.verify() == []
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    problems = mgr.verify()
    assert len(problems) == 1
    assert path.name in problems[0]
    index = json.loads((mgr.exp_dir() / "index.json").read_text())
    assert index["checkpoints"][0]["size"] == len(data)
    assert index["checkpoints"][0]["sha256"] != calculate_sha256(path)
    with pytest.raises(ChecksumMismatchError, match="Checksum mismatch") as exc_info:
        mgr.load_latest_checkpoint(make_model())
    assert path.name in str(exc_info.value)
    path.unlink()
    assert mgr.verify() == [f"{path.name}: missing ({path})"]


def test_full_model_pickle_needs_explicit_opt_in(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path)
    model = make_model()
    mgr.update_experiment_hash(model, CONFIG, UIDS)
    with pytest.raises(PermissionError, match="trust_pickle=True"):
        mgr.load_architecture()
    restored = mgr.load_architecture(trust_pickle=True)
    assert str(restored) == str(model)


def test_unpicklable_model_warns_and_still_checkpoints(tmp_path: Path) -> None:
    class Local(nn.Module):  # defined in a function: pickle cannot find it by name
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2)

    mgr = CheckpointManager(tmp_path)
    model = Local()
    with pytest.warns(RuntimeWarning, match="cannot be pickled"):
        h, _ = mgr.update_experiment_hash(model, {"lr": 0.1}, ["a"])
    mgr.save_model_checkpoint(model, step=1)
    names = sorted(p.name for p in (tmp_path / "checkpoints" / h / "model").iterdir())
    assert names == [f"{h}_architecture.txt", f"{h}_step_000001.pt"]
    text = (tmp_path / "checkpoints" / h / "model" / f"{h}_architecture.txt").read_text()
    assert "fc.weight\t(2, 2)\ttorch.float32" in text


def test_registry_like_the_seed_ledgers(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path)
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mgr.register_model("net", model)
    mgr.register_optimizer("sgd", opt)
    mgr.update_experiment_hash(model, CONFIG, UIDS)
    mgr.save_model_checkpoint(model_name="net", optimizer_name="sgd", step=3)
    data = mgr.load_latest_checkpoint(model_name="net", optimizer_name="sgd")
    assert data is not None
    assert "optimizer_state_dict" in data


def test_layout_assertion_lists_every_problem(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path)
    model = make_model()
    h, _ = mgr.update_experiment_hash(model, CONFIG, UIDS)
    path = mgr.save_model_checkpoint(model, step=100)
    assert_experiment_layout(tmp_path, h, steps=[100], config=True)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes
    path.write_bytes(bytes(data))
    (path.parent / f".{path.name}.abc.tmp").write_bytes(b"partial")
    with pytest.raises(AssertionError) as exc_info:
        assert_experiment_layout(tmp_path, h, steps=[100, 200], data_backup=True)
    message = str(exc_info.value)
    assert f"no data backup in checkpoints/{h}/data" in message
    assert "temp files left by an interrupted write" in message
    assert f"expected ['{h}_step_000100.pt', '{h}_step_000200.pt']" in message
    assert f"{path.name}: sha256" in message


def test_checkpoint_manager_fixture(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import torch
        from torch import nn
        from pytest_ckpts.testing.experiments import assert_experiment_layout, assert_state_equal

        def test_loop(checkpoint_manager, tmp_path):
            model = nn.Linear(2, 2)
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            h, is_new = checkpoint_manager.update_experiment_hash(model, {"lr": 0.1}, ["a"])
            assert is_new
            for step in (100, 200):
                checkpoint_manager.save_model_checkpoint(
                    model, step=step, optimizer=opt, metadata={"loss": 1 / step}
                )
            assert checkpoint_manager.root == tmp_path / "logs"
            assert_experiment_layout(checkpoint_manager.root, h, steps=[100, 200], config=True)
            assert checkpoint_manager.best("loss")["step"] == 200

        def test_layout_failure_is_readable(checkpoint_manager):
            h, _ = checkpoint_manager.update_experiment_hash(nn.Linear(2, 2), {"lr": 0.1}, ["a"])
            assert_experiment_layout(checkpoint_manager.root, h, steps=[100])
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*AssertionError: experiment * is not laid out as expected:*", "*step checkpoints*"]
    )
    result.stdout.no_fnmatch_line("*def _index_problems*")


def test_docs_example_runs(pytester: pytest.Pytester) -> None:
    doc = Path(__file__).parent.parent / "docs" / "experiments.md"
    example = doc.read_text("utf-8").split("```python\n", 1)[1].split("```", 1)[0]
    pytester.makepyfile(test_doc_example=example)
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


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


def test_retention_as_save_arguments_overrides_the_constructor(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path)  # no retention configured
    model = make_model()
    mgr.update_experiment_hash(model, CONFIG, UIDS)
    for step, loss in ((1, 0.3), (2, 0.9), (3, 0.8)):
        mgr.save_model_checkpoint(model, step=step, metadata={"loss": loss})
    assert [e["step"] for e in mgr.checkpoints()] == [1, 2, 3]
    mgr.save_model_checkpoint(
        model, step=4, metrics={"loss": 0.7}, keep_last=1, keep_best=1, best_metric="loss"
    )
    assert [e["step"] for e in mgr.checkpoints()] == [1, 4]  # best (0.3) and latest
    names = sorted(p.name for p in (mgr.exp_dir() / "model").glob("*_step_*.pt"))
    assert names == [
        f"{mgr.current_exp_hash}_step_000001.pt",
        f"{mgr.current_exp_hash}_step_000004.pt",
    ]
    with pytest.raises(ValueError, match="keep_best needs best_metric"):
        mgr.save_model_checkpoint(model, step=5, keep_best=2)
    with pytest.raises(ValueError, match="keep_last must be a positive int"):
        mgr.save_model_checkpoint(model, step=5, keep_last=0)
    assert [e["step"] for e in mgr.checkpoints()] == [1, 4]  # refused before writing


def test_metrics_and_metadata_round_trip_under_weights_only(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path)
    model = make_model()
    h, _ = mgr.update_experiment_hash(model, CONFIG, UIDS)
    loss = torch.tensor(0.25)
    mgr.save_model_checkpoint(
        model,
        step=10,
        metadata={
            "loss": loss,  # a 0-d tensor, as a training step returns it
            "epoch": 3,
            "notes": "after lr drop",
            "act": Act.RELU,
            "out": Path("runs/x"),
            "hist": torch.arange(3),
            "shape": (4, 2),
            "nan": float("nan"),
        },
        metrics={"acc": torch.tensor(0.5, dtype=torch.float64)},
    )
    entry = mgr.latest()
    assert entry is not None
    assert entry["metrics"] == {"loss": 0.25, "epoch": 3.0, "acc": 0.5}  # finite only
    data = torch.load(mgr.checkpoint_path(entry), weights_only=True)
    assert data["metadata"]["notes"] == "after lr drop"
    assert data["metadata"]["act"] == "RELU"
    assert data["metadata"]["out"] == "runs/x"
    assert data["metadata"]["shape"] == (4, 2)
    assert torch.equal(data["metadata"]["hist"], torch.arange(3))
    assert torch.equal(data["metadata"]["loss"], loss)
    assert data["metrics"]["loss"] == 0.25
    assert data["metrics"]["nan"] != data["metrics"]["nan"]  # kept in the file, not the index
    assert data["exp_hash"] == h

    with pytest.raises(TypeError, match=r"metadata\['extra'\]\['fn'\].*weights_only"):
        mgr.save_model_checkpoint(model, step=20, metadata={"extra": {"fn": object()}})
    with pytest.raises(TypeError, match=r"metrics\['acc'\] must be a real number"):
        mgr.save_model_checkpoint(model, step=20, metrics={"acc": "high"})
    assert [e["step"] for e in mgr.checkpoints()] == [10]
    assert not list((mgr.exp_dir() / "model").glob("*.tmp"))


def test_config_yaml_keeps_key_types_and_refuses_objects(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path)
    config = {
        "lr": torch.tensor(0.5).item(),
        "steps": torch.tensor(7),  # 0-d tensor: hashed and stored by value
        "mixed": {3: "int key", "3": "str key"},
        "tags": {"b", "a"},
        "betas": (0.9, 0.999),
    }
    h, _ = mgr.update_experiment_hash(None, config, ["a"])
    assert mgr.load_config(h) == {
        "lr": 0.5,
        "steps": 7,
        "mixed": {3: "int key", "3": "str key"},
        "tags": ["a", "b"],
        "betas": [0.9, 0.999],
    }
    with pytest.raises(TypeError, match=r"config\['optimizer'\]\['fn'\]"):
        mgr.save_config({"optimizer": {"fn": print}})
    with pytest.raises(TypeError, match="single str"):
        mgr.update_experiment_hash(None, config, "sample_1")


def test_concurrent_savers_lose_no_index_entry(tmp_path: Path) -> None:
    model = make_model()
    managers = [CheckpointManager(tmp_path) for _ in range(2)]
    hashes = {m.update_experiment_hash(model, CONFIG, UIDS)[0] for m in managers}
    assert len(hashes) == 1
    errors: list[BaseException] = []

    def saver(mgr: CheckpointManager, first: int) -> None:
        try:
            for step in range(first, 24, 2):
                mgr.save_model_checkpoint(model, step=step, metadata={"loss": step / 10})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=saver, args=(m, i)) for i, m in enumerate(managers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [e["step"] for e in managers[0].checkpoints()] == list(range(24))
    assert managers[1].verify() == []


def test_verify_reports_unindexed_files_and_strict_raises(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path)
    model = make_model()
    h, _ = mgr.update_experiment_hash(model, CONFIG, UIDS)
    path = mgr.save_model_checkpoint(model, step=1)
    assert mgr.verify(strict=True) == []
    orphan = path.with_name(f"{h}_step_000002.pt")
    orphan.write_bytes(path.read_bytes())  # as a save killed before its index update
    assert mgr.verify() == [
        f"{orphan.name}: not in index.json (a save interrupted before its index update?)"
    ]
    assert mgr.latest()["step"] == 1  # type: ignore[index]
    with pytest.raises(
        ChecksumMismatchError, match=rf"(?s)Checksum mismatch in experiment {h}.*{orphan.name}"
    ):
        mgr.verify(strict=True)
    other = "0" * 16
    assert mgr.verify(other) == [
        f"experiment directory missing: {tmp_path / 'checkpoints' / other}"
    ]
    assert not (tmp_path / "checkpoints" / other).exists()


def test_state_assertion_lists_differences_by_key_path() -> None:
    w = torch.tensor([1.0, 2.0, 0.0])
    expected = {"w": w, "groups": [{"lr": 0.1, "betas": (0.9, 0.99)}]}
    same = {"w": torch.tensor([1.0, 2.0, 0.0]), "groups": [{"lr": 0.1, "betas": [0.9, 0.99]}]}
    assert_state_equal(same, expected)
    bad = {
        "w": torch.tensor([1.0, 2.5, -0.0]),
        "groups": [{"lr": 0.2, "betas": (0.9, 0.99)}],
        "extra": 1,
    }
    with pytest.raises(AssertionError) as exc_info:
        assert_state_equal(bad, expected, name="opt")
    message = str(exc_info.value)
    assert "opt: unexpected keys ['extra']" in message
    assert "opt['w']: 2 of 3 elements differ (first at flat index 1, max abs diff 0.5)" in message
    assert "opt['groups'][0]['lr']: 0.2 vs expected 0.1" in message
    with pytest.raises(AssertionError, match=r"dtype torch.float64 vs expected torch.float32"):
        assert_state_equal({"w": w.double()}, {"w": w})
