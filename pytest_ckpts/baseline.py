"""Golden-tensor baselines tied to the checkpoint that produced them.

A regression check on model outputs is only useful if, when it fails, it says *why*:
most often the checkpoint changed, so each baseline records the sha256 of every
checkpoint the test used and a failure leads with that. After it come the structural
differences (keys, dtype, shape: checked before any tolerance, as
pytest-regressions' ``ndarrays_regression`` does) and then the numbers: how many
elements are off, the worst absolute and relative differences with their indices and
a short table of the worst elements.

Baselines are ``.safetensors`` files: safe to load (no pickle), readable by any
framework, and they keep bf16/fp16 exactly. The header is written canonically (sorted
metadata, no timestamps), so the same tensors and checkpoints always give the same
bytes, whichever process or machine wrote them: a regenerated baseline that did not
change shows no diff in review. torch, numpy and safetensors are imported only when a
check runs; this module never imports pytest, so tools can reuse it.
"""

from __future__ import annotations

import contextlib
import json
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ._extras import require
from ._loading import CheckpointTensors
from .errors import BaselineError, BaselineMismatch, BaselineMissing
from .integrity import atomic_write_bytes

__all__ = [
    "FORMAT",
    "BaselineChecker",
    "BaselineError",
    "BaselineMismatch",
    "BaselineMissing",
    "read_baseline",
]

#: Value of the ``format`` metadata key; bumped only if the layout changes incompatibly.
FORMAT = "pytest-ckpts-baseline/1"
_SINGLE = "__tensor__"  # key used when a single tensor (not a dict) is checked
_TABLE_ROWS = 10


def _torch() -> Any:
    return require("torch", "ckpt_baseline")


def _as_tensors(tensors: Any) -> tuple[dict[str, Any], bool]:
    """Normalise a tensor, an array or a dict of them to ({key: cpu tensor}, single)."""
    torch = _torch()

    def one(value: Any, key: str) -> Any:
        if isinstance(value, torch.Tensor):
            return value.detach().to("cpu").contiguous().clone()
        if type(value).__module__.split(".")[0] == "numpy":
            np = require("numpy", "ckpt_baseline")
            return torch.from_numpy(np.ascontiguousarray(value).copy())
        raise TypeError(
            f"pytest-ckpts: ckpt_baseline value for {key} is a {type(value).__name__}; "
            "pass a torch tensor, a numpy array or a dict of them"
        )

    if isinstance(tensors, Mapping):
        if not tensors:
            raise ValueError("pytest-ckpts: ckpt_baseline got an empty dict")
        out: dict[str, Any] = {}
        for k, v in tensors.items():
            if not isinstance(k, str) or not k or k in ("__metadata__", _SINGLE):
                raise ValueError(
                    f"pytest-ckpts: ckpt_baseline key {k!r} is not allowed: use non-empty "
                    f"str keys other than '__metadata__' and '{_SINGLE}'"
                )
            out[k] = one(v, f"'{k}'")
        return out, False
    return {_SINGLE: one(tensors, "the tensor")}, True


def _dtype_name(dtype: Any) -> str:
    return str(dtype).replace("torch.", "")


def _canonical(blob: bytes) -> bytes:
    """Rewrite a safetensors header with sorted metadata keys (safetensors uses a hash map).

    Only the JSON header changes; tensor data and offsets (relative to the end of
    the header) are untouched, so the file stays valid for every reader.
    """
    (size,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + size])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    text += b" " * (-len(text) % 8)  # safetensors aligns the data section to 8 bytes
    return struct.pack("<Q", len(text)) + text + blob[8 + size :]


def _encode(
    tensors: Mapping[str, Any], shas: Mapping[str, str], rtol: float, atol: float, single: bool
) -> bytes:
    """The baseline file's bytes: the tensors as given, plus what explains them later."""
    save = require("safetensors.torch", "ckpt_baseline").save
    metadata = {
        "format": FORMAT,
        "kind": "single" if single else "dict",
        "checkpoints": json.dumps(dict(sorted(shas.items()))),
        "tensors": json.dumps(
            {
                k: {"dtype": _dtype_name(t.dtype), "shape": list(t.shape)}
                for k, t in sorted(tensors.items())
            }
        ),
        "rtol": repr(float(rtol)),
        "atol": repr(float(atol)),
    }
    return _canonical(save(dict(tensors), metadata=metadata))


def read_baseline(path: str | Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Return ``(tensors, metadata)`` of a baseline file, for tools and reports.

    ``tensors`` maps key to torch tensor (a baseline of a single tensor has the one key
    ``"__tensor__"``); ``metadata`` is the raw str→str safetensors metadata, whose
    ``checkpoints`` and ``tensors`` values are JSON (checkpoint name → sha256, and key →
    dtype/shape). Example: which checkpoint produced a baseline::

        tensors, meta = read_baseline("tests/baselines/test_vae/test_out/recon.safetensors")
        json.loads(meta["checkpoints"])   # {"mp_20_vae": "3b6d…"}
    """
    _torch()
    safetensors = require("safetensors", "ckpt_baseline")
    with safetensors.safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
    return tensors, metadata


def _open_baseline(
    name: str, path: Path, stack: contextlib.ExitStack
) -> tuple[Mapping[str, Any], dict[str, str]]:
    """The baseline's tensors as a lazy mapping (memory-mapped, read when compared).

    A key the output no longer has is reported from the header alone, never read.
    """
    _torch()
    safetensors = require("safetensors", "ckpt_baseline")
    f = stack.enter_context(safetensors.safe_open(str(path), framework="pt"))
    metadata = dict(f.metadata() or {})
    stored = CheckpointTensors(f"baseline '{name}'", path, f.keys(), f.get_tensor)
    stack.callback(stored.close)
    return stored, metadata


def _label(key: str) -> str:
    return "tensor" if key == _SINGLE else f"'{key}'"


def _fmt(value: Any) -> str:
    if isinstance(value, complex):
        return f"{value.real:.6g}{value.imag:+.6g}j"
    return f"{value:.6g}"


def _bytes_equal(a: Any, b: Any) -> bool:
    """Same dtype, shape and bit pattern: equal without arithmetic (NaN payloads too)."""
    torch = _torch()
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.numel() == 0:
        return True
    return bool(torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)))


class BaselineChecker:
    """Compares tensors with ``<directory>/<name>.safetensors`` (the ``ckpt_baseline`` fixture).

    ``checkpoint_shas`` is called at each check and returns name → sha256 of the
    checkpoints the test used so far; they are stored with the baseline and compared
    on failure, so a report can say "the checkpoint changed" instead of only "numbers
    changed". ``update`` is the front end's switch that rewrites baselines, and
    ``update_option`` how the front end names it in every failure (the fixture passes
    pytest's option: an engine names no command-line flag).
    """

    def __init__(
        self,
        *,
        directory: Path,
        update: bool,
        checkpoint_shas: Callable[[], Mapping[str, str]],
        rtol: float = 1e-5,
        atol: float = 1e-8,
        update_option: str = "update_baselines",
    ) -> None:
        self.update_option = update_option
        self.directory = Path(directory)
        self.update = update
        self._checkpoint_shas = checkpoint_shas
        self.rtol = rtol
        self.atol = atol

    def path(self, name: str) -> Path:
        """Where baseline ``name`` lives (a plain file name: no separators, no leading dot)."""
        if not name or "/" in name or "\\" in name or name.startswith(".") or "\0" in name:
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

        ``tensors`` is a torch tensor, a numpy array or a dict of them. Floating
        values match when ``|actual - baseline| <= atol + rtol * |baseline|`` (NaN
        matches NaN in the same place, inf matches inf of the same sign); integer and
        bool values must be equal. A missing baseline is written and the test fails
        once (review and commit it); with ``--ckpts-update-baselines`` missing or
        mismatching baselines are rewritten and the test passes. Matching baselines
        are never rewritten, so their bytes stay stable.
        """
        __tracebackhide__ = True
        rtol = self.rtol if rtol is None else rtol
        atol = self.atol if atol is None else atol
        current, single = _as_tensors(tensors)
        path = self.path(name)
        shas = dict(self._checkpoint_shas())
        if not path.exists():
            atomic_write_bytes(path, _encode(current, shas, rtol, atol, single))
            if self.update:
                return
            raise BaselineMissing(
                f"pytest-ckpts: baseline '{name}' did not exist; it was written to {path}. "
                "Review and commit it, then re-run the test."
            )
        opened = contextlib.ExitStack()
        try:
            stored, metadata = _open_baseline(name, path, opened)
        except Exception as exc:  # safetensors, OS or JSON error: the advice is the same
            opened.close()
            if self.update:
                atomic_write_bytes(path, _encode(current, shas, rtol, atol, single))
                return
            raise BaselineMismatch(
                f"pytest-ckpts: baseline '{name}' at {path} could not be read "
                f"({type(exc).__name__}: {exc}). Re-run with {self.update_option} to rewrite it."
            ) from None
        with opened:  # closed before any rewrite replaces the file
            report = self._compare(name, stored, metadata, current, shas, rtol, atol)
        if report is None:
            return
        if self.update:
            atomic_write_bytes(path, _encode(current, shas, rtol, atol, single))
            return
        raise BaselineMismatch(
            report
            + f"\nIf the change is intended, re-run with {self.update_option} to rewrite {path}."
        )

    # ------------------------------------------------------------------ internals
    def _compare(
        self,
        name: str,
        stored: Mapping[str, Any],
        metadata: Mapping[str, str],
        current: dict[str, Any],
        shas: Mapping[str, str],
        rtol: float,
        atol: float,
    ) -> str | None:
        """Return the failure report, or None when ``current`` matches ``stored``."""
        if stored.keys() == current.keys() and all(
            _bytes_equal(stored[k], current[k]) for k in stored
        ):
            return None  # fast path: bit-identical, no arithmetic
        structure: list[str] = []
        for k in sorted(set(stored) - set(current)):
            structure.append(f"  {_label(k)}: in the baseline, missing from the output")
        for k in sorted(set(current) - set(stored)):
            structure.append(f"  {_label(k)}: in the output, not in the baseline")
        common = sorted(set(stored) & set(current))
        numbers: list[str] = []
        for k in common:
            a, b = current[k], stored[k]
            if a.dtype != b.dtype or a.shape != b.shape:
                structure.append(
                    f"  {_label(k)}: baseline {_dtype_name(b.dtype)}{list(b.shape)}, "
                    f"output {_dtype_name(a.dtype)}{list(a.shape)}"
                )
        for k in common:
            a, b = current[k], stored[k]
            if a.dtype == b.dtype and a.shape == b.shape and not _bytes_equal(a, b):
                numbers.extend(_numeric_diff(k, a, b, rtol, atol))
        if not structure and not numbers:
            return None  # equal within tolerance
        lines = [f"pytest-ckpts: baseline '{name}' does not match the output."]
        lines.extend(_checkpoint_lines(metadata, shas))
        lines.extend(structure)
        lines.extend(numbers)
        lines.append(f"(rtol={rtol:g}, atol={atol:g})")
        return "\n".join(lines)


def _checkpoint_lines(metadata: Mapping[str, str], shas: Mapping[str, str]) -> list[str]:
    """Say which checkpoints changed (the usual cause) or differ from those recorded."""
    try:
        recorded = json.loads(metadata.get("checkpoints") or "{}")
        if not isinstance(recorded, dict):
            recorded = {}
    except ValueError:
        recorded = {}
    lines = [
        f"checkpoint '{n}' changed since the baseline was written: was {str(recorded[n])[:12]}… "
        f"now {shas[n][:12]}…; this is the likely cause."
        for n in sorted(set(recorded) & set(shas))
        if recorded[n] != shas[n]
    ]
    if set(recorded) != set(shas):
        lines.append(
            "the baseline was written by a test that used checkpoints "
            f"{sorted(recorded) or 'none'}; this run used {sorted(shas) or 'none'}."
        )
    return lines


def _numeric_diff(key: str, a: Any, b: Any, rtol: float, atol: float) -> list[str]:
    """Report lines for one key whose dtype and shape match but whose values may not.

    Floats (bf16/fp16 included) are compared in float64, so half-precision values
    (which numpy cannot hold) are exact and differences do not round.
    """
    torch = _torch()
    inf = float("inf")
    if a.dtype.is_floating_point or a.dtype.is_complex:
        work = torch.complex128 if a.dtype.is_complex else torch.float64
        x, y = a.to(work), b.to(work)
        nan_x, nan_y = torch.isnan(x), torch.isnan(y)
        same = (x == y) | (nan_x & nan_y)  # covers inf == inf of the same sign
        diff = (x - y).abs()
        diff = torch.where(same, torch.zeros_like(diff), diff)
        diff = torch.where(torch.isnan(diff), torch.full_like(diff, inf), diff)
        special = nan_x | nan_y | torch.isinf(x) | torch.isinf(y)
        bad = ~same & (special | (diff > atol + rtol * y.abs()))
    else:
        x, y = a.to(torch.float64), b.to(torch.float64)
        bad = a != b
        diff = torch.where(bad, (x - y).abs(), torch.zeros_like(x))
    count = int(bad.sum())
    if count == 0:
        return []
    total = bad.numel()
    rel = diff / y.abs()
    rel = torch.where(
        torch.isnan(rel),
        torch.where(diff == 0, torch.zeros_like(rel), torch.full_like(rel, inf)),
        rel,
    )
    flat_bad = bad.reshape(-1)
    flat_diff = diff.reshape(-1)
    # -1 marks elements within tolerance so argmax/topk only pick mismatches
    masked_abs = torch.where(flat_bad, flat_diff, torch.full_like(flat_diff, -1.0))
    masked_rel = torch.where(flat_bad, rel.reshape(-1), torch.full_like(flat_diff, -1.0))

    def index(i: int) -> tuple[int, ...]:
        out = []
        for size in reversed(a.shape):
            out.append(i % size)
            i //= size
        return tuple(reversed(out))

    def value(t: Any) -> Any:
        return complex(t) if t.dtype.is_complex else float(t)

    i_abs = int(torch.argmax(masked_abs))
    i_rel = int(torch.argmax(masked_rel))
    lines = [
        f"  {_label(key)}: {count} of {total} elements differ ({count / total:.2%})",
        f"    max abs diff {_fmt(float(flat_diff[i_abs]))} at index {index(i_abs)}",
        f"    max rel diff {_fmt(float(masked_rel[i_rel]))} at index {index(i_rel)}",
        "    worst elements:",
        f"    {'index':<18} {'baseline':>14} {'actual':>14} {'abs diff':>12}",
    ]
    k = min(_TABLE_ROWS, count)
    xs, ys = x.reshape(-1), y.reshape(-1)
    for i in torch.topk(masked_abs, k).indices.tolist():
        lines.append(
            f"    {index(i)!s:<18} {_fmt(value(ys[i])):>14} "
            f"{_fmt(value(xs[i])):>14} {_fmt(float(flat_diff[i])):>12}"
        )
    if count > k:
        lines.append(f"    ... and {count - k} more")
    return lines
