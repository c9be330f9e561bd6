"""Assertions for suites that check their training loop writes what it should.

``CheckpointManager`` promises a layout (seed 002) and an index whose sizes and
sha256 match the files. A test of a user's training loop wants to check that promise
in one line and, when it fails, read every problem at once rather than the first
``assert`` that tripped::

    from pytest_ckpts.testing.experiments import assert_experiment_layout

    def test_loop_checkpoints(checkpoint_manager):
        h = run_training(checkpoint_manager, steps=300, save_every=100)
        assert_experiment_layout(checkpoint_manager.root, h, steps=[100, 200, 300])

and that resuming restores the state bit for bit (``assert_state_equal``), listing
every tensor that differs rather than stopping at the first ``torch.equal``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["assert_experiment_layout", "assert_state_equal"]

_MAX_REPORTED = 20


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


def assert_state_equal(actual: Any, expected: Any, *, name: str = "state") -> None:
    """Fail unless two states (state_dicts, optimizer states, payloads) are bit-identical.

    Walks nested dicts, lists and tuples (a list and a tuple with equal items match:
    optimizers store ``betas`` either way). Tensors must agree in dtype, shape and
    every byte, so ``-0.0`` vs ``0.0`` differs and NaN matches the same NaN; that is
    what "resumed exactly" means, where ``torch.equal`` would call NaN unequal and
    ``allclose`` would hide drift. Other values compare with ``==``. Every
    difference is listed by key path, e.g. ``optimizer['state'][0]['exp_avg']``.
    """
    __tracebackhide__ = True
    problems: list[str] = []
    _compare(actual, expected, name, problems)
    if problems:
        shown = problems[:_MAX_REPORTED]
        more = len(problems) - len(shown)
        raise AssertionError(
            f"{name} differs from the expected state:\n  "
            + "\n  ".join(shown)
            + (f"\n  ... and {more} more" if more else "")
        )


def _compare(a: Any, b: Any, path: str, problems: list[str]) -> None:
    if _is_tensor(a) or _is_tensor(b):
        if not (_is_tensor(a) and _is_tensor(b)):
            problems.append(f"{path}: {type(a).__name__} vs expected {type(b).__name__}")
            return
        problem = _tensor_difference(a, b)
        if problem:
            problems.append(f"{path}: {problem}")
        return
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        missing = [k for k in b if k not in a]
        extra = [k for k in a if k not in b]
        if missing:
            problems.append(f"{path}: missing keys {missing!r}")
        if extra:
            problems.append(f"{path}: unexpected keys {extra!r}")
        for k in b:
            if k in a:
                _compare(a[k], b[k], f"{path}[{k!r}]", problems)
        return
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            problems.append(f"{path}: length {len(a)} vs expected {len(b)}")
            return
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _compare(x, y, f"{path}[{i}]", problems)
        return
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return
    if type(a) is not type(b) and not (_is_number(a) and _is_number(b)):
        problems.append(f"{path}: {type(a).__name__} {a!r} vs expected {type(b).__name__} {b!r}")
    elif a != b:
        problems.append(f"{path}: {a!r} vs expected {b!r}")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_tensor(x: Any) -> bool:
    return type(x).__module__.partition(".")[0] == "torch" and hasattr(x, "untyped_storage")


def _tensor_difference(a: Any, b: Any) -> str | None:
    import torch

    if a.dtype != b.dtype:
        return f"dtype {a.dtype} vs expected {b.dtype}"
    if a.shape != b.shape:
        return f"shape {tuple(a.shape)} vs expected {tuple(b.shape)}"
    x = a.detach().cpu().contiguous()
    y = b.detach().cpu().contiguous()
    if x.numel() == 0:
        return None
    bx = x.reshape(-1).view(torch.uint8)
    by = y.reshape(-1).view(torch.uint8)
    if torch.equal(bx, by):
        return None
    per = bx.numel() // x.numel()
    differing = (bx.view(-1, per) != by.view(-1, per)).any(dim=1)
    count = int(differing.sum())
    first = int(differing.nonzero()[0, 0])
    detail = f"{count} of {x.numel()} elements differ (first at flat index {first}"
    if x.is_floating_point():
        diff = (x.double() - y.double()).abs()
        finite = diff[diff.isfinite()]
        if finite.numel():
            worst = float(finite.max())
            detail += f", max abs diff {worst:.3g}"
            if worst == 0:
                detail += ": only signed zeros or NaN payloads differ"
    return detail + ")"
