"""How ``Checkpoint.load()`` and ``Checkpoint.tensors()`` read a file (docs/how-to/big-checkpoints.md "Loading: cheapest first").

Suites load checkpoints of hundreds of MB to many GB, often only to check a few
tensors, and often in several xdist workers at once. So files are memory-mapped:
torch zip files with ``torch.load(mmap=True)``, ``.safetensors`` through
``safetensors.safe_open``. Loading then costs the unpickling of the object structure,
not a read of every byte; a tensor's pages are read when it is touched, and the page
cache is shared by every process that maps the same file. Both maps are private
(copy-on-write): writing to a loaded tensor never changes the cached file.

torch and safetensors are imported inside the functions, never at module level.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ._extras import require
from .errors import UnsafeCheckpointError

__all__ = ["CheckpointTensors", "load_checkpoint", "open_tensors"]

_ZIP_MAGIC = b"PK\x03\x04"
# torch names the refused global as "... Unsupported global: GLOBAL mod.Class was not ..."
_GLOBAL_RE = re.compile(r"GLOBAL ([A-Za-z_][\w.]*)")
_REASON_RE = re.compile(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", re.S)


def _torch(purpose: str) -> Any:
    return require("torch", purpose)


def is_safetensors(path: Path) -> bool:
    return path.suffix == ".safetensors"


def can_mmap(path: Path) -> bool:
    """Whether torch can map ``path``: only the zip format (torch >= 1.6's default) can.

    A legacy file (``torch.save(..., _use_new_zipfile_serialization=False)``) makes
    ``torch.load(mmap=True)`` raise, so it is read the plain way instead.
    """
    with open(path, "rb") as fh:
        return fh.read(4) == _ZIP_MAGIC


# ------------------------------------------------------------------ torch files


def _global_name(obj: Any) -> str:
    """``module.Class`` of one ``safe_globals`` entry (a type or torch's ``(obj, name)``)."""
    if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[1], str):
        return obj[1]
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", repr(obj))
    return f"{module}.{qualname}" if module else str(qualname)


def _refused_type(exc: BaseException, path: Path, allowed: Sequence[Any]) -> str | None:
    """The ``module.Class`` torch refused: from its message, else from the file itself."""
    match = _GLOBAL_RE.search(str(exc))
    if match:
        return match.group(1)
    torch = _torch("Checkpoint.load()")
    lister = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if lister is None:
        return None
    try:
        found = [str(g) for g in lister(os.fspath(path))]
    except Exception:  # the listing is a best effort for the message only
        return None
    already = {_global_name(g) for g in allowed}
    rest = [g for g in found if g not in already]
    return rest[0] if rest else None


def _unsafe_error(
    exc: pickle.UnpicklingError, name: str, path: Path, allowed: Sequence[Any], method: str
) -> UnsafeCheckpointError | None:
    """Explain a ``weights_only`` refusal: which checkpoint, which type, both ways out.

    None when torch's complaint names no type (a corrupt file fails the same way,
    with an "Unsupported operand"): then torch's own error is the better message.
    """
    reason = _REASON_RE.search(str(exc))
    why = " ".join(reason.group(1).split()) if reason else ""
    if "Unsupported operand" in why:
        return None
    type_name = _refused_type(exc, path, allowed)
    if type_name is None and "<class '" not in why:
        return None
    if type_name is not None:
        names = [_global_name(g) for g in allowed if _global_name(g) != type_name]
        listed = ", ".join([*names, type_name])
        what = f"holds a pickled {type_name}, which torch.load(weights_only=True) refuses"
        ways = (
            f"if you trust that type, allow it and keep the protection: "
            f".{method}(safe_globals=[{listed}]); "
            "for a file you trust entirely: .load(weights_only=False)"
        )
    else:
        what = "holds a pickled object that torch.load(weights_only=True) refuses"
        ways = (
            "allow the types it needs with "
            f".{method}(safe_globals=[...]) if you trust them; "
            "for a file you trust entirely: .load(weights_only=False)"
        )
    detail = f" (torch: {why})" if why and type_name is None else ""
    return UnsafeCheckpointError(
        f"pytest-ckpts: checkpoint '{name}' ({path}) {what}{detail}; {ways}.",
        name=name,
        path=path,
        type_name=type_name,
    )


def _safe_globals_context(safe_globals: Sequence[Any] | None) -> Any:
    if not safe_globals:
        return contextlib.nullcontext()
    torch = _torch("Checkpoint.load(safe_globals=...)")
    context = getattr(torch.serialization, "safe_globals", None)
    if context is None:
        raise RuntimeError(
            "pytest-ckpts: safe_globals=[...] needs torch >= 2.5 "
            f"(torch.serialization.safe_globals); this is torch {torch.__version__}"
        )
    return context(list(safe_globals))


def _torch_load(
    name: str,
    path: Path,
    map_location: Any,
    *,
    weights_only: bool,
    mmap: bool,
    safe_globals: Sequence[Any] | None,
    method: str,
) -> Any:
    torch = _torch(f"Checkpoint.{method}()")
    use_mmap = mmap and can_mmap(path)
    allowed = list(safe_globals or ())
    try:
        with _safe_globals_context(allowed):
            return torch.load(
                os.fspath(path),
                map_location=map_location,
                weights_only=weights_only,
                mmap=use_mmap,
            )
    except pickle.UnpicklingError as exc:
        unsafe = None
        if weights_only and "Weights only load failed" in str(exc):
            unsafe = _unsafe_error(exc, name, path, allowed, method)
        if unsafe is None:
            raise
        raise unsafe from exc


# ------------------------------------------------------------------ safetensors files


def _move(tensor: Any, map_location: Any, torch: Any) -> Any:
    """Apply ``map_location`` as torch.load would to a tensor that lives on the CPU.

    A CPU target keeps the mapped tensor (no copy); another device copies this one
    tensor; a callable gets ``(storage, "cpu")`` and may return a new storage.
    """
    if map_location is None:
        return tensor
    if isinstance(map_location, Mapping):
        target = map_location.get("cpu")
        return tensor if target is None else _move(tensor, target, torch)
    if callable(map_location):
        storage = map_location(tensor.untyped_storage(), "cpu")
        if storage is None:
            return tensor
        out = torch.empty(0, dtype=tensor.dtype, device=storage.device)
        return out.set_(storage, tensor.storage_offset(), tensor.shape, tensor.stride())
    device = torch.device(map_location)
    return tensor if device.type == "cpu" else tensor.to(device)


def _safetensors_load(path: Path, map_location: Any, *, mmap: bool) -> dict[str, Any]:
    torch = _torch("loading .safetensors checkpoints")
    safetensors = require("safetensors", "loading .safetensors checkpoints")
    out: dict[str, Any] = {}
    with safetensors.safe_open(os.fspath(path), framework="pt", device="cpu") as f:
        for key in f.keys():  # noqa: SIM118 - safe_open is not a dict
            tensor = f.get_tensor(key)
            if not mmap:
                tensor = tensor.clone()  # own memory, independent of the file
            out[key] = _move(tensor, map_location, torch)
    return out


# ------------------------------------------------------------------ public entry points


def load_checkpoint(
    name: str,
    path: Path,
    map_location: Any,
    *,
    weights_only: bool,
    mmap: bool,
    safe_globals: Sequence[Any] | None,
) -> Any:
    """``Checkpoint.load()``: see its docstring."""
    if is_safetensors(path):
        return _safetensors_load(path, map_location, mmap=mmap)
    return _torch_load(
        name,
        path,
        map_location,
        weights_only=weights_only,
        mmap=mmap,
        safe_globals=safe_globals,
        method="load",
    )


class CheckpointTensors(Mapping[str, Any]):
    """Read-only name → tensor view of one checkpoint, usable inside its ``with`` block.

    Keys come from the file's header or object structure; a value is read when it
    is looked up (each lookup reads that tensor's pages, nothing else). Tensors
    already taken stay valid after the block; the mapping itself is then closed.
    """

    def __init__(self, name: str, path: Path, keys: Iterable[str], get: Callable[[str], Any]):
        self._name = name
        self._path = path
        self._keys = list(keys)
        self._keyset = frozenset(self._keys)
        self._get: Callable[[str], Any] | None = get

    def _check_open(self) -> Callable[[str], Any]:
        if self._get is None:
            raise ValueError(
                f"pytest-ckpts: tensors() of checkpoint '{self._name}' ({self._path}) was used "
                "after its `with` block; read the tensors you need inside the block"
            )
        return self._get

    def __getitem__(self, key: str) -> Any:
        get = self._check_open()
        if key not in self._keyset:
            import difflib  # only a miss pays for it

            close = difflib.get_close_matches(str(key), self._keys, n=3)
            hint = f"; did you mean {', '.join(repr(k) for k in close)}?" if close else ""
            raise KeyError(
                f"pytest-ckpts: checkpoint '{self._name}' ({self._path}) has no tensor "
                f"{key!r} among its {len(self._keys)} tensors{hint}"
            )
        return get(key)

    def __contains__(self, key: object) -> bool:
        return key in self._keyset

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        state = "closed" if self._get is None else f"{len(self._keys)} tensors"
        return f"<CheckpointTensors '{self._name}' ({state})>"

    def close(self) -> None:
        self._get = None


def _flatten(
    obj: Mapping[Any, Any], prefix: str, out: dict[str, Any], torch: Any, where: str
) -> None:
    for key, value in obj.items():
        full = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            if full in out:
                raise ValueError(
                    f"pytest-ckpts: checkpoint {where} names tensor {full!r} twice (a dotted "
                    "key and a nested one); use .load() and pick the tensors yourself"
                )
            out[full] = value
        elif isinstance(value, Mapping):
            _flatten(value, f"{full}.", out, torch, where)


def torch_tensor_table(name: str, path: Path, obj: Any) -> dict[str, Any]:
    """Name → tensor of a loaded torch object (its ``state_dict`` entry if it has one)."""
    torch = _torch("Checkpoint.tensors()")
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(
            f"pytest-ckpts: checkpoint '{name}' ({path}) holds a {type(obj).__name__}, not a "
            "mapping of tensors; use .load() for it"
        )
    out: dict[str, Any] = {}
    _flatten(obj, "", out, torch, f"'{name}' ({path})")
    return out


@contextlib.contextmanager
def open_tensors(
    name: str, path: Path, *, safe_globals: Sequence[Any] | None = None
) -> Iterator[CheckpointTensors]:
    """``Checkpoint.tensors()``: see its docstring."""
    if is_safetensors(path):
        safetensors = require("safetensors", "Checkpoint.tensors()")
        _torch("Checkpoint.tensors()")
        with safetensors.safe_open(os.fspath(path), framework="pt", device="cpu") as f:
            view = CheckpointTensors(name, path, f.keys(), f.get_tensor)
            try:
                yield view
            finally:
                view.close()
        return
    obj = _torch_load(
        name,
        path,
        "cpu",
        weights_only=True,
        mmap=True,
        safe_globals=safe_globals,
        method="tensors",
    )
    table = torch_tensor_table(name, path, obj)
    del obj
    view = CheckpointTensors(name, path, table, table.__getitem__)
    try:
        yield view
    finally:
        view.close()
        table.clear()
