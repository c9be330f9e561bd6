"""Demo suite set-up: serve ``hub_data/`` from the bundled local hub, no network.

In a real project this file would not exist: the manifest points at the Hugging
Face Hub. Here the controller process starts a ``LocalHub`` before any test runs
and exports its address as ``HF_ENDPOINT``; pytest-xdist workers inherit it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

REPO = "acme/demo-checkpoints"
_HUB = pytest.StashKey[object]()


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):  # xdist worker: the controller's hub is in env
        return
    from pytest_ckpts.testing import LocalHub

    hub = LocalHub().start()
    files = {
        p.relative_to(HERE / "hub_data").as_posix(): p
        for p in sorted((HERE / "hub_data").rglob("*"))
        if p.is_file()
    }
    hub.add_files(REPO, files, message="demo checkpoints")
    os.environ["HF_ENDPOINT"] = hub.endpoint
    config.stash[_HUB] = hub


def pytest_unconfigure(config: pytest.Config) -> None:
    hub = config.stash.get(_HUB, None)
    if hub is not None:
        hub.stop()  # type: ignore[attr-defined]


@pytest.hookimpl(optionalhook=True)
def pytest_ckpts_downloaded(
    config: pytest.Config, name: str, path: Path, nbytes: int, seconds: float
) -> None:
    """Audit downloads (docs/how-to/writing-tests.md "Hooks"); ``optionalhook`` keeps ``-p no:ckpts`` working."""
    import logging

    logging.getLogger("demo").info("downloaded %s: %d bytes in %.2fs", name, nbytes, seconds)
