"""CheckpointManager: the documented layout, the index, retention, loading, concurrency."""

from __future__ import annotations

import ast
import json
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from pytest_ckpts.errors import (
    CheckpointsError,
    ChecksumMismatchError,
    ExperimentError,
    ExperimentTypeError,
    ExperimentValueError,
)
from pytest_ckpts.experiments import CheckpointManager
from pytest_ckpts.integrity import calculate_sha256
from pytest_ckpts.testing.experiments import assert_experiment_layout, assert_state_equal
from tests.experiment_models import CONFIG, UIDS, Act, make_model, train


def test_training_loop_over_two_hash_changes_produces_the_documented_layout(tmp_path: Path) -> None:
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


def test_models_and_optimizers_by_registered_name(tmp_path: Path) -> None:
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


def test_docs_example_runs(pytester: pytest.Pytester) -> None:
    doc = Path(__file__).resolve().parents[2] / "docs" / "experiments.md"
    example = doc.read_text("utf-8").split("```python\n", 1)[1].split("```", 1)[0]
    pytester.makepyfile(test_doc_example=example)
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


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


def test_every_experiment_file_gets_the_umask_mode_not_0600(tmp_path: Path) -> None:
    """Step checkpoints used to come from a private mkstemp (0600) while every other
    file got the umask mode, so a teammate sharing the log directory could read the
    config but not the weights."""
    data_file = tmp_path / "samples.h5"
    data_file.write_bytes(b"sample index")
    old = os.umask(0o022)
    try:
        mgr = CheckpointManager(tmp_path / "root", keep_last=1)
        model = make_model()
        h, _ = mgr.update_experiment_hash(model, CONFIG, UIDS)
        mgr.save_data_backup(data_file)
        mgr.save_model_checkpoint(model, step=1)
        mgr.save_model_checkpoint(model)  # step=None: staged under the lock
    finally:
        os.umask(old)
    modes = {
        p.relative_to(mgr.exp_dir()).as_posix(): oct(p.stat().st_mode & 0o777)
        for p in mgr.exp_dir().rglob("*")
        if p.is_file() and p.name != ".index.lock"  # filelock's own file
    }
    assert modes == dict.fromkeys(
        (
            "index.json",
            f"data/{h}_data.h5",
            f"hp/{h}_config.yaml",
            f"model/{h}_architecture.pkl",
            f"model/{h}_architecture.txt",
            f"model/{h}_step_000002.pt",
        ),
        "0o644",
    )


def test_errors_are_checkpoints_errors_that_keep_their_builtin_type(tmp_path: Path) -> None:
    def check(builtin: type[Exception], message: str, call: Callable[[], object]) -> None:
        with pytest.raises(CheckpointsError, match=message) as info:
            call()
        assert isinstance(info.value, builtin), (message, type(info.value))
        assert isinstance(info.value, ExperimentError), (message, type(info.value))
        assert str(info.value).startswith("pytest-ckpts: "), str(info.value)  # no KeyError quotes

    mgr = CheckpointManager(tmp_path)
    check(RuntimeError, "call update_experiment_hash", mgr.exp_dir)
    check(ValueError, "not a 16-hex experiment hash", lambda: mgr.exp_dir("../../etc"))
    check(ValueError, "keep_last must be", lambda: CheckpointManager(tmp_path, keep_last=-1))
    check(
        TypeError,
        r"config\['o'\]\['fn'\]",
        lambda: mgr.update_experiment_hash(None, {"o": {"fn": len}}),
    )
    model = make_model()
    mgr.update_experiment_hash(model, CONFIG, UIDS)
    check(ValueError, "config_name 'a/b' must be a plain", lambda: mgr.save_config({}, "a/b"))
    check(
        ValueError, "step must be a non-negative", lambda: mgr.save_model_checkpoint(model, step=-1)
    )
    check(
        KeyError,
        "no optimizer registered as 'adam'",
        lambda: mgr.save_model_checkpoint(model, optimizer_name="adam"),
    )
    check(
        FileNotFoundError,
        "data file to back up not found",
        lambda: mgr.save_data_backup(tmp_path / "no.h5"),
    )
    check(PermissionError, "trust_pickle=True", mgr.load_architecture)
    check(ValueError, r"best\(\) needs a metric name", mgr.best)
    with pytest.raises(ExperimentTypeError) as type_info:
        mgr.save_model_checkpoint(model, step=3, metadata={"run": {"cb": object()}})
    assert type_info.value.key_path == "metadata['run']['cb']"
    assert mgr.checkpoints() == []


def test_unreadable_index_names_the_file_and_the_fix(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path)
    model = make_model()
    mgr.update_experiment_hash(model, CONFIG, UIDS)
    mgr.save_model_checkpoint(model, step=1)
    index = mgr.exp_dir() / "index.json"
    data = json.loads(index.read_text())
    del data["checkpoints"][0]["sha256"]
    index.write_text(json.dumps(data))
    with pytest.raises(
        ValueError,
        match=rf"unreadable checkpoint index {re.escape(str(index))}: .*'sha256'.*verify\(\)",
    ):
        mgr.latest()
    index.write_text("{not json")
    with pytest.raises(ExperimentValueError, match="unreadable checkpoint index"):
        mgr.save_model_checkpoint(model, step=2)
    assert not list((mgr.exp_dir() / "model").glob("*.tmp"))  # the staged file was removed


def test_experiments_raise_no_bare_builtin() -> None:
    """Every error leaves through a type in pytest_ckpts.errors, so callers can catch
    ``CheckpointsError`` (and still the built-in it derives from)."""
    import builtins

    import pytest_ckpts.experiments as package

    bare = []
    for path in sorted(Path(package.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                name = getattr(node.exc.func, "id", "")
                if isinstance(getattr(builtins, name, None), type):
                    bare.append(f"{path.name}:{node.lineno} raise {name}")
    assert bare == []
