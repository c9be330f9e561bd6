"""Hash-named experiment checkpoint directories with an integrity index.

An *experiment hash* (16 hex) names one configuration of a training run: model
architecture (module tree, layer types, parameter names, shapes and dtypes, not
weight values), hyperparameters and the set of active data UIDs. Change any of the
three and checkpoints go to a new directory, so every checkpoint's provenance is
its path. docs/experiments.md describes the layout and the API; the modules here:

- ``hashing``: the canonical form and the 16-hex hash (``ExperimentHashGenerator``),
- ``layout``: every path of the on-disk layout (shared with
  ``pytest_ckpts.testing.experiments``),
- ``payload``: the one walk over config and metadata values (hash, YAML, checkpoint),
- ``files``: atomic, hashed writes,
- ``index``: ``index.json`` (entries, ranking, retention, verification),
- ``steps`` (one step checkpoint saved or loaded) and ``manager``: ``CheckpointManager``, the facade a training loop uses.

Importing this package does not import torch.
"""

from __future__ import annotations

from .hashing import ExperimentHashGenerator, canonicalize, describe_architecture
from .index import IndexEntry, Retention
from .layout import INDEX_NAME, ExperimentLayout, is_experiment_hash
from .manager import CheckpointManager

__all__ = [
    "INDEX_NAME",
    "CheckpointManager",
    "ExperimentHashGenerator",
    "ExperimentLayout",
    "IndexEntry",
    "Retention",
    "canonicalize",
    "describe_architecture",
    "is_experiment_hash",
]
