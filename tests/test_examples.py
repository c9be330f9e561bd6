"""The example suites a user would copy are run by the tests, as users would run them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_demo(
    tmp_path: Path, *args: str, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, **(extra_env or {}))
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.pop("HF_ENDPOINT", None)  # the demo's conftest sets it to its own local hub
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "examples/demo",
            "-p",
            "no:cacheprovider",
            "--ckpts-cache-dir",
            str(tmp_path / "cache"),
            *args,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["serial", "n2"])
def test_demo_suite_cold_then_warm(tmp_path: Path, xdist: list[str]) -> None:
    cold = run_demo(tmp_path, *xdist)
    assert cold.returncode == 0, cold.stdout + cold.stderr
    assert "ckpts: mode=auto (default), manifest=checkpoints/checkpoints.yaml" in cold.stdout
    assert "2 downloaded" in cold.stdout
    warm = run_demo(tmp_path, *xdist)
    assert warm.returncode == 0, warm.stdout + warm.stderr
    assert "0 downloaded" in warm.stdout
    assert "2 cached" in warm.stdout


@pytest.mark.slow
def test_demo_suite_ci_kill_switch(tmp_path: Path) -> None:
    result = run_demo(tmp_path, "-rs", extra_env={"SKIP_CHECKPOINT_DOWNLOAD": "true"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ckpts: mode=skip (SKIP_CHECKPOINT_DOWNLOAD=true)" in result.stdout
    assert "skipped" in result.stdout
    assert not (tmp_path / "cache").exists()  # no I/O at all
    filtered = run_demo(tmp_path, "-m", "not requires_checkpoints", "--ckpts=skip")
    assert filtered.returncode == 0, filtered.stdout
    assert "deselected" in filtered.stdout


def test_demo_manifest_pins_the_commit_the_bundled_hub_serves() -> None:
    """docs/getting-started/demo.md "The CLI on the demo checkpoints" serves hub_data with `python -m pytest_ckpts.testing.hub`;
    the demo's conftest serves it too. Both must produce the pinned commit."""
    from pytest_ckpts import load_manifest
    from pytest_ckpts.testing import LocalHub

    data = ROOT / "examples" / "demo" / "hub_data"
    files = {p.relative_to(data).as_posix(): p for p in sorted(data.rglob("*")) if p.is_file()}
    manifest = load_manifest(ROOT / "checkpoints" / "checkpoints.yaml")
    with LocalHub() as hub:
        commit = hub.add_files("acme/demo-checkpoints", files, message="anything")
    assert {e.revision for e in manifest.entries.values()} == {commit}
