"""Fixtures of the upload tests: a checkpoint directory and a temp dir of the test's own."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest


@pytest.fixture
def ckpt_dir(tmp_path: Path) -> Path:
    """A checkpoint directory to upload: ``model/weights.pt`` (50 kB, random) and ``config.json``."""
    d = tmp_path / "checkpoint"
    (d / "model").mkdir(parents=True)
    (d / "model" / "weights.pt").write_bytes(os.urandom(50_000))
    (d / "config.json").write_text('{"lr": 0.001}')
    return d


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own temp dir, so leftovers are ours (xdist workers share /tmp)."""
    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d
