"""Assertions for suites that check their training loop writes what it should.

``CheckpointManager`` promises a layout (seed 002) and an index whose sizes and
sha256 match the files. A test of a user's training loop wants to check that promise
in one line and, when it fails, read every problem at once rather than the first
``assert`` that tripped::

    from pytest_ckpts.testing.experiments import assert_experiment_layout

    def test_loop_checkpoints(checkpoint_manager):
        h = run_training(checkpoint_manager, steps=300, save_every=100)
        assert_experiment_layout(checkpoint_manager.root, h, steps=[100, 200, 300])
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["assert_experiment_layout"]


def assert_experiment_layout(
    root: str | os.PathLike[str],
    exp_hash: str,
    *,
    steps: Iterable[int] | None = None,
    config: bool = False,
    data_backup: bool = False,
    architecture_pickle: bool = True,
    verify: bool = True,
) -> None:
    """Fail with a readable list of problems unless experiment ``exp_hash`` is laid out right.

    Checks, under ``root``: the global ``data/`` and ``logs/`` folders,
    ``checkpoints/{h}/model|hp|data``, ``{h}_architecture.txt`` (and ``.pkl`` unless
    ``architecture_pickle=False``), ``hp/{h}_config.yaml`` when ``config``, a
    ``data/{h}_*`` backup when ``data_backup``, and no temp files left by an
    interrupted write. With ``steps``, the step checkpoints must be exactly those,
    and ``index.json`` must list exactly them with matching sizes (and sha256 when
    ``verify``, which reads every file: keep it for test-sized models).
    """
    __tracebackhide__ = True
    base = Path(root)
    d = base / "checkpoints" / exp_hash
    model_dir = d / "model"
    problems: list[str] = []
    for folder in (base / "data", base / "logs", model_dir, d / "hp", d / "data"):
        if not folder.is_dir():
            problems.append(f"missing directory {folder.relative_to(base)}")
    suffixes = ("txt", "pkl") if architecture_pickle else ("txt",)
    for suffix in suffixes:
        f = model_dir / f"{exp_hash}_architecture.{suffix}"
        if not f.is_file():
            problems.append(f"missing {f.relative_to(base)}")
    if config and not (d / "hp" / f"{exp_hash}_config.yaml").is_file():
        problems.append(f"missing checkpoints/{exp_hash}/hp/{exp_hash}_config.yaml")
    if data_backup and not list((d / "data").glob(f"{exp_hash}_*")):
        problems.append(f"no data backup in checkpoints/{exp_hash}/data")
    if d.is_dir():
        leftovers = sorted(p.relative_to(base).as_posix() for p in d.rglob("*.tmp"))
        if leftovers:
            problems.append(f"temp files left by an interrupted write: {leftovers}")
    if steps is not None:
        want = sorted(f"{exp_hash}_step_{s:06d}.pt" for s in steps)
        have = (
            sorted(p.name for p in model_dir.glob(f"{exp_hash}_step_*.pt"))
            if model_dir.is_dir()
            else []
        )
        if have != want:
            problems.append(f"step checkpoints: expected {want}, found {have}")
        problems.extend(_index_problems(d, model_dir, want, verify))
    if problems:
        raise AssertionError(
            f"experiment {exp_hash} under {base} is not laid out as expected:\n  "
            + "\n  ".join(problems)
        )


def _index_problems(d: Path, model_dir: Path, want: list[str], verify: bool) -> list[str]:
    try:
        index = json.loads((d / "index.json").read_text("utf-8"))
        entries = list(index["checkpoints"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [f"unreadable index.json: {exc!r}"]
    problems: list[str] = []
    indexed = sorted(str(e.get("file")) for e in entries)
    if indexed != want:
        problems.append(f"index.json lists {indexed}, expected {want}")
    for e in entries:
        f = model_dir / str(e.get("file"))
        if not f.is_file():
            continue
        size = f.stat().st_size
        if size != e.get("size"):
            problems.append(f"{f.name}: size {size} != index {e.get('size')}")
        elif verify:
            with open(f, "rb") as fh:
                actual = hashlib.file_digest(fh, "sha256").hexdigest()
            if actual != e.get("sha256"):
                problems.append(f"{f.name}: sha256 {actual} != index {e.get('sha256')}")
    return problems
