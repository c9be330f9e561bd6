"""The files of an experiment beside its step checkpoints: architecture, config, data.

``CheckpointManager`` exposes these under the names the layout's guide uses
(``save_model_architecture``, ``save_config``, ``save_data_backup``, ...); the
work is here so the manager stays a facade. Every write is atomic.
"""

from __future__ import annotations

import pickle
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import yaml

from .._extras import require
from ..errors import (
    ExperimentFileNotFoundError,
    ExperimentValueError,
    ExperimentWarning,
    UntrustedPickleError,
)
from ..integrity import atomic_write_text
from .files import hashed_atomic_write
from .hashing import tensor_shape
from .layout import ExperimentLayout, is_experiment_hash
from .payload import PlainWalker

__all__ = [
    "backup_data",
    "check_name",
    "experiment_hashes",
    "inventory",
    "read_architecture",
    "read_config",
    "torch_module",
    "write_architecture",
    "write_config",
]

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_PLAIN = PlainWalker()


def torch_module() -> Any:
    """torch, imported on first use: importing the package must not import it."""
    return require("torch", "experiment checkpoints")


def check_name(value: str, what: str) -> str:
    """``value`` if it can be part of a file name in the layout (no separators, no dots first)."""
    if not _SAFE_NAME.fullmatch(value):
        raise ExperimentValueError(
            f"pytest-ckpts: {what} {value!r} must be a plain file-name part "
            "(letters, digits, '.', '_', '-'; no path separators)"
        )
    return value


def write_architecture(
    layout: ExperimentLayout, h: str, model: Any, model_name: str | None
) -> Path:
    """Write ``{h}_architecture.txt`` and ``.pkl`` unless they exist; return the .txt path.

    A model that cannot be pickled gets a ``RuntimeWarning`` and no ``.pkl``: the
    pickle is a convenience, and losing it must not break the training run.
    """
    torch = torch_module()
    txt = layout.architecture_file(h, "txt")
    pkl = layout.architecture_file(h, "pkl")
    if not txt.exists():
        atomic_write_text(txt, _architecture_text(h, model, model_name))
    if not pkl.exists():
        try:
            hashed_atomic_write(pkl, lambda f: torch.save(model, f))
        except (pickle.PicklingError, AttributeError, TypeError) as exc:
            warnings.warn(
                f"pytest-ckpts: {pkl.name} not written, the model cannot be pickled "
                f"({exc}); weights checkpoints are unaffected",
                ExperimentWarning,
                stacklevel=3,
            )
    return txt


def _architecture_text(h: str, model: Any, model_name: str | None) -> str:
    """For people: the module tree, then every parameter and buffer with shape and dtype."""
    lines = [f"# experiment {h}", f"# model: {model_name or type(model).__qualname__}"]
    lines += [str(model), "", "# parameters and buffers (name, shape, dtype)"]
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        shape = tensor_shape(tensor)
        lines.append(f"{name}\t{tuple(shape) if shape is not None else '?'}\t{tensor.dtype}")
    return "\n".join(lines) + "\n"


def read_architecture(layout: ExperimentLayout, h: str, trust_pickle: bool) -> Any:
    """Unpickle ``{h}_architecture.pkl``, which runs code: only with ``trust_pickle``."""
    if not trust_pickle:
        raise UntrustedPickleError(
            "pytest-ckpts: loading a pickled model can run arbitrary code; pass "
            "trust_pickle=True if you trust this file, or load weights with "
            "load_latest_checkpoint() instead"
        )
    return torch_module().load(layout.architecture_file(h, "pkl"), weights_only=False)


def write_config(layout: ExperimentLayout, h: str, config: Any, name: str) -> Path:
    """Write ``hp/{h}_{name}.yaml`` from the plain (YAML-safe) copy of ``config``."""
    path = layout.config_file(h, check_name(name, "config_name"))
    plain = _PLAIN.walk(config, "config")
    atomic_write_text(path, yaml.safe_dump(plain, sort_keys=True, default_flow_style=False))
    return path


def read_config(layout: ExperimentLayout, h: str, name: str) -> Any:
    """The saved config (``yaml.safe_load``), or None if none was saved under ``name``."""
    path = layout.config_file(h, check_name(name, "config_name"))
    if not path.exists():
        return None
    return yaml.safe_load(path.read_text("utf-8"))


def backup_data(layout: ExperimentLayout, h: str, src: Path, name: str | None) -> Path:
    """Copy ``src`` byte for byte to ``data/{h}_{name or 'data'}{suffix}``; return it.

    Any format goes (no h5py needed); the suffix is the source's, ``.h5`` if it has none.
    """
    if not src.is_file():
        raise ExperimentFileNotFoundError(f"pytest-ckpts: data file to back up not found: {src}")
    dest = layout.backup_file(h, check_name(name or "data", "backup_name"), src.suffix or ".h5")
    with open(src, "rb") as fsrc:
        hashed_atomic_write(dest, lambda f: shutil.copyfileobj(fsrc, f, 4 << 20))
    return dest


def experiment_hashes(layout: ExperimentLayout) -> list[str]:
    """Every experiment hash with a directory under ``root/checkpoints``, sorted."""
    if not layout.checkpoints_dir.is_dir():
        return []
    return sorted(
        p.name
        for p in layout.checkpoints_dir.iterdir()
        if p.is_dir() and is_experiment_hash(p.name)
    )


def inventory(layout: ExperimentLayout, h: str) -> dict[str, Any]:
    """The files experiment ``h`` holds, by kind (hidden and temp files left out)."""

    def names(folder: Path, pattern: str = "*") -> list[str]:
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.glob(pattern) if not p.name.startswith("."))

    return {
        "exp_hash": h,
        "path": str(layout.exp_dir(h)),
        "model_checkpoints": names(layout.model_dir(h), layout.step_glob(h)),
        "architecture_saved": layout.architecture_file(h, "txt").exists(),
        "configs": names(layout.hp_dir(h), "*.yaml"),
        "data_backups": names(layout.backup_dir(h)),
    }
