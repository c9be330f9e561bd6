"""Where every file of an experiment lives, decided in one place.

``CheckpointManager`` writes this layout and ``pytest_ckpts.testing.experiments``
checks it, so both take their paths from here::

    root/
    ├── data/  logs/                                 # global folders
    └── checkpoints/{h}/
        ├── model/{h}_step_000100.pt                 # weights (+ optimizer) per step
        ├── model/{h}_architecture.txt | .pkl        # saved once per hash
        ├── hp/{h}_config.yaml                       # saved on hash change and update
        ├── data/{h}_data.h5                         # data backup (a copy of the file)
        └── index.json                               # step, metrics, sha256, size

Nothing here touches the disk, so the paths can be computed for a directory that
does not exist yet (or checked for one that should).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["INDEX_NAME", "ExperimentLayout", "is_experiment_hash"]

INDEX_NAME = "index.json"
_HASH = re.compile(r"[0-9a-f]{16}")


def is_experiment_hash(name: str) -> bool:
    """True for a 16-hex experiment hash (what names a directory under ``checkpoints/``)."""
    return _HASH.fullmatch(name) is not None


@dataclass(frozen=True)
class ExperimentLayout:
    """The paths of the experiments under ``root`` (the manager's ``root_log_dir``)."""

    root: Path

    @property
    def checkpoints_dir(self) -> Path:
        return self.root / "checkpoints"

    @property
    def data_dir(self) -> Path:
        """The global ``data/`` folder (not an experiment's data backups)."""
        return self.root / "data"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    def global_dirs(self) -> tuple[Path, Path, Path]:
        return (self.checkpoints_dir, self.data_dir, self.logs_dir)

    def exp_dir(self, h: str) -> Path:
        return self.checkpoints_dir / h

    def model_dir(self, h: str) -> Path:
        return self.exp_dir(h) / "model"

    def hp_dir(self, h: str) -> Path:
        return self.exp_dir(h) / "hp"

    def backup_dir(self, h: str) -> Path:
        """``checkpoints/{h}/data``, where ``save_data_backup`` copies data files."""
        return self.exp_dir(h) / "data"

    def exp_subdirs(self, h: str) -> tuple[Path, Path, Path]:
        return (self.model_dir(h), self.hp_dir(h), self.backup_dir(h))

    def index_file(self, h: str) -> Path:
        return self.exp_dir(h) / INDEX_NAME

    def lock_file(self, h: str) -> Path:
        return self.exp_dir(h) / ".index.lock"

    @staticmethod
    def step_name(h: str, step: int) -> str:
        return f"{h}_step_{step:06d}.pt"

    @staticmethod
    def step_glob(h: str) -> str:
        """The glob pattern matching every step checkpoint of ``h`` in its model dir."""
        return f"{h}_step_*.pt"

    def step_file(self, h: str, step: int) -> Path:
        return self.model_dir(h) / self.step_name(h, step)

    def architecture_file(self, h: str, suffix: str = "txt") -> Path:
        """``{h}_architecture.txt`` (for people) or ``.pkl`` (the pickled model)."""
        return self.model_dir(h) / f"{h}_architecture.{suffix}"

    def config_file(self, h: str, name: str = "config") -> Path:
        return self.hp_dir(h) / f"{h}_{name}.yaml"

    def backup_file(self, h: str, name: str = "data", suffix: str = ".h5") -> Path:
        return self.backup_dir(h) / f"{h}_{name}{suffix}"
