"""hub_client leaves huggingface_hub's process-wide state as it found it (issue 18), and
the run still sends nothing to any host but the configured endpoint (SPEC §11)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pytest_ckpts import load_manifest
from pytest_ckpts.store import Store
from pytest_ckpts.testing import LocalHub
from tests.helpers import REPO, SMALL, make_manifest

OLD = os.urandom(200_000) + b"old"
NEW = os.urandom(150_000) + b"new"

SCRIPT = textwrap.dedent(
    """
    import io, json, sys
    from huggingface_hub import constants
    from huggingface_hub.utils import _detect_agent, _telemetry, disable_progress_bars
    from huggingface_hub.utils.tqdm import progress_bar_states
    from pytest_ckpts.cli import main

    def flags():
        return [constants.HF_HUB_DISABLE_TELEMETRY, constants.HF_HUB_DISABLE_XET, dict(progress_bar_states)]

    disable_progress_bars("some.group")  # a caller's own setting, to be kept as it is

    before = flags()
    out = io.StringIO()
    codes = [main(["fetch", "-q", "old"], out=out), main(["upload", "new", "--from", sys.argv[1]], out=out)]
    print(json.dumps({
        "codes": codes,
        "out": out.getvalue(),
        "before": before,
        "after": flags(),
        # detect_agent() (which fetches <HF_ENDPOINT at import>/api/agent-harnesses) never ran
        "agent_registry_loaded": _detect_agent._registry is not None,
        "telemetry_thread": _telemetry._TELEMETRY_THREAD is not None,
    }))
    """
)


def test_fetch_and_upload_restore_hf_constants_and_send_no_telemetry(
    hub: LocalHub, project: Path, tmp_path: Path
) -> None:
    commit = hub.add_files(REPO, {"weights/old.ckpt": OLD})
    (project / "checkpoints" / "checkpoints.yaml").write_text(
        "checkpoints:\n"
        "  old:\n    hf_path: weights/old.ckpt\n    sha256: <to_be_calculated>\n"
        "  new:\n    hf_path: weights/new.ckpt\n    sha256: <to_be_calculated>\n"
        f"config:\n  hf_repo: {REPO}\n  endpoint: {hub.endpoint}\n"
    )
    src = tmp_path / "src"
    (src / "weights").mkdir(parents=True)
    (src / "weights" / "new.ckpt").write_bytes(NEW)
    env = {k: v for k, v in os.environ.items() if "TELEMETRY" not in k and "XET" not in k}
    env.update(
        # read at import: a telemetry call would land on the local hub and be counted
        HF_ENDPOINT=hub.endpoint,
        HF_HOME=str(tmp_path / "hf_home"),  # no cached harness registry: it would be fetched
        HF_TOKEN="hf_writer",
    )
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(src)],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["codes"] == [0, 0], result["out"]
    assert hub.file_bytes(REPO, "weights/new.ckpt") == NEW  # through LFS, not Xet
    assert hub.commit_sha(REPO) != commit
    assert result["before"] == [False, False, {"some.group": False}]
    assert result["after"] == result["before"]
    assert result["agent_registry_loaded"] is False
    assert result["telemetry_thread"] is False
    assert hub.stats.count("GET", "/api/agent-harnesses") == 0
    assert hub.stats.count(path_contains="/api/telemetry") == 0


def test_overlapping_uploads_restore_what_was_there_before_both() -> None:
    """Two threads' scoped changes never interleave (a save of the other's value would
    leave the constant set for good)."""
    import threading

    from huggingface_hub import constants

    from pytest_ckpts._hf_state import hf_constants

    before = constants.HF_HUB_DISABLE_XET
    a_in, b_in = threading.Event(), threading.Event()
    release, b_release = threading.Event(), threading.Event()

    def first() -> None:
        with hf_constants(HF_HUB_DISABLE_XET=not before):
            a_in.set()
            release.wait(30)

    def second() -> None:
        a_in.wait(30)
        with hf_constants(HF_HUB_DISABLE_XET=not before):
            b_in.set()
            b_release.wait(30)  # leaves after the first

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    a_in.wait(30)
    b_in.wait(1.0)  # without the lock the second is inside by now; with it, it waits
    release.set()
    threads[0].join(30)
    b_release.set()
    threads[1].join(30)
    assert b_in.is_set()
    assert before == constants.HF_HUB_DISABLE_XET


def test_small_cold_files_cost_no_fsync_and_one_header_build(
    project: Path, hub: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per small file the fetch loop paid an fsync for the stamp (0.40 ms), a filelock
    (~0.9 ms) and a rebuild of the request headers (0.13 ms). Stamps are now appended
    (a lost one costs a re-hash), headers built once per client (our own User-Agent:
    huggingface_hub's ``build_hf_headers`` is never called, see ``_hf_state``)."""
    import huggingface_hub.utils as hf_utils

    from pytest_ckpts import hub_client

    manifest = load_manifest(make_manifest(project, hub, SMALL, pinned=True))
    fsyncs: list[int] = []
    builds: list[object] = []
    hf_builds: list[object] = []
    real_fsync, real_build = os.fsync, hub_client.user_agent

    def counting_fsync(fd: int) -> None:
        fsyncs.append(fd)
        real_fsync(fd)

    def counting_build() -> str:
        builds.append(1)
        return real_build()

    monkeypatch.setattr(os, "fsync", counting_fsync)
    monkeypatch.setattr(hub_client, "user_agent", counting_build)
    monkeypatch.setattr(hf_utils, "build_hf_headers", lambda *a, **k: hf_builds.append(k))
    store = Store(manifest)
    for name in SMALL:
        assert store.resolve(manifest.get(name)).source == "downloaded"
    assert hub.stats.bodies_served == len(SMALL)
    assert fsyncs == []
    assert len(builds) == 1
    assert hf_builds == []
    for name in SMALL:  # and every one of them is trusted by a new store
        assert Store(manifest).is_trusted(manifest.get(name))
