"""Golden-tensor baselines tied to the checkpoint that produced them.

A regression check on model outputs is only useful if, when it fails, it says *why*:
most often the checkpoint changed, so each baseline records the sha256 of every
checkpoint the test used and a failure leads with that. After it come the structural
differences (keys, dtype, shape: checked before any tolerance, as
pytest-regressions' ``ndarrays_regression`` does) and then the numbers: how many
elements are off, the worst absolute and relative differences with their indices and
a short table of the worst elements.

Baselines are ``.safetensors`` files: safe to load (no pickle), readable by any
framework, and they keep bf16/fp16 exactly. torch, numpy and safetensors are imported
only when a check runs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ._extras import require
from .integrity import atomic_write_bytes

__all__ = [
    "BaselineChecker",
    "BaselineError",
    "BaselineMismatch",
    "BaselineMissing",
    "read_baseline",
]

FORMAT = "pytest-ckpts-baseline/1"
UPDATE_FLAG = "--ckpts-update-baselines"
_SINGLE = "__tensor__"
_TABLE_ROWS = 10


class BaselineError(AssertionError):
    """Base of baseline failures: an ``AssertionError`` so pytest reports a failed test."""


class BaselineMissing(BaselineError):
    """No baseline existed; it has now been written and needs review."""


class BaselineMismatch(BaselineError):
    """The tensors differ from the baseline beyond tolerance."""


def _torch() -> Any:
    return require("torch", "ckpt_baseline")


def _as_tensors(tensors: Any) -> tuple[dict[str, Any], bool]:
    """Normalise a tensor, an array or a dict of them to {key: cpu tensor}."""
    torch = _torch()

    def one(value: Any, key: str) -> Any:
        if isinstance(value, torch.Tensor):
            return value.detach().to("cpu").contiguous().clone()
        if type(value).__module__.startswith("numpy"):
            import numpy as np

            return torch.from_numpy(np.ascontiguousarray(value).copy())
        raise TypeError(
            f"pytest-ckpts: ckpt_baseline value for '{key}' is a {type(value).__name__}; "
            "pass a torch tensor, a numpy array or a dict of them"
        )

    if isinstance(tensors, Mapping):
        if not tensors:
            raise ValueError("pytest-ckpts: ckpt_baseline got an empty dict")
        return {str(k): one(v, str(k)) for k, v in tensors.items()}, False
    return {_SINGLE: one(tensors, "tensor")}, True


def read_baseline(path: str | Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Return (tensors, metadata) of a baseline file, for tools and reports.

    Tensors are torch tensors in their stored dtype. A baseline of a single tensor
    (not a dict) holds it under the key ``"__tensor__"``. Metadata keys: ``format``,
    ``checkpoints`` (JSON name -> sha256), ``tensors`` (JSON key -> dtype and
    shape), ``rtol``, ``atol`` and ``kind`` (``single`` or ``dict``).
    """
    _torch()
    safe_open = require("safetensors", "ckpt_baseline").safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
    return tensors, metadata


def _label(key: str) -> str:
    return "tensor" if key == _SINGLE else f"'{key}'"


def _fmt(value: float) -> str:
    return f"{value:.6g}"


def _dtype_name(t: Any) -> str:
    return str(t.dtype).replace("torch.", "")


def _same_bytes(a: Any, b: Any) -> bool:
    """Fast path: identical dtype, shape and bytes (NaNs included) need no arithmetic."""
    torch = _torch()
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    try:
        return bool(torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)))
    except RuntimeError:  # a dtype that cannot be viewed as bytes
        return bool(torch.equal(a, b))


class BaselineChecker:
    """Compares tensors with ``<directory>/<name>.safetensors`` (the ``ckpt_baseline`` fixture)."""

    def __init__(
        self,
        *,
        directory: Path,
        update: bool,
        checkpoint_shas: Callable[[], Mapping[str, str]],
        rtol: float = 1e-5,
        atol: float = 1e-8,
    ) -> None:
        self.directory = Path(directory)
        self.update = update
        self._checkpoint_shas = checkpoint_shas
        self.rtol = rtol
        self.atol = atol

    def path(self, name: str) -> Path:
        """Where baseline ``name`` lives."""
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise ValueError(f"pytest-ckpts: invalid baseline name {name!r}")
        return self.directory / f"{name}.safetensors"

    def check(
        self,
        name: str,
        tensors: Any,
        *,
        rtol: float | None = None,
        atol: float | None = None,
    ) -> None:
        """Fail the test unless ``tensors`` match baseline ``name`` within tolerance.

        A missing baseline is written and the test fails once (review and commit
        it); with ``--ckpts-update-baselines`` missing or mismatching baselines are
        rewritten and the test passes. Matching baselines are never rewritten.
        """
        __tracebackhide__ = True
        rtol = self.rtol if rtol is None else rtol
        atol = self.atol if atol is None else atol
        current, single = _as_tensors(tensors)
        path = self.path(name)
        shas = dict(self._checkpoint_shas())
        if not path.exists():
            self._write(path, current, shas, rtol, atol, single)
            if self.update:
                return
            raise BaselineMissing(
                f"pytest-ckpts: baseline '{name}' did not exist; it was written to {path}. "
                "Review and commit it, then re-run the test."
            )
        stored, metadata = read_baseline(path)
        report = self._compare(name, stored, metadata, current, shas, rtol, atol)
        if report is None:
            return
        if self.update:
            self._write(path, current, shas, rtol, atol, single)
            return
        raise BaselineMismatch(report + f"\nIf the change is intended, re-run with {UPDATE_FLAG}.")

    # ------------------------------------------------------------------ internals
    def _write(
        self,
        path: Path,
        tensors: dict[str, Any],
        shas: Mapping[str, str],
        rtol: float,
        atol: float,
        single: bool,
    ) -> None:
        save = require("safetensors.torch", "ckpt_baseline").save

        layout = {
            k: {"dtype": _dtype_name(t), "shape": list(t.shape)} for k, t in sorted(tensors.items())
        }
        metadata = {
            "format": FORMAT,
            "checkpoints": json.dumps(dict(sorted(shas.items()))),
            "tensors": json.dumps(layout),
            "rtol": repr(rtol),
            "atol": repr(atol),
            "kind": "single" if single else "dict",
        }
        atomic_write_bytes(path, save(tensors, metadata=metadata))

    def _compare(
        self,
        name: str,
        stored: dict[str, Any],
        metadata: Mapping[str, str],
        current: dict[str, Any],
        shas: Mapping[str, str],
        rtol: float,
        atol: float,
    ) -> str | None:
        if stored.keys() == current.keys() and all(
            _same_bytes(stored[k], current[k]) for k in stored
        ):
            return None  # fast path: identical bytes
        lines: list[str] = []
        problems: list[str] = []
        for k in sorted(set(stored) - set(current)):
            problems.append(f"  {_label(k)}: in the baseline, missing from the output")
        for k in sorted(set(current) - set(stored)):
            problems.append(f"  {_label(k)}: in the output, not in the baseline")
        for k in sorted(set(stored) & set(current)):
            a, b = current[k], stored[k]
            if a.dtype != b.dtype or a.shape != b.shape:
                problems.append(
                    f"  {_label(k)}: baseline {_dtype_name(b)}{list(b.shape)}, "
                    f"output {_dtype_name(a)}{list(a.shape)}"
                )
                continue
            detail = self._numeric_diff(k, a, b, rtol, atol)
            if detail:
                problems.extend(detail)
        if not problems:
            return None  # equal within tolerance
        recorded = json.loads(metadata.get("checkpoints", "{}") or "{}")
        changed = [
            f"checkpoint '{n}' changed since the baseline was written: was {recorded[n][:12]}… "
            f"now {shas[n][:12]}…; this is the likely cause."
            for n in sorted(set(recorded) & set(shas))
            if recorded[n] != shas[n]
        ]
        if not changed and recorded.keys() != shas.keys() and (recorded or shas):
            changed.append(
                f"the baseline was written using checkpoints {sorted(recorded)}; "
                f"this run used {sorted(shas)}."
            )
        lines.append(f"pytest-ckpts: baseline '{name}' does not match the output.")
        lines.extend(changed)
        lines.extend(problems)
        lines.append(f"(rtol={rtol:g}, atol={atol:g})")
        return "\n".join(lines)

    @staticmethod
    def _numeric_diff(key: str, a: Any, b: Any, rtol: float, atol: float) -> list[str]:
        torch = _torch()
        if a.dtype.is_floating_point or a.dtype.is_complex:
            # Half types are compared in float32 (as torch.allclose would upcast them);
            # float32/float64/complex in their own precision, like torch.allclose.
            work = torch.float32 if a.dtype in (torch.float16, torch.bfloat16) else a.dtype
            x, y = a.to(work), b.to(work)
            # NaN matches NaN at the same position, and an inf only the same inf
            # (as torch.isclose with equal_nan=True): neither is a tolerance question.
            same = (x == y) | (torch.isnan(x) & torch.isnan(y))
            finite = torch.isfinite(x) & torch.isfinite(y)
            diff = (x - y).abs()
            diff = torch.where(same, torch.zeros_like(diff), diff)
            diff = torch.where(torch.isnan(diff), torch.full_like(diff, float("inf")), diff)
            bad = ~same & (~finite | (diff > atol + rtol * y.abs()))
        else:
            x, y = a.to(torch.float64), b.to(torch.float64)
            diff = (x - y).abs()
            bad = a != b
        count = int(bad.sum())
        if count == 0:
            return []
        total = bad.numel()
        # Relative to the baseline; a zero baseline element gives inf, as numpy's does.
        rel = diff.to(torch.float64) / y.abs().to(torch.float64)
        rel = torch.where(torch.isnan(rel), torch.zeros_like(rel), rel)
        flat_diff, flat_rel = (
            diff.reshape(-1),
            torch.where(bad, rel, torch.zeros_like(rel)).reshape(-1),
        )
        flat_bad = bad.reshape(-1)

        def index(i: int) -> tuple[int, ...]:
            out = []
            for size in reversed(a.shape):
                out.append(i % size)
                i //= size
            return tuple(reversed(out))

        masked = torch.where(flat_bad, flat_diff, torch.full_like(flat_diff, -1.0))
        i_abs = int(torch.argmax(masked))
        i_rel = int(torch.argmax(flat_rel))
        lines = [
            f"  {_label(key)}: {count} of {total} elements differ ({count / total:.2%})",
            f"    max abs diff {_fmt(float(flat_diff[i_abs]))} at index {index(i_abs)}",
            f"    max rel diff {_fmt(float(flat_rel[i_rel]))} at index {index(i_rel)}",
            "    worst elements:",
            f"    {'index':<18} {'baseline':>14} {'actual':>14} {'abs diff':>12}",
        ]
        k = min(_TABLE_ROWS, count)
        order = torch.topk(masked, k).indices.tolist()
        xs, ys = x.reshape(-1), y.reshape(-1)
        for i in order:
            lines.append(
                f"    {index(i)!s:<18} {_fmt(float(ys[i].real)):>14} "
                f"{_fmt(float(xs[i].real)):>14} {_fmt(float(flat_diff[i])):>12}"
            )
        if count > k:
            lines.append(f"    ... and {count - k} more")
        return lines
