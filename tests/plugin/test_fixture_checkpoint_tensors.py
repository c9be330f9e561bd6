"""``checkpoint_tensors`` and ``fetch_tensors`` through pytester: modes, xdist, the report."""

from __future__ import annotations

import json
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from pytest_ckpts.testing import LocalHub
from tests.helpers import REPO, dead_endpoint
from tests.partial_files import HF_PATH, index, make_tensors, publish, safetensors_bytes

pytest_plugins = ["pytester"]
pytest.importorskip("torch")
pytest.importorskip("safetensors")

TESTS = textwrap.dedent(
    """
    import torch

    def test_partial(checkpoint_tensors):
        t = checkpoint_tensors("llm", ["ids", "embed"])
        assert torch.equal(t["ids"], torch.arange(7))
        assert t["embed"].shape == (64, 32) and t["embed"].dtype == torch.float32
    """
)


@pytest.fixture
def data() -> bytes:
    return safetensors_bytes(make_tensors(big=512))  # a 1 MiB tensor nobody asks for


@pytest.fixture
def manifest(pytester: pytest.Pytester, hub: LocalHub, data: bytes) -> Path:
    path = publish(pytester.path, hub, data)
    index(path)
    hub.stats.reset()
    return path


def _bodies(hub: LocalHub) -> list[tuple[str | None, int]]:
    return [(r.range, r.bytes_sent) for r in hub.stats.requests if r.body]


@pytest.fixture(autouse=True)
def _only_this_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runs load this plugin only (``-p ckpts``): other plugins' start-up and
    summaries were most of each run's time."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    plugins = ("-p", "ckpts", *(("-p", "xdist") if "-n" in args else ()))
    return pytester.runpytest("-p", "no:cacheprovider", *plugins, "-rs", *args)


def test_fixture_cold_then_warm_with_summary_and_report(
    pytester: pytest.Pytester, hub: LocalHub, manifest: Path, data: bytes
) -> None:
    pytester.makepyfile(test_it=TESTS)
    result = _run(pytester, "-v", "--ckpts-report=report.json")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*= checkpoints =*", "1 downloaded (*), 0 cached, 0 skipped*"])
    sent = sum(n for _, n in _bodies(hub))
    assert all(rng is not None for rng, _ in _bodies(hub))
    (row,) = json.loads((pytester.path / "report.json").read_text())["checkpoints"]
    assert (row["name"], row["status"], row["size"]) == ("llm", "downloaded", len(data))
    assert row["bytes"] == sent
    assert 0 < sent < len(data) / 10
    hub.stats.reset()
    result = _run(pytester, "-v", "--ckpts-report=report.json")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["0 downloaded (*), 1 cached, 0 skipped*"])
    assert hub.stats.request_count == 0  # pinned and cached: nothing asked
    (row,) = json.loads((pytester.path / "report.json").read_text())["checkpoints"]
    assert (row["status"], row["bytes"], row["size"]) == ("cached", 0, len(data))


@pytest.mark.slow
def test_xdist_workers_fetch_each_tensor_once(
    pytester: pytest.Pytester, hub: LocalHub, manifest: Path
) -> None:
    body = "import os, pathlib\n\n" + "\n".join(
        f"def test_{i}(checkpoint_tensors):\n"
        f"    pathlib.Path('asking-' + os.environ['PYTEST_XDIST_WORKER']).touch()\n"
        f"    t = checkpoint_tensors('llm', ['ids', 'block.w', 'norm'])\n"
        f"    assert t['block.w'].shape == (512, 512)\n"
        for i in range(6)
    )
    pytester.makepyfile(test_it=body)
    # The first read of the file is held until both workers are asking for the tensors:
    # the second one then finds the first one's piece locks taken (no clock involved).
    held = hub.faults.hold(n=1, path_contains="model.safetensors")
    both_asked: list[bool] = []

    def asking() -> int:
        return len(list(pytester.path.glob("asking-gw*")))

    def release_when_both_ask() -> None:
        held.wait_arrived(timeout=120)
        deadline = time.monotonic() + 120
        while asking() < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        both_asked.append(asking() == 2)
        held.release()

    releaser = threading.Thread(target=release_when_both_ask, daemon=True)
    releaser.start()
    args = ("-p", "no:cacheprovider", "-p", "ckpts", "-p", "xdist", "-n", "2")
    result = pytester.runpytest_subprocess(*args, timeout=300)
    releaser.join(timeout=5)
    assert both_asked == [True]  # the workers overlapped
    result.assert_outcomes(passed=6)
    ranges = Counter(rng for rng, _ in _bodies(hub))
    assert ranges
    assert all(n == 1 for n in ranges.values()), ranges
    assert None not in ranges
    result.stdout.fnmatch_lines(["1 downloaded (*), 0 cached, 0 skipped"])


@pytest.mark.parametrize(
    ("args", "outcome", "text"),
    [
        (["--ckpts=skip"], "skipped", "downloads disabled"),
        (["--ckpts=offline"], "skipped", "not cached*offline"),
    ],
)
def test_modes_without_cache(
    pytester: pytest.Pytester,
    hub: LocalHub,
    manifest: Path,
    args: list[str],
    outcome: str,
    text: str,
) -> None:
    pytester.makepyfile(test_it=TESTS)
    result = _run(pytester, *args)
    result.assert_outcomes(**{outcome: 1})
    result.stdout.fnmatch_lines([f"SKIPPED*{text}*"])
    assert hub.stats.request_count == 0


def test_hub_down_skips_in_auto_and_fails_in_require(
    pytester: pytest.Pytester, manifest: Path, hub: LocalHub, plugin_args: list[str]
) -> None:
    manifest.write_text(manifest.read_text().replace(hub.endpoint, dead_endpoint()))
    pytester.makepyfile(test_it=TESTS)
    result = _run(pytester, *plugin_args)
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED*checkpoint 'llm'*unreachable*"])
    result = _run(pytester, *plugin_args, "--ckpts=require")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*--ckpts=require turns hub failures into errors*"])


def test_tampered_bytes_and_stale_index_fail_never_skip(
    pytester: pytest.Pytester, hub: LocalHub, data: bytes
) -> None:
    path = publish(pytester.path, hub, data, pinned=False)
    index(path)
    doc = json.loads((path.parent / "tensors" / "llm.json").read_text())
    tampered = bytearray(data)
    tampered[doc["tensors"]["embed"]["begin"]] ^= 0x80
    hub.add_file(REPO, HF_PATH, bytes(tampered))
    pytester.makepyfile(test_it=TESTS)
    result = _run(pytester, "--ckpts=auto")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*Checksum mismatch for tensor 'embed' of checkpoint 'llm'*"])
    result.stdout.fnmatch_lines([f"*expected sha256: {doc['tensors']['embed']['sha256']}*"])
    result.stdout.fnmatch_lines(["*error      llm: Checksum mismatch*"])
    hub.add_file(REPO, HF_PATH, safetensors_bytes({"other": make_tensors()["ids"]}))
    result = _run(pytester, "--ckpts=offline")  # offline: the pieces read before are fine
    result.assert_outcomes(skipped=1)  # embed was never kept
    result = _run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*is stale*re-run `pytest-ckpts lock --tensors llm`"])


def test_entry_without_index_fails_with_the_fix(
    pytester: pytest.Pytester, hub: LocalHub, data: bytes
) -> None:
    publish(pytester.path, hub, data)
    pytester.makepyfile(test_it=TESTS)
    result = _run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*has no tensor_index*run `pytest-ckpts lock --tensors llm`*"])
    assert hub.stats.request_count == 0


def test_fixture_implies_marker_and_fetch_tensors_shares_the_run(
    pytester: pytest.Pytester, hub: LocalHub, manifest: Path
) -> None:
    pytester.makepyfile(
        test_it=TESTS
        + textwrap.dedent(
            """
            import pytest
            from pytest_ckpts import fetch_tensors

            @pytest.mark.requires_checkpoints
            def test_library():
                assert fetch_tensors("llm", ["mask"])["mask"].tolist() == [True, False, True]
            """
        )
    )
    result = _run(pytester, "-m", "not requires_checkpoints")
    result.assert_outcomes()
    result.stdout.fnmatch_lines(["*2 deselected*"])
    result = _run(pytester, "--ckpts-cache-dir", "elsewhere")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*1 downloaded*"])
    assert list((pytester.path / "elsewhere" / ".ckpts" / "tensors").rglob("*.bin"))
    result = _run(pytester, "--ckpts=skip", "-k", "library")
    result.assert_outcomes(skipped=1)
