"""pytest wiring for pytest-ckpts: options, ini keys, marker, hooks. Nothing else."""

from __future__ import annotations

import pytest

from . import fixtures

__all__ = ["pytest_addoption", "pytest_configure"]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ckpts", "checkpoints (pytest-ckpts)")
    group.addoption(
        "--ckpts-update-baselines",
        action="store_true",
        dest="ckpts_update_baselines",
        default=False,
        help="rewrite ckpt_baseline files that are missing or do not match, and pass.",
    )
    parser.addini(
        "ckpts_baselines_dir",
        "directory of ckpt_baseline files, relative to rootdir (default: tests/baselines)",
        default="tests/baselines",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(fixtures, "ckpts-fixtures")
    try:
        from . import mlflow_fixtures
    except ImportError:  # module not written yet
        return
    config.pluginmanager.register(mlflow_fixtures, "ckpts-mlflow-fixtures")
