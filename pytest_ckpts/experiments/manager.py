"""``CheckpointManager``: the facade a training loop talks to.

It keeps the names of the "Checkpoint System V2" guide the layout comes from
(``update_experiment_hash``, ``save_model_checkpoint``, ``load_latest_checkpoint``,
...) and hands the work to the modules beside it: ``hashing`` names the experiment,
``layout`` places its files, ``steps`` saves and loads one step checkpoint,
``artifacts`` writes the architecture, config and data-backup files, and ``index``
records, ranks, retains and verifies.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import (
    ExperimentKeyError,
    ExperimentTypeError,
    ExperimentValueError,
    NoExperimentHashError,
)
from . import artifacts
from .hashing import ExperimentHashGenerator
from .index import ExperimentIndex, IndexEntry, Retention
from .layout import ExperimentLayout, is_experiment_hash
from .steps import CheckpointSave, LoadTarget, load_step

__all__ = ["CheckpointManager"]


class _Registry:
    """Models or optimizers by name: the guide's global ledgers, scoped to one manager."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.items: dict[str, Any] = {}

    def resolve(self, obj: Any, name: str | None, *, sole: bool = False) -> Any:
        """``obj`` if given, else the one registered as ``name``, else (with ``sole``)
        the only one registered, else None."""
        if name is not None and not isinstance(name, str):
            # save_model_checkpoint(model, optimizer) would otherwise silently drop it
            raise ExperimentTypeError(
                f"pytest-ckpts: {self.what}_name must be a registered name (str), got "
                f"{type(name).__qualname__}; pass objects by keyword, e.g. optimizer=opt",
                key_path=f"{self.what}_name",
            )
        if obj is not None:
            return obj
        if name is None:
            return next(iter(self.items.values())) if sole and len(self.items) == 1 else None
        if name not in self.items:
            raise ExperimentKeyError(
                f"pytest-ckpts: no {self.what} registered as {name!r}; "
                f"call register_{self.what}() first"
            )
        return self.items[name]


class CheckpointManager:
    """Saves and loads checkpoints in hash-named experiment directories.

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
        Retention(keep_last, keep_best, best_metric, best_mode)
        self.root = Path(root_log_dir)
        self.layout = ExperimentLayout(self.root)
        self.checkpoints_dir, self.data_dir, self.logs_dir = self.layout.global_dirs()
        for d in self.layout.global_dirs():
            d.mkdir(parents=True, exist_ok=True)
        self.keep_last = keep_last
        self.keep_best = keep_best
        self.best_metric = best_metric
        self.best_mode = best_mode
        self.hash_generator = ExperimentHashGenerator()
        self.current_exp_hash: str | None = None
        self._models = _Registry("model")
        self._optimizers = _Registry("optimizer")
        self._model: Any = None
        self._indexes: dict[str, ExperimentIndex] = {}

    def register_model(self, name: str, model: Any) -> None:
        """Make ``model`` available to ``model_name=`` arguments."""
        self._models.items[name] = model

    def register_optimizer(self, name: str, optimizer: Any) -> None:
        """Make ``optimizer`` available to ``optimizer_name=`` arguments."""
        self._optimizers.items[name] = optimizer

    # -- paths
    def _hash(self, exp_hash: str | None = None) -> str:
        h = exp_hash or self.current_exp_hash
        if h is None:
            raise NoExperimentHashError(
                "pytest-ckpts: no experiment hash yet; call update_experiment_hash() first"
            )
        if not is_experiment_hash(h):
            raise ExperimentValueError(f"pytest-ckpts: {h!r} is not a 16-hex experiment hash")
        return h

    def exp_dir(self, exp_hash: str | None = None) -> Path:
        """``root/checkpoints/{h}`` for ``exp_hash`` or the current hash."""
        return self.layout.exp_dir(self._hash(exp_hash))

    def _index(self, exp_hash: str | None = None) -> ExperimentIndex:
        h = self._hash(exp_hash)
        return self._indexes.setdefault(h, ExperimentIndex(self.layout, h))

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
        for sub in self.layout.exp_subdirs(new_hash):
            sub.mkdir(parents=True, exist_ok=True)
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
        is the full model object, as the guide keeps it; loading it runs code, so only
        :meth:`load_architecture` with ``trust_pickle=True`` reads it. A model that
        cannot be pickled (a lambda, a class defined inside a function) gets a
        ``RuntimeWarning`` and no ``.pkl``, rather than breaking the training run.
        """
        return artifacts.write_architecture(self.layout, self._hash(), model, model_name)

    def save_config(self, config: Any, config_name: str = "config") -> Path:
        """Write ``hp/{h}_{config_name}.yaml`` atomically (rewritten on every call).

        As in the guide, this records a config update under the *current* hash (e.g.
        a batch size changed mid-run); call :meth:`update_experiment_hash` instead
        when the change should start a new experiment directory.
        """
        return artifacts.write_config(self.layout, self._hash(), config, config_name)

    def save_data_backup(
        self, data_h5_path: str | os.PathLike[str], backup_name: str | None = None
    ) -> Path:
        """Copy the data file to ``data/{h}_{backup_name or 'data'}{suffix}`` atomically.

        The file is copied byte for byte whatever its format (no h5py needed); the
        suffix is the source's (``.h5`` if it has none), so ``samples.h5`` becomes
        ``{h}_data.h5``.
        """
        return artifacts.backup_data(self.layout, self._hash(), Path(data_h5_path), backup_name)

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
        torch = artifacts.torch_module()
        model = self._models.resolve(model, model_name)
        model = model if model is not None else self._model
        if model is None:
            raise ExperimentValueError("pytest-ckpts: save_model_checkpoint needs a model")
        if save_optimizer:
            optimizer = self._optimizers.resolve(optimizer, optimizer_name, sole=True)
        policy = Retention(
            self.keep_last if keep_last is None else keep_last,
            self.keep_best if keep_best is None else keep_best,
            best_metric or self.best_metric,
            best_mode or self.best_mode,
        )
        save = CheckpointSave.prepare(
            torch, model, optimizer if save_optimizer else None, step, metadata, metrics
        )
        return save.run(self._index(), policy)

    # -- index
    def checkpoints(self, exp_hash: str | None = None) -> list[dict[str, Any]]:
        """The index entries (step, file, sha256, size, metrics), oldest step first."""
        return [e.as_dict() for e in self._index(exp_hash).entries()]

    def latest(self, exp_hash: str | None = None) -> dict[str, Any] | None:
        """The index entry of the highest step, without touching the checkpoint files."""
        entry = self._index(exp_hash).latest()
        return entry.as_dict() if entry else None

    def best(
        self, metric: str | None = None, mode: str | None = None, exp_hash: str | None = None
    ) -> dict[str, Any] | None:
        """The index entry with the best ``metric`` (``mode`` "min" or "max"), or None.

        Defaults to the manager's ``best_metric`` / ``best_mode``; ties go to the
        later step. Checkpoints saved without that metric are not candidates.
        """
        entry = self._best(metric, mode, exp_hash)
        return entry.as_dict() if entry else None

    def _best(
        self, metric: str | None, mode: str | None, exp_hash: str | None
    ) -> IndexEntry | None:
        metric = metric or self.best_metric
        if metric is None:
            raise ExperimentValueError("pytest-ckpts: best() needs a metric name")
        return self._index(exp_hash).best(metric, mode or self.best_mode)

    def checkpoint_path(self, entry: Mapping[str, Any], exp_hash: str | None = None) -> Path:
        """The file an index entry (from ``latest()``/``best()``) names."""
        return self.layout.model_dir(self._hash(exp_hash)) / str(entry["file"])

    def verify(self, exp_hash: str | None = None, *, strict: bool = False) -> list[str]:
        """Problems found by re-hashing every indexed checkpoint (empty list: all good).

        Reports indexed files that are missing or whose size or sha256 differ from
        ``index.json``, and step files the index does not name (left by a save that
        was killed between rename and index update). ``strict=True`` raises
        ``ChecksumMismatchError`` listing them instead of returning them.
        """
        return self._index(exp_hash).problems(strict=strict)

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
        if not (exp_hash or self.current_exp_hash):
            return None
        index = self._index(exp_hash)
        entry = index.latest()
        if entry is None:
            return None
        model = self._models.resolve(model, model_name)
        optimizer = self._optimizers.resolve(optimizer, optimizer_name) if load_optimizer else None
        return load_step(index, entry, LoadTarget(model, optimizer, map_location, verify))

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
        if not (exp_hash or self.current_exp_hash):
            return None
        entry = self._best(metric, mode, exp_hash)
        if entry is None:
            return None
        target = LoadTarget(model, optimizer, map_location, verify)
        return load_step(self._index(exp_hash), entry, target)

    def load_architecture(self, exp_hash: str | None = None, *, trust_pickle: bool = False) -> Any:
        """Unpickle the full model saved for a hash. Only for files you trust.

        Unpickling runs arbitrary code, so it needs ``trust_pickle=True``; everything
        else in this class loads with ``weights_only=True``.
        """
        return artifacts.read_architecture(self.layout, self._hash(exp_hash), trust_pickle)

    def load_config(self, exp_hash: str | None = None, config_name: str = "config") -> Any:
        """The saved config dict for a hash (None if none was saved), via ``yaml.safe_load``."""
        return artifacts.read_config(self.layout, self._hash(exp_hash), config_name)

    def list_experiment_hashes(self) -> list[str]:
        """Every experiment hash under ``root/checkpoints``, sorted."""
        return artifacts.experiment_hashes(self.layout)

    def get_checkpoint_info(self, exp_hash: str | None = None) -> dict[str, Any]:
        """What an experiment directory holds (the guide's keys, plus latest/best)."""
        h = self._hash(exp_hash)
        return {
            **artifacts.inventory(self.layout, h),
            "latest": self.latest(h),
            "best": self.best(exp_hash=h) if self.best_metric else None,
        }
