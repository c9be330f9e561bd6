"""Hash-named experiment checkpoint directories (seed 002) with an integrity index (seed 003).

An *experiment hash* (16 hex) names one configuration of a training run: model
architecture (module tree, layer types, parameter names, shapes and dtypes — not
weight values), hyperparameters and the set of active data UIDs. Change any of the
three and checkpoints go to a new directory, so every checkpoint's provenance is its
path::

    root/
    ├── data/  logs/                                 # global folders
    └── checkpoints/{h}/
        ├── model/{h}_step_000100.pt                 # weights (+ optimizer) per step
        ├── model/{h}_architecture.txt | .pkl        # saved once per hash
        ├── hp/{h}_config.yaml                       # saved on hash change and update
        ├── data/{h}_data.h5                         # data backup (a copy of the file)
        └── index.json                               # step, metrics, sha256, size

The hash is built from canonical JSON and sha256, never Python's ``hash()``, so it is
identical across processes, ``PYTHONHASHSEED`` values, dict insertion orders and set
orders; a value it cannot canonicalise is a ``TypeError`` naming its key path, never
a silent constant. Writes are atomic; loads use ``torch.load(weights_only=True)``.
The index lets ``latest``, ``best`` and ``verify`` answer without loading tensors.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import io
import json
import os
import re
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePath
from typing import Any

import yaml
from filelock import FileLock

from .integrity import atomic_write_bytes, atomic_write_text, calculate_sha256

__all__ = ["CheckpointManager", "ExperimentHashGenerator", "canonicalize"]

INDEX_NAME = "index.json"


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on extras
        raise ImportError(
            'pytest-ckpts: experiment checkpoints need torch: pip install "pytest-ckpts[torch]"'
        ) from exc
    return torch


# --------------------------------------------------------------------------- hashing


def canonicalize(value: Any, path: str = "config") -> Any:
    """A JSON value that is equal for equal inputs whatever their order or process.

    Raises ``TypeError`` naming the key path (``config['optimizer']['fn']``) for a
    value with no stable representation, rather than hashing something arbitrary.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return {"__float__": repr(value)}  # repr round-trips; -0.0, nan, inf stay distinct
    if isinstance(value, enum.Enum):
        return {"__enum__": f"{type(value).__qualname__}.{value.name}"}
    if isinstance(value, PurePath):
        return {"__path__": value.as_posix()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return {
            "__dataclass__": type(value).__qualname__,
            "fields": canonicalize(fields, path),
        }
    if isinstance(value, Mapping):
        out = {}
        for k in value:
            if not isinstance(k, (str, int, float, bool)) and k is not None:
                raise TypeError(
                    f"pytest-ckpts: cannot hash {path}: key {k!r} of type {type(k).__name__} "
                    "(use str, int, float or bool keys)"
                )
            out[json.dumps(canonicalize(k, path), sort_keys=True)] = canonicalize(
                value[k], f"{path}[{k!r}]"
            )
        return {"__map__": sorted(out.items())}
    if isinstance(value, (list, tuple)):
        return [canonicalize(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, (set, frozenset)):
        items = [json.dumps(canonicalize(v, f"{path}{{...}}"), sort_keys=True) for v in value]
        return {"__set__": sorted(items)}
    raise TypeError(
        f"pytest-ckpts: cannot hash {path}: value of type {type(value).__module__}."
        f"{type(value).__qualname__} has no stable representation; convert it to a "
        "str, number, list or dict first"
    )


def _digest(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def describe_architecture(model: Any) -> list[Any]:
    """The module tree with layer types, settings, parameter/buffer shapes and dtypes."""
    if model is None:
        return []
    out: list[Any] = []
    for name, module in model.named_modules():
        cls = type(module)
        entry: list[Any] = [name, f"{cls.__module__}.{cls.__qualname__}", module.extra_repr()]
        entry.append(
            [[n, list(p.shape), str(p.dtype)] for n, p in module.named_parameters(recurse=False)]
        )
        entry.append(
            [
                [n, list(b.shape), str(b.dtype)]
                for n, b in module.named_buffers(recurse=False)
                if b is not None
            ]
        )
        out.append(entry)
    return out


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
        uids = sorted(str(u) for u in active_data_uids) if active_data_uids is not None else None
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
        return self._last_hash

    def get_component_hashes(self) -> dict[str, str]:
        """Component digests of the last hash: keys model, config, data, combined."""
        return dict(self._last_components)


# --------------------------------------------------------------------------- manager


class CheckpointManager:
    """Saves and loads checkpoints in hash-named experiment directories.

    ``keep_last`` / ``keep_best`` bound how many step checkpoints an experiment keeps;
    the latest and the best (by ``best_metric`` / ``best_mode``) are never deleted.
    """

    def __init__(
        self,
        root_log_dir: str | os.PathLike[str] = "root_experiment",
        *,
        keep_last: int | None = None,
        keep_best: int | None = None,
        best_metric: str | None = None,
        best_mode: str = "min",
    ) -> None:
        if best_mode not in ("min", "max"):
            raise ValueError(f"pytest-ckpts: best_mode must be 'min' or 'max', got {best_mode!r}")
        self.root = Path(root_log_dir)
        self.checkpoints_dir = self.root / "checkpoints"
        self.data_dir = self.root / "data"
        self.logs_dir = self.root / "logs"
        for d in (self.checkpoints_dir, self.data_dir, self.logs_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.keep_last = keep_last
        self.keep_best = keep_best
        self.best_metric = best_metric
        self.best_mode = best_mode
        self.hash_generator = ExperimentHashGenerator()
        self.current_exp_hash: str | None = None
        self._models: dict[str, Any] = {}
        self._optimizers: dict[str, Any] = {}
        self._model: Any = None
        self._config: Any = None

    # -- registry (the seed's ledgers, scoped to this manager)
    def register_model(self, name: str, model: Any) -> None:
        self._models[name] = model

    def register_optimizer(self, name: str, optimizer: Any) -> None:
        self._optimizers[name] = optimizer

    # -- paths
    def exp_dir(self, exp_hash: str | None = None) -> Path:
        h = exp_hash or self.current_exp_hash
        if h is None:
            raise RuntimeError(
                "pytest-ckpts: no experiment hash yet; call update_experiment_hash() first"
            )
        return self.checkpoints_dir / h

    def _model_dir(self, h: str | None = None) -> Path:
        return self.exp_dir(h) / "model"

    def _index_path(self, h: str | None = None) -> Path:
        return self.exp_dir(h) / INDEX_NAME

    def _lock(self, h: str | None = None) -> FileLock:
        return FileLock(str(self.exp_dir(h) / ".index.lock"), timeout=60)

    # -- hash
    def update_experiment_hash(
        self,
        model: Any = None,
        config: Any = None,
        active_data_uids: Iterable[Any] | None = None,
        force: bool = False,
    ) -> tuple[str, bool]:
        """(Re)compute the experiment hash; return ``(exp_hash, is_new)``.

        A new hash creates its directory, saves the architecture (once) and the config.
        """
        uids = list(active_data_uids) if active_data_uids is not None else None
        new_hash = self.hash_generator.generate_hash(model, config, uids)
        is_new = force or new_hash != self.current_exp_hash
        self.current_exp_hash = new_hash
        self._model = model if model is not None else self._model
        self._config = config
        for sub in ("model", "hp", "data"):
            (self.exp_dir() / sub).mkdir(parents=True, exist_ok=True)
        if is_new:
            if model is not None:
                self.save_model_architecture(model)
            if config is not None:
                self.save_config(config)
        return new_hash, is_new

    # -- saving
    def save_model_architecture(self, model: Any, model_name: str | None = None) -> Path:
        """Write ``{h}_architecture.txt`` and ``.pkl`` once per hash; return the .txt path."""
        torch = _torch()
        h = self.exp_dir().name
        txt = self._model_dir() / f"{h}_architecture.txt"
        pkl = self._model_dir() / f"{h}_architecture.pkl"
        if not txt.exists():
            header = f"# model: {model_name or type(model).__qualname__}\n"
            atomic_write_text(txt, header + str(model) + "\n")
        if not pkl.exists():
            buf = io.BytesIO()
            torch.save(model, buf)
            atomic_write_bytes(pkl, buf.getvalue())
        return txt

    def save_config(self, config: Any, config_name: str = "config") -> Path:
        """Write ``hp/{h}_{config_name}.yaml`` (atomically; rewritten on every call)."""
        path = self.exp_dir() / "hp" / f"{self.exp_dir().name}_{config_name}.yaml"
        text = yaml.safe_dump(_plain(config), sort_keys=True, default_flow_style=False)
        atomic_write_text(path, text)
        return path

    def save_data_backup(
        self, data_h5_path: str | os.PathLike[str], backup_name: str | None = None
    ) -> Path:
        """Copy the data file to ``data/{h}_{backup_name or 'data'}{suffix}``."""
        src = Path(data_h5_path)
        name = backup_name or "data"
        dest = self.exp_dir() / "data" / f"{self.exp_dir().name}_{name}{src.suffix or '.h5'}"
        tmp = dest.with_name(f".{dest.name}.tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
        return dest

    def save_model_checkpoint(
        self,
        model: Any = None,
        model_name: str | None = None,
        step: int | None = None,
        save_optimizer: bool = True,
        optimizer_name: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        *,
        optimizer: Any = None,
    ) -> Path:
        """Save weights (and optimizer state) for ``step``; return the file path.

        Numeric ``metadata`` values are recorded in the index as metrics (``best``
        uses them). The file appears complete or not at all.
        """
        torch = _torch()
        model = self._resolve(model, model_name, self._models, "model") or self._model
        if model is None:
            raise ValueError("pytest-ckpts: save_model_checkpoint needs a model")
        if optimizer is None and save_optimizer:
            optimizer = self._resolve(None, optimizer_name, self._optimizers, "optimizer")
            if optimizer is None and len(self._optimizers) == 1:
                optimizer = next(iter(self._optimizers.values()))
        index = self._read_index()
        if step is None:
            step = max((e["step"] for e in index["checkpoints"]), default=-1) + 1
        h = self.exp_dir().name
        path = self._model_dir() / f"{h}_step_{step:06d}.pt"
        payload: dict[str, Any] = {
            "step": step,
            "exp_hash": h,
            "model_state_dict": model.state_dict(),
            "metadata": _plain(dict(metadata or {})),
        }
        if save_optimizer and optimizer is not None:
            payload["optimizer_state_dict"] = optimizer.state_dict()
        buf = io.BytesIO()
        torch.save(payload, buf)
        data = buf.getvalue()
        atomic_write_bytes(path, data)
        metrics = {
            k: float(v)
            for k, v in (metadata or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        entry = {
            "step": step,
            "file": path.name,
            "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data),
            "metrics": metrics,
        }
        with self._lock():
            index = self._read_index()
            index["checkpoints"] = [e for e in index["checkpoints"] if e["step"] != step]
            index["checkpoints"].append(entry)
            index["checkpoints"].sort(key=lambda e: e["step"])
            self._apply_retention(index)
            self._write_index(index)
        return path

    @staticmethod
    def _resolve(obj: Any, name: str | None, registry: dict[str, Any], what: str) -> Any:
        if obj is not None or name is None:
            return obj
        if name not in registry:
            raise KeyError(
                f"pytest-ckpts: no {what} registered as {name!r}; call register_{what}() first"
            )
        return registry[name]

    # -- index
    def _read_index(self, h: str | None = None) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self._index_path(h).read_text("utf-8"))
        except FileNotFoundError:
            return {"exp_hash": self.exp_dir(h).name, "checkpoints": []}
        return data

    def _write_index(self, index: dict[str, Any], h: str | None = None) -> None:
        atomic_write_text(self._index_path(h), json.dumps(index, indent=2, sort_keys=True) + "\n")

    def latest(self, exp_hash: str | None = None) -> dict[str, Any] | None:
        """The index entry of the highest step, without touching the checkpoint files."""
        entries = self._read_index(exp_hash)["checkpoints"]
        return max(entries, key=lambda e: e["step"]) if entries else None

    def best(
        self, metric: str | None = None, mode: str | None = None, exp_hash: str | None = None
    ) -> dict[str, Any] | None:
        """The index entry with the best ``metric`` (``mode`` "min" or "max")."""
        metric = metric or self.best_metric
        mode = mode or self.best_mode
        if metric is None:
            raise ValueError("pytest-ckpts: best() needs a metric name")
        if mode not in ("min", "max"):
            raise ValueError(f"pytest-ckpts: mode must be 'min' or 'max', got {mode!r}")
        entries: list[dict[str, Any]] = [
            e for e in self._read_index(exp_hash)["checkpoints"] if metric in e["metrics"]
        ]
        if not entries:
            return None
        pick = min if mode == "min" else max
        chosen: dict[str, Any] = pick(
            entries,
            key=lambda e: (e["metrics"][metric], -e["step"] if mode == "min" else e["step"]),
        )
        return chosen

    def verify(self, exp_hash: str | None = None) -> list[str]:
        """Problems found by re-hashing every indexed checkpoint (empty list: all good)."""
        problems = []
        for e in self._read_index(exp_hash)["checkpoints"]:
            path = self._model_dir(exp_hash) / e["file"]
            if not path.is_file():
                problems.append(f"{e['file']}: missing")
                continue
            actual = calculate_sha256(path)
            if actual != e["sha256"] or path.stat().st_size != e["size"]:
                problems.append(f"{e['file']}: sha256 {actual} does not match index {e['sha256']}")
        return problems

    def _apply_retention(self, index: dict[str, Any]) -> None:
        if self.keep_last is None and self.keep_best is None:
            return
        entries = index["checkpoints"]
        keep: set[int] = set()
        if entries:
            keep.add(max(e["step"] for e in entries))  # the latest, always
        ordered = sorted(entries, key=lambda e: e["step"])
        if self.keep_last is not None:
            keep.update(e["step"] for e in ordered[-self.keep_last :] if self.keep_last > 0)
        if self.best_metric is not None:
            scored = [e for e in entries if self.best_metric in e["metrics"]]
            scored.sort(
                key=lambda e: e["metrics"][self.best_metric],
                reverse=self.best_mode == "max",
            )
            k = max(1, self.keep_best or 0)  # the best one, always
            keep.update(e["step"] for e in scored[:k])
        elif self.keep_last is None:
            return  # keep_best without a metric: nothing to rank by
        removed = [e for e in entries if e["step"] not in keep]
        index["checkpoints"] = [e for e in entries if e["step"] in keep]
        for e in removed:
            (self._model_dir() / e["file"]).unlink(missing_ok=True)

    # -- loading
    def load_latest_checkpoint(
        self,
        model: Any = None,
        model_name: str | None = None,
        load_optimizer: bool = True,
        optimizer_name: str | None = None,
        exp_hash: str | None = None,
        *,
        optimizer: Any = None,
    ) -> dict[str, Any] | None:
        """Load the highest-step checkpoint into ``model`` (and optimizer); return its data.

        Uses ``torch.load(weights_only=True)``. Returns None when there is none.
        """
        torch = _torch()
        h = exp_hash or self.current_exp_hash
        if h is None:
            return None
        entry = self.latest(h)
        if entry is None:
            return None
        model = self._resolve(model, model_name, self._models, "model")
        if optimizer is None and load_optimizer:
            optimizer = self._resolve(None, optimizer_name, self._optimizers, "optimizer")
        data: dict[str, Any] = torch.load(
            self._model_dir(h) / entry["file"], map_location="cpu", weights_only=True
        )
        if model is not None:
            model.load_state_dict(data["model_state_dict"])
        if load_optimizer and optimizer is not None and "optimizer_state_dict" in data:
            optimizer.load_state_dict(data["optimizer_state_dict"])
        return data

    def load_architecture(self, exp_hash: str | None = None, *, trust_pickle: bool = False) -> Any:
        """Unpickle the full model saved for a hash. Only for files you trust.

        Unpickling runs arbitrary code, so it needs ``trust_pickle=True``.
        """
        if not trust_pickle:
            raise PermissionError(
                "pytest-ckpts: loading a pickled model can run arbitrary code; pass "
                "trust_pickle=True if you trust this file, or load weights with "
                "load_latest_checkpoint() instead"
            )
        torch = _torch()
        h = self.exp_dir(exp_hash).name
        return torch.load(self._model_dir(h) / f"{h}_architecture.pkl", weights_only=False)

    def load_config(self, exp_hash: str | None = None, config_name: str = "config") -> Any:
        """The saved config dict for a hash (None if none was saved)."""
        h = self.exp_dir(exp_hash).name
        path = self.exp_dir(h) / "hp" / f"{h}_{config_name}.yaml"
        if not path.exists():
            return None
        return yaml.safe_load(path.read_text("utf-8"))

    def list_experiment_hashes(self) -> list[str]:
        """Every experiment hash under ``root/checkpoints``, sorted."""
        return sorted(
            p.name
            for p in self.checkpoints_dir.iterdir()
            if p.is_dir() and re.fullmatch(r"[0-9a-f]{16}", p.name)
        )

    def get_checkpoint_info(self, exp_hash: str | None = None) -> dict[str, Any]:
        """What an experiment directory holds (the seed's keys, plus latest/best)."""
        h = self.exp_dir(exp_hash).name
        d = self.exp_dir(h)
        model_dir = d / "model"
        checkpoints = (
            sorted(p.name for p in model_dir.glob(f"{h}_step_*.pt")) if model_dir.exists() else []
        )
        return {
            "exp_hash": h,
            "path": str(d),
            "model_checkpoints": checkpoints,
            "architecture_saved": (model_dir / f"{h}_architecture.txt").exists(),
            "configs": sorted(p.name for p in (d / "hp").glob("*.yaml"))
            if (d / "hp").exists()
            else [],
            "data_backups": sorted(p.name for p in (d / "data").iterdir())
            if (d / "data").exists()
            else [],
            "latest": self.latest(h),
            "best": self.best(exp_hash=h) if self.best_metric else None,
        }


def _plain(value: Any) -> Any:
    """A YAML/pickle-safe copy: paths and enums as strings, tuples/sets as lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_plain(v) for v in value), key=repr)
    if isinstance(value, PurePath):
        return value.as_posix()
    if isinstance(value, enum.Enum):
        return value.name
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
