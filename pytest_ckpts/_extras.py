"""Lazy imports of the optional extras, with an ImportError that says what to install."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["require"]

_EXTRA = {"torch": "torch", "safetensors": "torch", "numpy": "torch", "mlflow": "mlflow"}


def require(module: str, purpose: str) -> Any:
    """Import ``module`` (an optional dependency) or explain which extra provides it.

    The plugin is imported by every pytest run of every suite that installs it, so
    torch, safetensors and mlflow are only imported here, when a feature needs them.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra = _EXTRA.get(module.split(".")[0], "all")
        raise ImportError(
            f'pytest-ckpts: {purpose} needs {module.split(".")[0]}: pip install "pytest-ckpts[{extra}]"'
        ) from exc
