"""Assertions for suites that check their training loop writes what it should.

``CheckpointManager`` promises a layout (docs/experiments.md) and an index whose sizes and
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

import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import ExperimentValueError
from ..experiments.index import ExperimentIndex
from ..experiments.layout import ExperimentLayout

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
    ``verify``, which reads every file: keep it for test-sized models). The paths
    come from ``pytest_ckpts.experiments.layout``, the same place the manager
    takes them from.
    """
    __tracebackhide__ = True
    base = Path(root)
    layout = ExperimentLayout(base)
    h = exp_hash
    problems: list[str] = []

    def rel(path: Path) -> str:
        return path.relative_to(base).as_posix()

    for folder in (layout.data_dir, layout.logs_dir, *layout.exp_subdirs(h)):
        if not folder.is_dir():
            problems.append(f"missing directory {rel(folder)}")
    suffixes = ("txt", "pkl") if architecture_pickle else ("txt",)
    for suffix in suffixes:
        if not layout.architecture_file(h, suffix).is_file():
            problems.append(f"missing {rel(layout.architecture_file(h, suffix))}")
    if config and not layout.config_file(h).is_file():
        problems.append(f"missing {rel(layout.config_file(h))}")
    if data_backup and not list(layout.backup_dir(h).glob(f"{h}_*")):
        problems.append(f"no data backup in {rel(layout.backup_dir(h))}")
    if layout.exp_dir(h).is_dir():
        leftovers = sorted(rel(p) for p in layout.exp_dir(h).rglob("*.tmp"))
        if leftovers:
            problems.append(f"temp files left by an interrupted write: {leftovers}")
    if steps is not None:
        want = sorted(layout.step_name(h, s) for s in steps)
        model_dir = layout.model_dir(h)
        have = (
            sorted(p.name for p in model_dir.glob(layout.step_glob(h)))
            if model_dir.is_dir()
            else []
        )
        if have != want:
            problems.append(f"step checkpoints: expected {want}, found {have}")
        problems.extend(_index_problems(layout, h, want, verify))
    if problems:
        raise AssertionError(
            f"experiment {h} under {base} is not laid out as expected:\n  " + "\n  ".join(problems)
        )


def _index_problems(layout: ExperimentLayout, h: str, want: list[str], verify: bool) -> list[str]:
    """What ``index.json`` gets wrong; files missing from disk are reported by the caller."""
    index = ExperimentIndex(layout, h)
    if not index.path.is_file():
        return [f"missing checkpoints/{h}/{index.path.name}"]
    try:
        entries = index.entries()
    except ExperimentValueError as exc:
        return [str(exc)]
    problems: list[str] = []
    indexed = sorted(e.file for e in entries)
    if indexed != want:
        problems.append(f"index.json lists {indexed}, expected {want}")
    for e in entries:
        if index.file_of(e).is_file():
            problem = index.check(e, rehash=verify)
            if problem:
                problems.append(problem)
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
