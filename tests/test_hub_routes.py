"""The local hub answers the Hub API calls user suites make, as the Hub does.

Every route is exercised through huggingface_hub's own ``HfApi`` (or the ``hf`` CLI)
over HTTP, never by hand-built requests, so a test fails when the client would.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from pytest_ckpts.testing import LocalHub

REPO = "org/models"
WEIGHTS = bytes(range(256)) * 64  # binary: stored in LFS


# --------------------------------------------------------------- the local_hub fixture


def test_local_hub_fixture_takes_lfs_upload_and_create_repo_twice(
    local_hub: LocalHub, tmp_path: Path
) -> None:
    """issue 17 point 8: LFS uploads through the fixture, ``create_repo(exist_ok=True)`` twice."""
    api = HfApi(endpoint=local_hub.endpoint)
    first = api.create_repo(REPO, exist_ok=True)
    second = api.create_repo(REPO, exist_ok=True)  # 409: the body carries the url
    assert first == second == f"{local_hub.endpoint}/{REPO}"
    (tmp_path / "w.bin").write_bytes(WEIGHTS)
    api.upload_file(path_or_fileobj=tmp_path / "w.bin", path_in_repo="w.bin", repo_id=REPO)
    got = hf_hub_download(REPO, "w.bin", endpoint=local_hub.endpoint, cache_dir=tmp_path / "c")
    assert Path(got).read_bytes() == WEIGHTS
    assert Path(got).resolve().name == hashlib.sha256(WEIGHTS).hexdigest()  # LFS etag


def test_hf_upload_cli_twice_against_local_hub_fixture(local_hub: LocalHub, tmp_path: Path) -> None:
    """``hf upload`` creates the repo (exist_ok) on every call: the second must work too."""
    folder = tmp_path / "up"
    folder.mkdir()
    (folder / "w.bin").write_bytes(WEIGHTS)
    env = {
        **os.environ,
        "HF_ENDPOINT": local_hub.endpoint,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_TOKEN": "hf_local",
    }
    cli = [sys.executable, "-c", "from huggingface_hub.cli.hf import main; main()"]
    for round_ in range(2):
        (folder / "w.bin").write_bytes(WEIGHTS + bytes([round_]))
        done = subprocess.run(
            [*cli, "upload", REPO, str(folder), "."],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert local_hub.file_bytes(REPO, "w.bin") == WEIGHTS + bytes([round_])
