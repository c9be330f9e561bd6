"""The 16-hex experiment hash: architecture, hyperparameters and active data UIDs.

The hash is built from canonical JSON and sha256, never Python's ``hash()``, so it
is identical across processes, ``PYTHONHASHSEED`` values, dict insertion orders and
set orders. A value it cannot canonicalise is an ``ExperimentTypeError`` (a
``TypeError``) naming its key path, never a silent constant. Existing experiment
directories are named by this hash, so the canonical form may only change on
purpose (``tests/experiments/test_hashing.py`` pins one value).
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable
from pathlib import PurePath
from typing import Any

from ..errors import ExperimentTypeError
from .payload import ValueWalker, canonical_json, type_name

__all__ = ["ExperimentHashGenerator", "canonicalize", "describe_architecture", "tensor_shape"]


class CanonicalWalker(ValueWalker):
    """The flavour of the value walk that the hash is computed from.

    Dict keys and set members are sorted by their canonical JSON, floats are spelled
    by ``float.__repr__`` (shortest round-trip, the same on every platform), enums by
    class and member name, paths as POSIX strings, dataclasses by class and fields.
    Tagged objects (``{"__float__": ...}``) keep ``1``, ``1.0`` and ``"1"`` apart.
    """

    def cannot(self, path: str) -> str:
        return f"pytest-ckpts: cannot hash {path}"

    def enum(self, value: enum.Enum) -> Any:
        return {"__enum__": f"{type(value).__qualname__}.{value.name}"}

    def float(self, value: float) -> Any:
        # float.__repr__, not repr(): a float subclass (numpy.float64) may spell itself
        # differently; -0.0, nan and inf stay distinct and JSON-safe as strings.
        return {"__float__": float.__repr__(value)}

    def path(self, value: PurePath) -> Any:
        return {"__path__": value.as_posix()}

    def dataclass(self, value: Any, fields: Any) -> Any:
        return {"__dataclass__": type(value).__qualname__, "fields": fields}

    def key(self, key: Any, path: str) -> Any:
        return canonical_json(self.walk(key, path))

    def mapping(self, pairs: list[tuple[Any, Any]]) -> Any:
        return {"__map__": sorted(dict(pairs).items())}

    def members(self, items: list[Any]) -> Any:
        return {"__set__": sorted(canonical_json(item) for item in items)}

    def refusal(self, value: Any) -> str:
        return (
            f"value of type {type_name(value)} has no stable representation; convert it to a "
            "str, number, list or dict first"
        )


_CANONICAL = CanonicalWalker()


def canonicalize(value: Any, path: str = "config") -> Any:
    """A JSON value that is equal for equal inputs whatever their order or process.

    Raises ``ExperimentTypeError`` (a ``TypeError``) naming the key path
    (``config['optimizer']['fn']``) for a value with no stable representation,
    rather than hashing something arbitrary such as an object's ``repr`` with its
    memory address.
    """
    return _CANONICAL.walk(value, path)


def _digest(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()


def describe_architecture(model: Any) -> list[Any]:
    """The module tree with layer types, settings, parameter/buffer shapes and dtypes.

    Weight values are left out on purpose: retraining must not move checkpoints to a
    new directory, while adding a layer or changing a width must.
    """
    if model is None:
        return []
    if not callable(getattr(model, "named_modules", None)):
        raise ExperimentTypeError(
            f"pytest-ckpts: cannot hash model of type {type(model).__qualname__}: "
            "expected a torch.nn.Module",
            key_path="model",
        )
    out: list[Any] = []
    for name, module in model.named_modules():
        cls = type(module)
        # qualname, not module: a class run as ``__main__`` and imported elsewhere is
        # the same architecture.
        entry: list[Any] = [name, cls.__qualname__, module.extra_repr()]
        entry.append([_tensor_sig(n, p) for n, p in module.named_parameters(recurse=False)])
        entry.append(
            [_tensor_sig(n, b) for n, b in module.named_buffers(recurse=False) if b is not None]
        )
        out.append(entry)
    return out


def tensor_shape(tensor: Any) -> list[int] | None:
    """The shape, or None for a lazy module's still-uninitialized parameter."""
    try:
        return [int(d) for d in tensor.shape]
    except RuntimeError:
        return None


def _tensor_sig(name: str, tensor: Any) -> list[Any]:
    return [name, tensor_shape(tensor), str(tensor.dtype)]


class ExperimentHashGenerator:
    """Computes the 16-hex experiment hash and remembers the last one for change checks."""

    COMPONENTS = ("model", "config", "data")

    def __init__(self) -> None:
        self._last_hash: str | None = None
        self._last_components: dict[str, str] = {}

    @staticmethod
    def component_hashes(
        model: Any = None, config: Any = None, active_data_uids: Iterable[Any] | None = None
    ) -> dict[str, str]:
        """Digests of each component plus the 16-hex ``combined`` hash, without recording them.

        UIDs count as a set: order and duplicates do not matter, ``1`` and ``"1"`` differ.
        A lone string or bytes is refused: iterating it would hash its characters.
        """
        if isinstance(active_data_uids, (str, bytes)):
            raise ExperimentTypeError(
                "pytest-ckpts: active_data_uids must be a collection of UIDs, got a single "
                f"{type(active_data_uids).__name__}; wrap it in a list",
                key_path="active_data_uids",
            )
        uids = (
            sorted(
                {canonical_json(canonicalize(u, "active_data_uids[...]")) for u in active_data_uids}
            )
            if active_data_uids is not None
            else None
        )
        components = {
            "model": _digest(describe_architecture(model)),
            "config": _digest(canonicalize(config if config is not None else {}, "config")),
            "data": _digest(uids),
        }
        combined = hashlib.sha256(
            "|".join(f"{k}={components[k]}" for k in ExperimentHashGenerator.COMPONENTS).encode()
        ).hexdigest()[:16]
        components["combined"] = combined
        return components

    def generate_hash(
        self, model: Any = None, config: Any = None, active_data_uids: Iterable[Any] | None = None
    ) -> str:
        """Return the 16-hex hash of (architecture, hyperparameters, data UIDs)."""
        components = self.component_hashes(model, config, active_data_uids)
        self._last_components = components
        self._last_hash = components["combined"]
        return self._last_hash

    def has_changed(
        self, model: Any = None, config: Any = None, active_data_uids: Iterable[Any] | None = None
    ) -> tuple[bool, list[str]]:
        """Whether the hash would change, and which components ("model", "config", "data")."""
        components = self.component_hashes(model, config, active_data_uids)
        if self._last_hash is None:
            return True, list(self.COMPONENTS)
        changed = [c for c in self.COMPONENTS if components[c] != self._last_components.get(c)]
        return bool(changed), changed

    def get_last_hash(self) -> str | None:
        """The hash from the last ``generate_hash`` call (None before the first)."""
        return self._last_hash

    def get_component_hashes(self) -> dict[str, str]:
        """Component digests of the last hash: keys model, config, data, combined."""
        return dict(self._last_components)
