"""One step checkpoint, saved and loaded.

Saving checks everything first, writes the file outside the index lock and
commits it (rename + index update) under it. Loading checks the file against the
index first and reads it with ``torch.load(weights_only=True)``, so a checkpoint
cannot run code and a corrupted one is refused instead of loaded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ExperimentValueError
from .artifacts import torch_module
from .files import Staged, stage
from .index import ExperimentIndex, IndexEntry, Retention
from .payload import PayloadWalker, collect_metrics

__all__ = ["CheckpointSave", "LoadTarget", "load_step"]


@dataclass(frozen=True)
class CheckpointSave:
    """What ``save_model_checkpoint`` writes, checked before any byte is written.

    ``metrics`` (numeric metadata plus explicit ``metrics=``) go into the file; the
    finite ones go to the index too, so NaN or inf can never become "best".
    """

    torch: Any
    model: Any
    optimizer: Any
    step: int | None
    metadata: dict[str, Any]
    metrics: dict[str, float]

    @classmethod
    def prepare(
        cls,
        torch: Any,
        model: Any,
        optimizer: Any,
        step: int | None,
        metadata: Mapping[str, Any] | None,
        metrics: Mapping[str, Any] | None,
    ) -> CheckpointSave:
        if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
            raise ExperimentValueError(
                f"pytest-ckpts: step must be a non-negative int, got {step!r}"
            )
        meta = PayloadWalker(torch).walk(dict(metadata or {}), "metadata")
        return cls(torch, model, optimizer, step, meta, collect_metrics(torch, metadata, metrics))

    def run(self, index: ExperimentIndex, policy: Retention) -> Path:
        """Write the file and index it; return its path."""
        index_metrics = {k: v for k, v in self.metrics.items() if math.isfinite(v)}
        if self.step is None:  # the step comes from the index: hold the lock throughout
            with index.lock():
                step = index.next_step()
                return index.commit(self._stage(index, step), step, index_metrics, policy)
        staged = self._stage(index, self.step)  # the slow part, outside the lock
        return index.commit(staged, self.step, index_metrics, policy)

    def _stage(self, index: ExperimentIndex, step: int) -> Staged:
        payload: dict[str, Any] = {
            "step": step,
            "exp_hash": index.h,
            "model_state_dict": self.model.state_dict(),
            "metrics": self.metrics,
            "metadata": self.metadata,
        }
        if self.optimizer is not None:
            payload["optimizer_state_dict"] = self.optimizer.state_dict()
        target = index.layout.step_file(index.h, step)
        return stage(target, lambda f: self.torch.save(payload, f))


@dataclass(frozen=True)
class LoadTarget:
    """Where a loaded checkpoint goes (either may be None) and how it is read."""

    model: Any
    optimizer: Any
    map_location: Any = "cpu"
    verify: bool = True


def load_step(index: ExperimentIndex, entry: IndexEntry, target: LoadTarget) -> dict[str, Any]:
    """Read ``entry``'s file into ``target``; return the whole payload."""
    torch = torch_module()
    path = index.check_or_raise(entry) if target.verify else index.file_of(entry)
    data: dict[str, Any] = torch.load(path, map_location=target.map_location, weights_only=True)
    if target.model is not None:
        target.model.load_state_dict(data["model_state_dict"])
    if target.optimizer is not None and "optimizer_state_dict" in data:
        target.optimizer.load_state_dict(data["optimizer_state_dict"])
    return data
