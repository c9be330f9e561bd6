"""Upload scratch directories: nothing left behind, even by a killed process.

Each test points the temp dir at its own ``tmp_path`` (in this process and in the
subprocesses it starts), so what is left behind is this test's, and stays in tmp_path.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import pytest

from pytest_ckpts.errors import UploadError
from pytest_ckpts.testing.mlflow import ServerTracking
from pytest_ckpts.uploads import ArtifactUploader, _scratch

RUNS_GET = "/api/2.0/mlflow/runs/get"
UPLOAD = """
import sys
from pytest_ckpts.uploads import ArtifactUploader

checkpoint, run_id, tracking_uri = sys.argv[1:]
uploader = ArtifactUploader(run_id, stage="training", tracking_uri=tracking_uri, max_retries=0)
uploader.upload_checkpoint(checkpoint)
"""


def wait_for(condition: object, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not callable(condition) or not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_scratch_dirs_live_in_a_private_root_and_go_away(private_tmp: Path) -> None:
    with _scratch.scratch_dir() as work:
        root = work.parent
        assert root.parent == private_tmp
        assert root.name.startswith("pytest-ckpts-uploads")
        assert work.name.startswith(f"{os.getpid()}-")
        assert (root / f"{work.name}.lock").is_file()
        assert oct(root.stat().st_mode & 0o777) == oct(0o700)
        (work / "archive.tar.gz").write_bytes(b"x" * 10)
    assert list(private_tmp.iterdir()) == []  # the root goes with the last scratch dir


def test_a_live_scratch_dir_is_never_swept(private_tmp: Path) -> None:
    """A sweep (another upload, here on the same thread) cannot take a live dir's lock."""
    with _scratch.scratch_dir() as live:
        (live / "big.tar.gz").write_bytes(b"x" * 10)
        assert _scratch.sweep(live.parent) == []
        with _scratch.scratch_dir() as other:  # sweeps first, too
            assert other != live
            assert (live / "big.tar.gz").is_file()
        assert (live / "big.tar.gz").is_file()
    assert list(private_tmp.iterdir()) == []


def test_an_unlocked_scratch_dir_is_swept(private_tmp: Path) -> None:
    """What a dead process leaves: a dir and a lock file that nobody holds."""
    root = _scratch.scratch_root()
    (root / "999999-dead").mkdir()
    (root / "999999-dead" / "checkpoint.tar.gz").write_bytes(b"x")
    (root / "999999-dead.lock").touch()
    assert _scratch.sweep(root) == ["999999-dead"]
    assert list(root.iterdir()) == []


def test_a_root_that_is_not_ours_is_refused(private_tmp: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    root_name = _scratch.scratch_root().name
    (private_tmp / root_name).rmdir()
    (private_tmp / root_name).symlink_to(elsewhere)
    with pytest.raises(UploadError, match=f"{root_name} is not a directory of this user"):
        _scratch.scratch_root()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_killed_mid_upload(
    mlflow_server: ServerTracking,
    ckpt_dir: Path,
    private_tmp: Path,
    sig: signal.Signals,
) -> None:
    """SIGINT cleans up at once; SIGTERM cannot, and the next upload removes its leftovers."""
    held = mlflow_server.faults.hold(n=1, method="PUT")  # the kill lands in this PUT
    run_id = mlflow_server.client.create_run(mlflow_server.experiment_id).info.run_id
    env = {**os.environ, "TMPDIR": str(private_tmp)}
    proc = subprocess.Popen(
        [sys.executable, "-c", UPLOAD, str(ckpt_dir), run_id, mlflow_server.tracking_uri],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        # the PUT comes after the archive is built; the server holds it unanswered
        assert held.wait_arrived(timeout=60), "the PUT never came"
        assert mlflow_server.faults.count("GET", RUNS_GET) == 1  # the run lookup came first
        assert proc.poll() is None
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=30)
    finally:
        held.release()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0, stderr
    # the held PUT reaches the app only now: wait for it, so it stays in this test
    wait_for(lambda: mlflow_server.faults.count("PUT") == 1, "the held PUT to finish")

    if sig == signal.SIGINT:
        assert b"KeyboardInterrupt" in stderr
        assert list(private_tmp.iterdir()) == []  # finally: ran
        return
    (root,) = private_tmp.iterdir()
    left = sorted(p.name for p in root.iterdir())
    assert len(left) == 2, left
    assert left[0].startswith(f"{proc.pid}-"), left
    assert left[1] == f"{left[0]}.lock"
    assert (root / left[0] / "checkpoint.tar.gz").is_file()  # the whole archive is left

    with mlflow.start_run() as run:  # the next upload, in another process, sweeps it
        assert ArtifactUploader(stage="training").upload_checkpoint(ckpt_dir)
    mlflow_server.assert_archive_first(run.info.run_id, "training", ckpt_dir)
    assert list(private_tmp.iterdir()) == []


def test_an_unwritable_temp_dir_is_one_clear_error(
    private_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = private_tmp / "no" / "such" / "dir"
    monkeypatch.setattr(tempfile, "tempdir", str(missing))
    with pytest.raises(UploadError, match="point TMPDIR at a writable directory"):
        _scratch.scratch_root()
    assert not missing.exists()
