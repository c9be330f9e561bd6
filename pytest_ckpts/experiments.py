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
import json
import math
import os
import pickle
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path, PurePath
from typing import Any, BinaryIO, NamedTuple

import yaml
from filelock import FileLock

from ._extras import require
from .errors import ChecksumMismatchError
from .integrity import atomic_write_stream, atomic_write_text, calculate_sha256

__all__ = ["CheckpointManager", "ExperimentHashGenerator", "canonicalize", "describe_architecture"]

INDEX_NAME = "index.json"


def _torch() -> Any:
    return require("torch", "experiment checkpoints")


# --------------------------------------------------------------------------- hashing


def canonicalize(value: Any, path: str = "config") -> Any:
    """A JSON value that is equal for equal inputs whatever their order or process.

    Dict keys and set members are sorted by their canonical JSON, floats are spelled
    by ``float.__repr__`` (shortest round-trip, the same on every platform), enums by
    class and member name, paths as POSIX strings, dataclasses by class and fields.
    Raises ``TypeError`` naming the key path (``config['optimizer']['fn']``) for a
    value with no stable representation, rather than hashing something arbitrary
    such as an object's ``repr`` with its memory address.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, enum.Enum):  # before int/str: IntEnum and StrEnum are both
        return {"__enum__": f"{type(value).__qualname__}.{value.name}"}
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        # float.__repr__, not repr(): a float subclass (numpy.float64) may spell itself
        # differently; -0.0, nan and inf stay distinct and JSON-safe as strings.
        return {"__float__": float.__repr__(value)}
    if isinstance(value, PurePath):
        return {"__path__": value.as_posix()}
    if _is_array_scalar(value):  # numpy / torch 0-d values, e.g. UIDs from an index array
        return canonicalize(value.item(), path)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return {
            "__dataclass__": type(value).__qualname__,
            "fields": canonicalize(fields, path),
        }
    if isinstance(value, Mapping):
        out = {}
        for k in value:
            if k is not None and not isinstance(k, (str, int, float, bool, enum.Enum)):
                raise TypeError(
                    f"pytest-ckpts: cannot hash {path}: key {k!r} of type {type(k).__name__} "
                    "(use str, int, float, bool or enum keys)"
                )
            out[_canonical_json(canonicalize(k, path))] = canonicalize(value[k], f"{path}[{k!r}]")
        return {"__map__": sorted(out.items())}
    if isinstance(value, (list, tuple)):
        return [canonicalize(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, (set, frozenset)):
        items = [_canonical_json(canonicalize(v, f"{path}{{...}}")) for v in value]
        return {"__set__": sorted(items)}
    raise TypeError(
        f"pytest-ckpts: cannot hash {path}: value of type {type(value).__module__}."
        f"{type(value).__qualname__} has no stable representation; convert it to a "
        "str, number, list or dict first"
    )


def _is_array_scalar(value: Any) -> bool:
    root = type(value).__module__.partition(".")[0]
    return (
        root in ("numpy", "torch")
        and callable(getattr(value, "item", None))
        and tuple(getattr(value, "shape", (None,))) == ()
    )


def _canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _digest(obj: Any) -> str:
    return hashlib.sha256(_canonical_json(obj).encode("utf-8")).hexdigest()


def describe_architecture(model: Any) -> list[Any]:
    """The module tree with layer types, settings, parameter/buffer shapes and dtypes.

    Weight values are left out on purpose: retraining must not move checkpoints to a
    new directory, while adding a layer or changing a width must.
    """
    if model is None:
        return []
    if not callable(getattr(model, "named_modules", None)):
        raise TypeError(
            f"pytest-ckpts: cannot hash model of type {type(model).__qualname__}: "
            "expected a torch.nn.Module"
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


def _shape(tensor: Any) -> list[int] | None:
    """The shape, or None for a lazy module's still-uninitialized parameter."""
    try:
        return [int(d) for d in tensor.shape]
    except RuntimeError:
        return None


def _tensor_sig(name: str, tensor: Any) -> list[Any]:
    return [name, _shape(tensor), str(tensor.dtype)]


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
            raise TypeError(
                "pytest-ckpts: active_data_uids must be a collection of UIDs, got a single "
                f"{type(active_data_uids).__name__}; wrap it in a list"
            )
        uids = (
            sorted(
                {
                    _canonical_json(canonicalize(u, "active_data_uids[...]"))
                    for u in active_data_uids
                }
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


# --------------------------------------------------------------------------- atomic files


class _HashingWriter:
    """File wrapper that hashes what passes through, so nothing is read back."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._sha = hashlib.sha256()
        self.size = 0

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self._sha.update(view)
        self.size += view.nbytes
        return self._raw.write(view)

    def flush(self) -> None:
        self._raw.flush()

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()


def _atomic_stream(path: Path, write: Callable[[Any], object]) -> tuple[str, int]:
    """Write atomically (streaming); return (sha256, size) of exactly what landed."""
    box: list[_HashingWriter] = []

    def run(f: BinaryIO) -> None:
        box.append(_HashingWriter(f))
        write(box[0])

    atomic_write_stream(path, run)
    return box[0].sha256, box[0].size


class _Staged(NamedTuple):
    tmp: Path
    sha256: str
    size: int


def _stage(directory: Path, name: str, write: Callable[[Any], object]) -> _Staged:
    """Write a complete, fsynced, hashed temp file in ``directory``; the caller renames it.

    Split from the rename so the (slow) tensor write happens outside the index lock:
    the lock then covers only rename + index update, milliseconds whatever the size.
    """
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as raw:
            writer = _HashingWriter(raw)
            write(writer)
            raw.flush()
            os.fsync(raw.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return _Staged(Path(tmp), writer.sha256, writer.size)


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX; a no-op where dirs cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- manager

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _check_name(value: str, what: str) -> str:
    if not _SAFE_NAME.fullmatch(value):
        raise ValueError(
            f"pytest-ckpts: {what} {value!r} must be a plain file-name part "
            "(letters, digits, '.', '_', '-'; no path separators)"
        )
    return value


def _check_mode(mode: str) -> str:
    if mode not in ("min", "max"):
        raise ValueError(f"pytest-ckpts: mode must be 'min' or 'max', got {mode!r}")
    return mode


class _Retention(NamedTuple):
    keep_last: int | None
    keep_best: int | None
    metric: str | None
    mode: str


def _retention(
    keep_last: int | None, keep_best: int | None, metric: str | None, mode: str
) -> _Retention:
    """Validated retention settings (shared by the constructor and per-save overrides)."""
    _check_mode(mode)
    for label, n in (("keep_last", keep_last), ("keep_best", keep_best)):
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"pytest-ckpts: {label} must be a positive int, got {n!r}")
    if keep_best is not None and metric is None:
        raise ValueError("pytest-ckpts: keep_best needs best_metric= to rank checkpoints by")
    return _Retention(keep_last, keep_best, metric, mode)


def _rank(entries: list[dict[str, Any]], metric: str, mode: str) -> list[dict[str, Any]]:
    """Entries that have ``metric``, best first; ties go to the later step.

    ``best()`` and retention share this order, so retention can never delete the
    checkpoint ``best()`` names.
    """
    scored = [e for e in entries if metric in e.get("metrics", {})]
    sign = 1.0 if mode == "min" else -1.0
    return sorted(scored, key=lambda e: (sign * e["metrics"][metric], -e["step"]))


class CheckpointManager:
    """Saves and loads checkpoints in hash-named experiment directories (seed 002).

    Each experiment directory has an ``index.json`` recording, per step checkpoint,
    its file, size, sha256 and numeric metrics, so ``latest()``, ``best()`` and
    ``verify()`` need no directory scan and no tensor load. The index is rewritten
    atomically under a file lock, so concurrent savers cannot lose entries.

    Retention: ``keep_last=N`` keeps the N newest step checkpoints, ``keep_best=K``
    the K best by ``best_metric`` (``best_mode`` "min" or "max"), here or per
    :meth:`save_model_checkpoint` call; whatever the settings, the latest and the
    best checkpoint are never deleted.
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
        _retention(keep_last, keep_best, best_metric, best_mode)
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
        self._locks: dict[str, FileLock] = {}

    # -- registry (the seed's ledgers, scoped to this manager instead of global state)
    def register_model(self, name: str, model: Any) -> None:
        """Make ``model`` available to ``model_name=`` arguments."""
        self._models[name] = model

    def register_optimizer(self, name: str, optimizer: Any) -> None:
        """Make ``optimizer`` available to ``optimizer_name=`` arguments."""
        self._optimizers[name] = optimizer

    # -- paths
    def exp_dir(self, exp_hash: str | None = None) -> Path:
        """``root/checkpoints/{h}`` for ``exp_hash`` or the current hash."""
        h = exp_hash or self.current_exp_hash
        if h is None:
            raise RuntimeError(
                "pytest-ckpts: no experiment hash yet; call update_experiment_hash() first"
            )
        if not re.fullmatch(r"[0-9a-f]{16}", h):
            raise ValueError(f"pytest-ckpts: {h!r} is not a 16-hex experiment hash")
        return self.checkpoints_dir / h

    def _model_dir(self, h: str | None = None) -> Path:
        return self.exp_dir(h) / "model"

    def _index_path(self, h: str | None = None) -> Path:
        return self.exp_dir(h) / INDEX_NAME

    def _lock(self, h: str | None = None) -> FileLock:
        """The index lock of one experiment, one instance per hash so it is re-entrant.

        It is held only for rename + index update (milliseconds), so the timeout is
        a deadlock guard, not a wait budget for another process's tensor write.
        """
        d = self.exp_dir(h)
        lock = self._locks.get(d.name)
        if lock is None:
            d.mkdir(parents=True, exist_ok=True)
            lock = self._locks[d.name] = FileLock(str(d / ".index.lock"), timeout=60)
        return lock

    # -- hash
    def update_experiment_hash(
        self,
        model: Any = None,
        config: Any = None,
        active_data_uids: Iterable[Any] | None = None,
        force: bool = False,
    ) -> tuple[str, bool]:
        """(Re)compute the experiment hash; return ``(exp_hash, is_new)``.

        ``is_new`` is True when the hash differs from the current one (or ``force``).
        A new hash gets its ``model/``, ``hp/`` and ``data/`` folders, its architecture
        files (written once per hash, kept if they exist) and its config.
        """
        new_hash = self.hash_generator.generate_hash(model, config, active_data_uids)
        is_new = force or new_hash != self.current_exp_hash
        self.current_exp_hash = new_hash
        if model is not None:
            self._model = model
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
        """Write ``{h}_architecture.txt`` and ``.pkl`` once per hash; return the .txt path.

        The text file is for people (module tree plus parameter shapes). The pickle
        is the full model object, as the seed keeps it; loading it runs code, so only
        :meth:`load_architecture` with ``trust_pickle=True`` reads it. A model that
        cannot be pickled (a lambda, a class defined inside a function) gets a
        ``RuntimeWarning`` and no ``.pkl``, rather than breaking the training run.
        """
        torch = _torch()
        h = self.exp_dir().name
        txt = self._model_dir() / f"{h}_architecture.txt"
        pkl = self._model_dir() / f"{h}_architecture.pkl"
        if not txt.exists():
            lines = [f"# experiment {h}", f"# model: {model_name or type(model).__qualname__}"]
            lines.append(str(model))
            lines.append("")
            lines.append("# parameters and buffers (name, shape, dtype)")
            for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
                shape = _shape(tensor)
                lines.append(
                    f"{name}\t{tuple(shape) if shape is not None else '?'}\t{tensor.dtype}"
                )
            atomic_write_text(txt, "\n".join(lines) + "\n")
        if not pkl.exists():
            try:
                _atomic_stream(pkl, lambda f: torch.save(model, f))
            except (pickle.PicklingError, AttributeError, TypeError) as exc:
                warnings.warn(
                    f"pytest-ckpts: {pkl.name} not written, the model cannot be pickled "
                    f"({exc}); weights checkpoints are unaffected",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return txt

    def save_config(self, config: Any, config_name: str = "config") -> Path:
        """Write ``hp/{h}_{config_name}.yaml`` atomically (rewritten on every call).

        As in the seed, this records a config update under the *current* hash (e.g.
        a batch size changed mid-run); call :meth:`update_experiment_hash` instead
        when the change should start a new experiment directory.
        """
        _check_name(config_name, "config_name")
        h = self.exp_dir().name
        path = self.exp_dir() / "hp" / f"{h}_{config_name}.yaml"
        text = yaml.safe_dump(_plain(config), sort_keys=True, default_flow_style=False)
        atomic_write_text(path, text)
        return path

    def save_data_backup(
        self, data_h5_path: str | os.PathLike[str], backup_name: str | None = None
    ) -> Path:
        """Copy the data file to ``data/{h}_{backup_name or 'data'}{suffix}`` atomically.

        The file is copied byte for byte whatever its format (no h5py needed); the
        suffix is the source's (``.h5`` if it has none), so ``samples.h5`` becomes
        the seed's ``{h}_data.h5``.
        """
        src = Path(data_h5_path)
        if not src.is_file():
            raise FileNotFoundError(f"pytest-ckpts: data file to back up not found: {src}")
        name = _check_name(backup_name or "data", "backup_name")
        h = self.exp_dir().name
        dest = self.exp_dir() / "data" / f"{h}_{name}{src.suffix or '.h5'}"
        with open(src, "rb") as fsrc:
            _atomic_stream(dest, lambda f: shutil.copyfileobj(fsrc, f, 4 << 20))
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
        metrics: Mapping[str, Any] | None = None,
        keep_last: int | None = None,
        keep_best: int | None = None,
        best_metric: str | None = None,
        best_mode: str | None = None,
    ) -> Path:
        """Save weights (and optimizer state) for ``step``; return the file path.

        The payload is ``{"step", "exp_hash", "model_state_dict",
        "optimizer_state_dict" (when saved), "metrics", "metadata"}``, loadable with
        ``torch.load(weights_only=True)``. ``metrics`` plus the numeric values of
        ``metadata`` (numbers, 0-d tensors) are the checkpoint's metrics; the finite
        ones go to the index, where ``best()`` and retention rank by them.
        ``metadata`` may hold numbers, strings, tensors, lists, tuples and dicts;
        anything ``weights_only`` could not load back is a ``TypeError`` naming its
        key, before anything is written.

        ``step=None`` takes the next step after the latest. ``keep_last``,
        ``keep_best``, ``best_metric`` and ``best_mode`` override the constructor's
        retention for this save. The file appears complete or not at all, and the
        index only names complete files.
        """
        torch = _torch()
        resolved = self._resolve(model, model_name, self._models, "model")
        model = resolved if resolved is not None else self._model
        if model is None:
            raise ValueError("pytest-ckpts: save_model_checkpoint needs a model")
        if optimizer is None and save_optimizer:
            optimizer = self._resolve(None, optimizer_name, self._optimizers, "optimizer")
            if optimizer is None and len(self._optimizers) == 1:
                optimizer = next(iter(self._optimizers.values()))
        if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
            raise ValueError(f"pytest-ckpts: step must be a non-negative int, got {step!r}")
        policy = _retention(
            self.keep_last if keep_last is None else keep_last,
            self.keep_best if keep_best is None else keep_best,
            best_metric or self.best_metric,
            best_mode or self.best_mode,
        )
        meta = _payload_value(torch, dict(metadata or {}), "metadata")
        all_metrics = _collect_metrics(torch, metadata, metrics)
        index_metrics = {k: v for k, v in all_metrics.items() if math.isfinite(v)}
        h = self.exp_dir().name
        model_dir = self._model_dir(h)

        def stage(step: int) -> _Staged:
            payload: dict[str, Any] = {
                "step": step,
                "exp_hash": h,
                "model_state_dict": model.state_dict(),
                "metrics": all_metrics,
                "metadata": meta,
            }
            if save_optimizer and optimizer is not None:
                payload["optimizer_state_dict"] = optimizer.state_dict()
            return _stage(model_dir, f"{h}_step_{step:06d}.pt", lambda f: torch.save(payload, f))

        if step is None:  # the step comes from the index: hold the lock throughout
            with self._lock(h):
                step = max((e["step"] for e in self._read_index(h)["checkpoints"]), default=-1)
                step += 1
                return self._commit(h, stage(step), step, index_metrics, policy)
        staged = stage(step)  # the slow part, outside the lock
        with self._lock(h):
            return self._commit(h, staged, step, index_metrics, policy)

    def _commit(
        self,
        h: str,
        staged: _Staged,
        step: int,
        metrics: dict[str, float],
        policy: _Retention,
    ) -> Path:
        """Under the lock: rename the staged file into place, index it, apply retention."""
        model_dir = self._model_dir(h)
        path = model_dir / f"{h}_step_{step:06d}.pt"
        try:
            index = self._read_index(h)
            os.replace(staged.tmp, path)
        except BaseException:
            staged.tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(model_dir)
        entry = {
            "step": step,
            "file": path.name,
            "sha256": staged.sha256,
            "size": staged.size,
            "metrics": metrics,
        }
        index["checkpoints"] = [e for e in index["checkpoints"] if e["step"] != step]
        index["checkpoints"].append(entry)
        index["checkpoints"].sort(key=lambda e: e["step"])
        removed = _apply_retention(index, policy)
        self._write_index(index, h)  # index first: it never names a deleted file
        for e in removed:
            (model_dir / e["file"]).unlink(missing_ok=True)
        return path

    @staticmethod
    def _resolve(obj: Any, name: str | None, registry: dict[str, Any], what: str) -> Any:
        if name is not None and not isinstance(name, str):
            # save_model_checkpoint(model, optimizer) would otherwise silently drop it
            raise TypeError(
                f"pytest-ckpts: {what}_name must be a registered name (str), got "
                f"{type(name).__qualname__}; pass objects by keyword, e.g. optimizer=opt"
            )
        if obj is not None or name is None:
            return obj
        if name not in registry:
            raise KeyError(
                f"pytest-ckpts: no {what} registered as {name!r}; call register_{what}() first"
            )
        return registry[name]

    # -- index
    def _read_index(self, h: str | None = None) -> dict[str, Any]:
        path = self._index_path(h)
        try:
            data: dict[str, Any] = json.loads(path.read_text("utf-8"))
        except FileNotFoundError:
            return {"format_version": 1, "exp_hash": self.exp_dir(h).name, "checkpoints": []}
        except ValueError as exc:
            raise ValueError(f"pytest-ckpts: unreadable checkpoint index {path}: {exc}") from exc
        return data

    def _write_index(self, index: dict[str, Any], h: str | None = None) -> None:
        atomic_write_text(self._index_path(h), json.dumps(index, indent=2, sort_keys=True) + "\n")

    def checkpoints(self, exp_hash: str | None = None) -> list[dict[str, Any]]:
        """The index entries (step, file, sha256, size, metrics), oldest step first."""
        return list(self._read_index(exp_hash)["checkpoints"])

    def latest(self, exp_hash: str | None = None) -> dict[str, Any] | None:
        """The index entry of the highest step, without touching the checkpoint files."""
        entries = self._read_index(exp_hash)["checkpoints"]
        return max(entries, key=lambda e: e["step"]) if entries else None

    def best(
        self, metric: str | None = None, mode: str | None = None, exp_hash: str | None = None
    ) -> dict[str, Any] | None:
        """The index entry with the best ``metric`` (``mode`` "min" or "max"), or None.

        Defaults to the manager's ``best_metric`` / ``best_mode``; ties go to the
        later step. Checkpoints saved without that metric are not candidates.
        """
        metric = metric or self.best_metric
        if metric is None:
            raise ValueError("pytest-ckpts: best() needs a metric name")
        ranked = _rank(
            self._read_index(exp_hash)["checkpoints"], metric, _check_mode(mode or self.best_mode)
        )
        return ranked[0] if ranked else None

    def checkpoint_path(self, entry: Mapping[str, Any], exp_hash: str | None = None) -> Path:
        """The file an index entry (from ``latest()``/``best()``) names."""
        return self._model_dir(exp_hash) / str(entry["file"])

    def verify(self, exp_hash: str | None = None, *, strict: bool = False) -> list[str]:
        """Problems found by re-hashing every indexed checkpoint (empty list: all good).

        Reports indexed files that are missing or whose size or sha256 differ from
        ``index.json``, and step files the index does not name (left by a save that
        was killed between rename and index update). ``strict=True`` raises
        ``ChecksumMismatchError`` listing them instead of returning them.
        """
        d = self.exp_dir(exp_hash)
        h = d.name
        if not d.is_dir():
            problems = [f"experiment directory missing: {d}"]
        else:
            with self._lock(h):  # a consistent snapshot of index and directory
                entries = self._read_index(h)["checkpoints"]
                model_dir = self._model_dir(h)
                on_disk = (
                    {p.name for p in model_dir.glob(f"{h}_step_*.pt")}
                    if model_dir.is_dir()
                    else set()
                )
            problems = [p for p in (self._check_entry(e, h) for e in entries) if p]
            indexed = {str(e["file"]) for e in entries}
            problems += [
                f"{name}: not in index.json (a save interrupted before its index update?)"
                for name in sorted(on_disk - indexed)
            ]
        if problems and strict:
            raise ChecksumMismatchError(
                f"pytest-ckpts: Checksum mismatch in experiment {h} ({d}):\n  "
                + "\n  ".join(problems),
                path=d,
            )
        return problems

    def _check_entry(self, e: Mapping[str, Any], exp_hash: str | None) -> str | None:
        path = self.checkpoint_path(e, exp_hash)
        if not path.is_file():
            return f"{e['file']}: missing ({path})"
        size = path.stat().st_size
        if size != e["size"]:
            return f"{e['file']}: size {size} does not match index {e['size']}"
        actual = calculate_sha256(path)
        if actual != e["sha256"]:
            return f"{e['file']}: sha256 {actual} does not match index {e['sha256']}"
        return None

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
        map_location: Any = "cpu",
        verify: bool = True,
    ) -> dict[str, Any] | None:
        """Load the highest-step checkpoint into ``model`` (and optimizer); return its payload.

        Returns None when the experiment has no checkpoint yet. The file is checked
        against the index's size and sha256 first (``verify=False`` skips it), so a
        corrupted file raises ``ChecksumMismatchError`` instead of loading garbage.
        Uses ``torch.load(weights_only=True)``: a checkpoint cannot run code.
        """
        torch = _torch()
        h = exp_hash or self.current_exp_hash
        if h is None:
            return None
        entry = self.latest(h)
        if entry is None:
            return None
        return self._load_entry(
            torch,
            entry,
            h,
            model,
            model_name,
            load_optimizer,
            optimizer_name,
            optimizer,
            map_location,
            verify,
        )

    def load_best_checkpoint(
        self,
        model: Any = None,
        metric: str | None = None,
        mode: str | None = None,
        exp_hash: str | None = None,
        *,
        optimizer: Any = None,
        map_location: Any = "cpu",
        verify: bool = True,
    ) -> dict[str, Any] | None:
        """Like :meth:`load_latest_checkpoint`, for the checkpoint ``best(metric, mode)`` names."""
        torch = _torch()
        h = exp_hash or self.current_exp_hash
        if h is None:
            return None
        entry = self.best(metric, mode, h)
        if entry is None:
            return None
        return self._load_entry(
            torch, entry, h, model, None, True, None, optimizer, map_location, verify
        )

    def _load_entry(
        self,
        torch: Any,
        entry: Mapping[str, Any],
        h: str,
        model: Any,
        model_name: str | None,
        load_optimizer: bool,
        optimizer_name: str | None,
        optimizer: Any,
        map_location: Any,
        verify: bool,
    ) -> dict[str, Any]:
        path = self.checkpoint_path(entry, h)
        if verify:
            problem = self._check_entry(entry, h)
            if problem is not None:
                raise ChecksumMismatchError(
                    f"pytest-ckpts: Checksum mismatch for checkpoint {path}: {problem}; "
                    "the file changed after it was saved (index.json records what was written)",
                    path=path,
                    expected=str(entry["sha256"]),
                )
        model = self._resolve(model, model_name, self._models, "model")
        if optimizer is None and load_optimizer:
            optimizer = self._resolve(None, optimizer_name, self._optimizers, "optimizer")
        data: dict[str, Any] = torch.load(path, map_location=map_location, weights_only=True)
        if model is not None:
            model.load_state_dict(data["model_state_dict"])
        if load_optimizer and optimizer is not None and "optimizer_state_dict" in data:
            optimizer.load_state_dict(data["optimizer_state_dict"])
        return data

    def load_architecture(self, exp_hash: str | None = None, *, trust_pickle: bool = False) -> Any:
        """Unpickle the full model saved for a hash. Only for files you trust.

        Unpickling runs arbitrary code, so it needs ``trust_pickle=True``; everything
        else in this class loads with ``weights_only=True``.
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
        """The saved config dict for a hash (None if none was saved), via ``yaml.safe_load``."""
        _check_name(config_name, "config_name")
        h = self.exp_dir(exp_hash).name
        path = self.exp_dir(h) / "hp" / f"{h}_{config_name}.yaml"
        if not path.exists():
            return None
        return yaml.safe_load(path.read_text("utf-8"))

    def list_experiment_hashes(self) -> list[str]:
        """Every experiment hash under ``root/checkpoints``, sorted."""
        if not self.checkpoints_dir.is_dir():
            return []
        return sorted(
            p.name
            for p in self.checkpoints_dir.iterdir()
            if p.is_dir() and re.fullmatch(r"[0-9a-f]{16}", p.name)
        )

    def get_checkpoint_info(self, exp_hash: str | None = None) -> dict[str, Any]:
        """What an experiment directory holds (the seed's keys, plus latest/best)."""
        h = self.exp_dir(exp_hash).name
        d = self.exp_dir(h)

        def names(folder: Path, pattern: str = "*") -> list[str]:
            if not folder.is_dir():
                return []
            return sorted(p.name for p in folder.glob(pattern) if not p.name.startswith("."))

        return {
            "exp_hash": h,
            "path": str(d),
            "model_checkpoints": names(d / "model", f"{h}_step_*.pt"),
            "architecture_saved": (d / "model" / f"{h}_architecture.txt").exists(),
            "configs": names(d / "hp", "*.yaml"),
            "data_backups": names(d / "data"),
            "latest": self.latest(h),
            "best": self.best(exp_hash=h) if self.best_metric else None,
        }


def _apply_retention(index: dict[str, Any], policy: _Retention) -> list[dict[str, Any]]:
    """Drop the entries ``policy`` does not keep from ``index``; return the dropped ones.

    The latest is always kept, and so is the best by ``policy.metric`` when there is
    one (``keep_best`` or not), so no setting can delete what ``latest()`` or
    ``best()`` would name.
    """
    if policy.keep_last is None and policy.keep_best is None:
        return []
    entries: list[dict[str, Any]] = index["checkpoints"]
    if not entries:
        return []
    ordered = sorted(entries, key=lambda e: e["step"])
    keep = {ordered[-1]["step"]}
    if policy.keep_last is not None:
        keep.update(e["step"] for e in ordered[-policy.keep_last :])
    if policy.metric is not None:
        ranked = _rank(entries, policy.metric, policy.mode)
        keep.update(e["step"] for e in ranked[: max(1, policy.keep_best or 0)])
    index["checkpoints"] = [e for e in entries if e["step"] in keep]
    return [e for e in entries if e["step"] not in keep]


def _scalar_key(key: Any, path: str) -> Any:
    """A dict key YAML and ``weights_only`` both keep as is (enums by name)."""
    if isinstance(key, enum.Enum):
        return key.name
    if key is None or isinstance(key, (str, int, float, bool)):
        return key
    raise TypeError(
        f"pytest-ckpts: cannot store {path}: key {key!r} of type {type(key).__name__} "
        "(use str, int, float, bool or enum keys)"
    )


def _plain(value: Any, path: str = "config") -> Any:
    """A YAML-safe copy of a config: the values :func:`canonicalize` accepts, made plain.

    Paths become POSIX strings, enums their names, dataclasses dicts, tuples and sets
    lists (sets sorted, so the file is byte-stable), numpy/torch 0-d values Python
    numbers. Dict keys keep their type (``3`` and ``"3"`` stay two keys). Anything
    else is a ``TypeError`` naming its key path instead of a ``str()`` that could not
    be read back.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, (int, float)):
        return int(value) if isinstance(value, int) else float(value)  # numpy.float64 too
    if isinstance(value, PurePath):
        return value.as_posix()
    if _is_array_scalar(value):
        return _plain(value.item(), path)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _plain(getattr(value, f.name), f"{path}.{f.name}")
            for f in dataclasses.fields(value)
        }
    if isinstance(value, Mapping):
        return {_scalar_key(k, path): _plain(v, f"{path}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, (set, frozenset)):
        items = [_plain(v, f"{path}{{...}}") for v in value]
        return sorted(items, key=_canonical_json)
    raise TypeError(
        f"pytest-ckpts: cannot store {path}: value of type {type(value).__module__}."
        f"{type(value).__qualname__} has no plain YAML form; convert it to a str, number, "
        "list or dict first"
    )


def _payload_value(torch: Any, value: Any, path: str) -> Any:
    """A copy of checkpoint metadata that ``torch.load(weights_only=True)`` can read back.

    Tensors are kept (detached, on CPU), numpy/torch scalars become Python numbers,
    paths and enums strings, dataclasses dicts, sets sorted lists; tuples stay tuples.
    Anything else (a numpy array, an arbitrary object) is a ``TypeError`` naming its
    key: saved, it would make the checkpoint unloadable under ``weights_only``.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, (int, float)):
        return int(value) if isinstance(value, int) else float(value)
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, PurePath):
        return value.as_posix()
    if _is_array_scalar(value):
        return _payload_value(torch, value.item(), path)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return _payload_value(torch, fields, path)
    if isinstance(value, Mapping):
        return {
            _scalar_key(k, path): _payload_value(torch, v, f"{path}[{k!r}]")
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_payload_value(torch, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return tuple(_payload_value(torch, v, f"{path}[{i}]") for i, v in enumerate(value))
    if isinstance(value, (set, frozenset)):
        items = [_payload_value(torch, v, f"{path}{{...}}") for v in value]
        return sorted(items, key=repr)
    hint = " (use torch.from_numpy(x) or x.tolist())" if type(value).__name__ == "ndarray" else ""
    raise TypeError(
        f"pytest-ckpts: cannot store {path} in a checkpoint: value of type "
        f"{type(value).__module__}.{type(value).__qualname__} would not load with "
        f"torch.load(weights_only=True){hint}"
    )


def _as_number(torch: Any, value: Any) -> float | None:
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
    if _is_array_scalar(value):
        item = value.item()
        return (
            float(item) if isinstance(item, (int, float)) and not isinstance(item, bool) else None
        )
    return None


def _collect_metrics(
    torch: Any, metadata: Mapping[str, Any] | None, metrics: Mapping[str, Any] | None
) -> dict[str, float]:
    """Numeric metadata values plus explicit ``metrics`` (which win on a clash).

    Explicit metrics must be numbers: a typo such as a string there would otherwise
    silently drop the value from ``best()`` and retention.
    """
    out: dict[str, float] = {}
    for k, v in (metadata or {}).items():
        number = _as_number(torch, v)
        if number is not None:
            out[str(k)] = number
    for k, v in (metrics or {}).items():
        number = _as_number(torch, v)
        if number is None:
            raise TypeError(
                f"pytest-ckpts: metrics[{k!r}] must be a real number or a 0-d tensor, "
                f"got {type(v).__qualname__}"
            )
        out[str(k)] = number
    return out
