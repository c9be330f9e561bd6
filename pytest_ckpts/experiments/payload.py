"""One walk over config and metadata values, in three flavours.

The experiment hash, the ``hp/{h}_config.yaml`` file and the metadata stored in a
step checkpoint all accept the same kinds of value (numbers, strings, enums, paths,
dataclasses, 0-d numpy/torch scalars, and dicts, lists, tuples and sets of them) and
all refuse the rest with the key path of the offending value. :class:`ValueWalker`
is that walk, written once; a flavour says only how each kind is spelled:

- the canonical form the hash is computed from (``hashing.CanonicalWalker``),
- :class:`PlainWalker`, the YAML-safe copy ``save_config`` writes,
- :class:`PayloadWalker`, the copy ``torch.load(weights_only=True)`` can read back.

This module also turns metadata and ``metrics=`` into the numbers the index ranks.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

from ..errors import ExperimentTypeError

__all__ = [
    "PayloadWalker",
    "PlainWalker",
    "ValueWalker",
    "canonical_json",
    "collect_metrics",
    "is_array_scalar",
]

_KEY_TYPES = (str, int, float, bool, enum.Enum)


def canonical_json(obj: Any) -> str:
    """Compact JSON with sorted keys: one spelling per value, the same in every process."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def is_array_scalar(value: Any) -> bool:
    """A numpy or torch 0-d value (``np.float32(1)``, ``torch.tensor(3)``), told apart
    by module name so that neither library has to be imported to ask."""
    root = type(value).__module__.partition(".")[0]
    return (
        root in ("numpy", "torch")
        and callable(getattr(value, "item", None))
        and tuple(getattr(value, "shape", (None,))) == ()
    )


def type_name(value: Any) -> str:
    """``module.Qualname`` of a value's type, as error messages spell it."""
    return f"{type(value).__module__}.{type(value).__qualname__}"


class ValueWalker:
    """The recursive walk; subclasses override how each kind of value is spelled.

    The order of the checks matters: ``bool`` before ``int``, enums before ``int``
    and ``str`` (``IntEnum`` and ``StrEnum`` are both), :meth:`special` before the
    0-d scalar check (a checkpoint keeps a 0-d tensor as a tensor). A dataclass is
    walked as the dict of its fields, so its fields' key paths read like a dict's.
    """

    #: tuples stay tuples (a checkpoint) or become lists (JSON and YAML have no tuple)
    keep_tuples = False

    def walk(self, value: Any, path: str) -> Any:
        """The flavour's copy of ``value``; ``path`` names it in error messages."""
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, enum.Enum):
            return self.enum(value)
        if isinstance(value, str):
            return str(value)
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float):
            return self.float(value)
        if isinstance(value, PurePath):
            return self.path(value)
        special = self.special(value)
        if special is not None:
            return special
        if is_array_scalar(value):
            return self.walk(value.item(), path)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
            return self.dataclass(value, self.walk(fields, path))
        if isinstance(value, Mapping):
            pairs = [(self._key(k, path), self.walk(v, f"{path}[{k!r}]")) for k, v in value.items()]
            return self.mapping(pairs)
        if isinstance(value, (list, tuple)):
            items = [self.walk(v, f"{path}[{i}]") for i, v in enumerate(value)]
            return tuple(items) if isinstance(value, tuple) and self.keep_tuples else items
        if isinstance(value, (set, frozenset)):
            return self.members([self.walk(v, f"{path}{{...}}") for v in value])
        raise ExperimentTypeError(f"{self.cannot(path)}: {self.refusal(value)}", key_path=path)

    def _key(self, key: Any, path: str) -> Any:
        if key is not None and not isinstance(key, _KEY_TYPES):
            raise ExperimentTypeError(
                f"{self.cannot(path)}: key {key!r} of type "
                f"{type(key).__name__} (use str, int, float, bool or enum keys)",
                key_path=path,
            )
        return self.key(key, path)

    # -- the spelling of each kind; the defaults are the plain (YAML-safe) ones
    def cannot(self, path: str) -> str:
        """The start of an error message about the value at ``path``."""
        return f"pytest-ckpts: cannot store {path}"

    def enum(self, value: enum.Enum) -> Any:
        return value.name

    def float(self, value: float) -> Any:
        return float(value)  # numpy.float64 is a float subclass: make it a plain float

    def path(self, value: PurePath) -> Any:
        return value.as_posix()

    def special(self, value: Any) -> Any:
        """A flavour-specific copy of ``value``, or None to let the walk go on."""
        return None

    def dataclass(self, value: Any, fields: Any) -> Any:
        return fields

    def key(self, key: Any, path: str) -> Any:
        return key.name if isinstance(key, enum.Enum) else key

    def mapping(self, pairs: list[tuple[Any, Any]]) -> Any:
        return dict(pairs)

    def members(self, items: list[Any]) -> Any:
        return sorted(items, key=canonical_json)  # a byte-stable file whatever the set order

    def refusal(self, value: Any) -> str:
        return (
            f"value of type {type_name(value)} has no plain YAML form; convert it to a str, "
            "number, list or dict first"
        )


class PlainWalker(ValueWalker):
    """The YAML-safe copy of a config that ``save_config`` writes.

    Paths become POSIX strings, enums their names, dataclasses dicts, tuples and
    sets lists (sets sorted, so the file is byte-stable), 0-d values Python numbers.
    Dict keys keep their type (``3`` and ``"3"`` stay two keys). Anything else is
    refused rather than written as a ``str()`` that could not be read back.
    """


class PayloadWalker(ValueWalker):
    """A copy of checkpoint metadata that ``torch.load(weights_only=True)`` can read back.

    As :class:`PlainWalker`, except that tensors are kept (detached, on CPU), tuples
    stay tuples and sets are sorted by ``repr``. A numpy array or an arbitrary object
    is refused: saved, it would make the checkpoint unloadable under ``weights_only``.
    """

    keep_tuples = True

    def __init__(self, torch: Any) -> None:
        self._tensor = torch.Tensor

    def special(self, value: Any) -> Any:
        if isinstance(value, self._tensor):
            return value.detach().cpu()
        return None

    def members(self, items: list[Any]) -> Any:
        return sorted(items, key=repr)

    def cannot(self, path: str) -> str:
        return f"pytest-ckpts: cannot store {path} in a checkpoint"

    def refusal(self, value: Any) -> str:
        hint = (
            " (use torch.from_numpy(x) or x.tolist())" if type(value).__name__ == "ndarray" else ""
        )
        return (
            f"value of type {type_name(value)} would not load with "
            f"torch.load(weights_only=True){hint}"
        )


def as_number(torch: Any, value: Any) -> float | None:
    """``value`` as a float if it is a real number or a numeric 0-d tensor/array, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, torch.Tensor):
        if (
            value.numel() != 1
            or value.dim() != 0
            or value.is_complex()
            or value.dtype == torch.bool
        ):
            return None
        return float(value.item())
    if is_array_scalar(value):
        item = value.item()
        return (
            float(item) if isinstance(item, (int, float)) and not isinstance(item, bool) else None
        )
    return None


def collect_metrics(
    torch: Any, metadata: Mapping[str, Any] | None, metrics: Mapping[str, Any] | None
) -> dict[str, float]:
    """Numeric metadata values plus explicit ``metrics`` (which win on a clash).

    Explicit metrics must be numbers: a typo such as a string there would otherwise
    silently drop the value from ``best()`` and retention.
    """
    out: dict[str, float] = {}
    for k, v in (metadata or {}).items():
        number = as_number(torch, v)
        if number is not None:
            out[str(k)] = number
    for k, v in (metrics or {}).items():
        number = as_number(torch, v)
        if number is None:
            raise ExperimentTypeError(
                f"pytest-ckpts: metrics[{k!r}] must be a real number or a 0-d tensor, "
                f"got {type(v).__qualname__}",
                key_path=f"metrics[{k!r}]",
            )
        out[str(k)] = number
    return out
