"""CI reality: retries within a budget, failures remembered for the run, stale copies,
marker filtering, cache keys, reports and prefetch — against the local hub over HTTP."""

from __future__ import annotations

import hashlib
import json
import os
import textwrap
import time
from pathlib import Path

import pytest
from conftest import REPO, dead_endpoint, make_manifest

from pytest_ckpts import CheckpointDownloadError, load_manifest
from pytest_ckpts.cli import main
from pytest_ckpts.hub_client import HubClient
from pytest_ckpts.manifest import Manifest
from pytest_ckpts.retry import RetryBudget, RunState, parse_retry_after
from pytest_ckpts.store import Store
from pytest_ckpts.testing import LocalHub

pytest_plugins = ["pytester"]

DATA = os.urandom(48 * 1024) + b"ckpt"
FILES = {name: os.urandom(16 * 1024) + name.encode() for name in ("vae", "ldm")}
FOUR = {n: DATA + n.encode() for n in ("a", "b", "c", "d")}
FOUR_TESTS = """
import pytest

@pytest.mark.parametrize("name", ["a", "b", "c", "d"])
def test_each(checkpoint, name):
    checkpoint(name)
"""


def waiting_store(manifest: Manifest, waits: list[float], budget: float = 60.0) -> Store:
    """A store whose hub client records each wait between attempts instead of sleeping:
    timing is asserted on what the retry policy asked for, never on the wall clock."""
    client = HubClient.for_manifest(manifest, budget=RetryBudget(budget), sleep=waits.append)
    return Store(manifest, client=client)


# --------------------------------------------------------------------------- retries


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert parse_retry_after("7") == 7.0
    now = 1_700_000_000.0
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:30 GMT", now=now) == pytest.approx(10.0)
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:00 GMT", now=now) == 0.0  # in the past
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_transient_5xx_on_the_revision_lookup_is_retried(project: Path, hub: LocalHub) -> None:
    manifest = load_manifest(make_manifest(project, hub, {"a": DATA}))
    hub.faults.fail_next(2, 503, path_contains="/api/models/")
    ckpt = Store(manifest).resolve(manifest.get("a"))
    assert ckpt.path.read_bytes() == DATA
    assert hub.stats.count(path_contains="/api/models/") == 3


def test_transient_5xx_on_the_download_is_retried(project: Path, hub: LocalHub) -> None:
    manifest = load_manifest(make_manifest(project, hub, {"a": DATA}, pinned=True))
    hub.faults.fail_next(1, 502, method="GET", path_contains="weights/a.ckpt")
    ckpt = Store(manifest).resolve(manifest.get("a"))
    assert ckpt.path.read_bytes() == DATA
    assert ckpt.source == "downloaded"


def test_spent_budget_fails_at_once_naming_it(project: Path, hub: LocalHub) -> None:
    manifest = load_manifest(make_manifest(project, hub, {"a": DATA}))
    hub.faults.fail_next(50, 503, path_contains="/api/models/")
    waits: list[float] = []
    with pytest.raises(CheckpointDownloadError) as info:
        waiting_store(manifest, waits, budget=1.0).resolve(manifest.get("a"))
    assert waits  # it waited...
    assert sum(waits) <= 1.0  # ...within the budget, then gave up
    message = str(info.value)
    assert "HTTP 503" in message
    assert "retry budget" in message
    assert info.value.kind == "transient"


def test_permanent_errors_are_never_retried(project: Path, hub: LocalHub) -> None:
    manifest = load_manifest(make_manifest(project, hub, {"a": DATA}))
    hub.faults.fail_next(5, 404, method="GET", path_contains="weights/a.ckpt")
    with pytest.raises(CheckpointDownloadError) as info:
        Store(manifest).resolve(manifest.get("a"))
    assert info.value.kind == "permanent"
    assert hub.stats.count(method="GET", path_contains="weights/a.ckpt") == 1


def test_rate_limit_says_429_and_names_hf_token(project: Path, hub: LocalHub) -> None:
    manifest = load_manifest(make_manifest(project, hub, {"a": DATA}))
    hub.faults.fail_next(50, 429, path_contains="/api/models/")
    with pytest.raises(CheckpointDownloadError) as info:
        Store(manifest, retry_budget=0.5).resolve(manifest.get("a"))
    assert "429" in str(info.value)
    assert "HF_TOKEN" in str(info.value)


# --------------------------------------------------------------------------- run state


def test_unreachable_endpoint_is_remembered_across_processes(project: Path, tmp_path: Path) -> None:
    """A second process of the run (an xdist worker) learns it from the run-state file."""
    endpoint = dead_endpoint()
    manifest = load_manifest(
        make_manifest(project, None, {"a": DATA, "b": DATA[::-1]}, endpoint=endpoint, pinned=False)
    )
    state = tmp_path / "run.json"
    with pytest.raises(CheckpointDownloadError):
        Store(manifest, run_state=RunState(state)).resolve(manifest.get("a"))
    assert endpoint in state.read_text()
    # the "other process": a fresh store and run-state object reading the same file
    other = Store(manifest, run_state=RunState(state))
    with pytest.raises(CheckpointDownloadError) as info:
        other.resolve(manifest.get("b"))
    assert "hub unreachable" in str(info.value)
    assert "remembered for this run" in str(info.value)
    assert "weights/b.ckpt" in str(info.value)  # names its own checkpoint


def test_pinned_revisions_on_a_dead_hub_cost_one_probe(project: Path) -> None:
    endpoint = dead_endpoint()
    files = {n: DATA + n.encode() for n in ("a", "b", "c", "d")}
    path = make_manifest(project, None, files, endpoint=endpoint)
    text = path.read_text() + '  revision: "' + "a" * 40 + '"\n'
    path.write_text(text)
    manifest = load_manifest(path)
    waits: list[float] = []
    store = waiting_store(manifest, waits)
    for name in files:
        with pytest.raises(CheckpointDownloadError) as info:
            store.resolve(manifest.get(name))
        assert "hub unreachable" in str(info.value)
        assert "hf_path" not in str(info.value)
    assert waits == []  # a refused connection is not retried (the client alone: ~23 s per file)


# --------------------------------------------------------------------------- stale copies


def test_stale_copy_is_used_when_the_branch_cannot_be_resolved(
    project: Path, hub: LocalHub
) -> None:
    manifest = load_manifest(make_manifest(project, hub, {"a": DATA}))
    fresh = Store(manifest).resolve(manifest.get("a"))
    hub.faults.fail_next(50, 503, path_contains="/api/models/")
    store = Store(manifest, retry_budget=0.5)
    stale = store.resolve(manifest.get("a"))
    assert stale.source == "stale"
    assert stale.path.read_bytes() == DATA
    assert stale.revision == fresh.revision
    assert fresh.revision[:12] in store.stale_reasons["a"]
    assert "verified" in store.stale_reasons["a"]


def test_no_stale_copy_for_a_permanent_error(project: Path, hub: LocalHub) -> None:
    manifest = load_manifest(make_manifest(project, hub, {"a": DATA}))
    Store(manifest).resolve(manifest.get("a"))
    hub.faults.fail_next(5, 404, path_contains="/api/models/")
    with pytest.raises(CheckpointDownloadError):
        Store(manifest).resolve(manifest.get("a"))


def test_stale_copy_in_require_mode_passes_and_is_reported(
    pytester: pytest.Pytester, hub: LocalHub
) -> None:
    make_manifest(pytester.path, hub, FILES)
    pytester.makepyfile(
        test_it="""
        import pytest

        @pytest.mark.requires_checkpoints("vae")
        def test_vae(checkpoints):
            assert checkpoints["vae"].path.read_bytes().endswith(b"vae")
        """
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
    hub.stop()  # the hub is gone: connection refused
    report = pytester.path / "report.json"
    result = pytester.runpytest(
        "-p", "no:cacheprovider", "--ckpts=require", "--ckpts-report", str(report)
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*0 cached, 1 stale*", "stale      vae: stale: commit *verified*"])
    (row,) = json.loads(report.read_text())["checkpoints"]
    assert row["status"] == "stale"
    assert "hub unreachable" in row["reason"]


# --------------------------------------------------------------------------- marker filtering


def test_fixture_users_are_deselected_by_marker_filter(
    pytester: pytest.Pytester, hub: LocalHub
) -> None:
    make_manifest(pytester.path, hub, FILES)
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture
        def model(checkpoint):          # uses a checkpoint fixture indirectly
            return checkpoint("vae")
        """
    )
    pytester.makepyfile(
        test_it="""
        def test_direct(checkpoint):
            checkpoint("ldm")

        def test_through_fixture(model):
            assert model.path.is_file()

        def test_plain():
            pass
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "-m", "not requires_checkpoints")
    result.assert_outcomes(passed=1, deselected=2)
    assert hub.stats.request_count == 0
    result = pytester.runpytest("-p", "no:cacheprovider", "-m", "requires_checkpoints")
    result.assert_outcomes(passed=2, deselected=1)


# --------------------------------------------------------------------------- cache key


def _key(manifest: Path, *names: str) -> str:
    import io

    out = io.StringIO()
    assert main(["--manifest", str(manifest), "cache", "key", *names], out=out) == 0
    return out.getvalue().strip()


def test_cache_key_ignores_presentation_and_changes_with_content(project: Path) -> None:
    endpoint = dead_endpoint()  # no network is used
    path = make_manifest(project, None, FILES, endpoint=endpoint)
    key = _key(path)
    assert len(key) == 64
    text = path.read_text()
    # reorder entries, add comments, change descriptions, local names and cache_dir
    body = text.split("config:")[0]
    vae = body[body.index("  vae:") : body.index("  ldm:")]
    ldm = body[body.index("  ldm:") :]
    reordered = (
        "# a comment\ncheckpoints:\n"
        + ldm.replace("test checkpoint ldm", "other words")
        + vae.replace("filename: vae.ckpt", "filename: renamed.ckpt")
        + "config:"
        + text.split("config:")[1].replace("./checkpoints", "./elsewhere")
    )
    path.write_text(reordered)
    assert _key(path) == key
    path.write_text(text.replace("weights/vae.ckpt", "weights/vae2.ckpt"))
    assert _key(path) != key
    path.write_text(text + '  revision: "' + "b" * 40 + '"\n')
    assert _key(path) != key
    path.write_text(text.replace(endpoint, "http://127.0.0.1:1"))
    assert _key(path) != key
    path.write_text(text)
    assert _key(path, "vae") != key  # a subset is a different cache


# --------------------------------------------------------------------------- reports


def test_json_report_and_github_step_summary(
    pytester: pytest.Pytester, hub: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_manifest(pytester.path, hub, {**FILES, "gone": b"never published"})
    hub_text = (pytester.path / "checkpoints" / "checkpoints.yaml").read_text()
    # 'gone' is named in the manifest but the hub never had it: a permanent 404
    hub.faults.fail_next(5, 404, method="GET", path_contains="weights/gone.ckpt")
    assert "gone" in hub_text
    pytester.makepyfile(
        test_it="""
        import pytest

        @pytest.mark.requires_checkpoints("vae", "ldm")
        def test_both(checkpoints):
            pass

        @pytest.mark.requires_checkpoints("gone")
        def test_gone(checkpoints):
            pass
        """
    )
    summary = pytester.path / "step_summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    report = pytester.path / "out" / "report.json"
    report.parent.mkdir()
    result = pytester.runpytest("-p", "no:cacheprovider", "-n", "2", "--ckpts-report", str(report))
    result.assert_outcomes(passed=1, skipped=1)
    rows = {r["name"]: r for r in json.loads(report.read_text())["checkpoints"]}
    assert set(rows) == {"vae", "ldm", "gone"}
    for name in ("vae", "ldm"):
        row = rows[name]
        assert row["status"] == "downloaded"
        assert row["bytes"] == len(FILES[name])
        assert row["size"] == len(FILES[name])
        assert row["sha256"] == hashlib.sha256(FILES[name]).hexdigest()
        assert row["commit"] == hub.commit_sha(REPO)
        assert row["reason"] is None
        assert row["seconds"] >= 0
    assert rows["gone"]["status"] == "skipped"
    assert "404" in rows["gone"]["reason"]
    text = summary.read_text()
    assert text.startswith("earlier step\n")
    assert "| vae | downloaded |" in text
    assert text.count("### Checkpoints") == 1  # once per run, by the controller

    # a warm second run: cached, 0 bytes
    result = pytester.runpytest("-p", "no:cacheprovider", "--ckpts-report", str(report))
    rows = {r["name"]: r for r in json.loads(report.read_text())["checkpoints"]}
    assert (rows["vae"]["status"], rows["vae"]["bytes"]) == ("cached", 0)


# --------------------------------------------------------------------------- fetch --jobs


def test_fetch_jobs_keeps_manifest_order(project: Path, hub: LocalHub) -> None:
    import io

    files = {n: DATA + n.encode() for n in ("d", "c", "b", "a")}
    path = make_manifest(project, hub, files)
    hub.faults.delay(0.3, n=1, path_contains="weights/d.ckpt")  # the first one finishes last
    out = io.StringIO()
    assert main(["--manifest", str(path), "fetch", "-q", "-j", "4"], out=out) == 0
    names = [line.split()[1] for line in out.getvalue().splitlines()]
    assert names == ["d", "c", "b", "a"]
    assert hub.stats.bodies_served == 4


# --------------------------------------------------------------------------- prefetch


@pytest.mark.parametrize("args", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_prefetch_downloads_each_file_once_with_the_same_outcomes(
    pytester: pytest.Pytester, hub: LocalHub, args: list[str]
) -> None:
    files = {n: DATA + n.encode() for n in ("a", "b", "c", "d")}
    make_manifest(pytester.path, hub, files)
    pytester.makepyfile(
        test_it=textwrap.dedent(
            """
            import pytest

            @pytest.mark.parametrize("name", ["a", "b", "c", "d"])
            def test_each(checkpoint, name):
                assert checkpoint(name).path.read_bytes().endswith(name.encode())

            @pytest.mark.requires_checkpoints("a", "b", "c", "d")
            def test_all(checkpoints):
                assert len(checkpoints) == 4
            """
        )
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "--ckpts-prefetch", "4", *args)
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines(["*4 downloaded*"])
    assert hub.stats.bodies_served == 4


def test_prefetch_failures_reach_the_test_as_without_prefetch(pytester: pytest.Pytester) -> None:
    make_manifest(pytester.path, None, FILES, endpoint=dead_endpoint())
    pytester.makepyfile(
        test_it="""
        import pytest

        @pytest.mark.requires_checkpoints("vae")
        def test_vae(checkpoints):
            pass
        """
    )
    outcomes = []
    for prefetch in ("0", "4"):
        result = pytester.runpytest("-p", "no:cacheprovider", "-rs", "--ckpts-prefetch", prefetch)
        result.assert_outcomes(skipped=1)
        line = next(x for x in result.stdout.lines if x.startswith("SKIPPED"))
        outcomes.append(line.split(":", 2)[2].split("127.0.0.1")[0])
    assert outcomes[0] == outcomes[1]


def test_bad_prefetch_and_budget_values_are_usage_errors(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_it="def test_x(): pass")
    result = pytester.runpytest_subprocess("--ckpts-prefetch", "many")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    pytester.makeini("[pytest]\nckpts_retry_budget = -3\n")
    result = pytester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*ini ckpts_retry_budget*"])


# --------------------------------------------------------------------------- 429 and blackholes


def test_429_with_retry_after_is_honoured_on_the_revision_lookup(
    project: Path, hub: LocalHub
) -> None:
    """One 429 used to skip every test of a cold run; Retry-After was ignored."""
    manifest = load_manifest(make_manifest(project, hub, {"a": DATA}))
    hub.throttle(1, retry_after=1, route="revision")
    waits: list[float] = []
    ckpt = waiting_store(manifest, waits).resolve(manifest.get("a"))
    assert waits == [1.0]  # it waited as asked (the first backoff step is 0.25-0.5 s)
    assert ckpt.path.read_bytes() == DATA
    assert hub.stats.count(route="revision", status=429) == 1
    assert hub.stats.count(route="revision", status=200) == 1


def test_429_with_an_http_date_on_the_download_is_honoured(project: Path, hub: LocalHub) -> None:
    manifest = load_manifest(make_manifest(project, hub, {"a": DATA}, pinned=True))
    hub.throttle(1, retry_after=3, http_date=True, route="file")
    waits: list[float] = []
    ckpt = waiting_store(manifest, waits).resolve(manifest.get("a"))
    # the date has whole seconds: 2-3 s from now, above any first backoff step (<= 0.5 s)
    (wait,) = waits
    assert 1.0 <= wait <= 3.0
    assert ckpt.path.read_bytes() == DATA
    assert hub.stats.count(route="file", status=429) == 1


def test_retry_after_longer_than_the_budget_fails_at_once_naming_it(
    project: Path, hub: LocalHub
) -> None:
    manifest = load_manifest(make_manifest(project, hub, {"a": DATA}))
    hub.throttle(1, retry_after=3600, route="revision")
    waits: list[float] = []
    with pytest.raises(CheckpointDownloadError) as info:
        waiting_store(manifest, waits, budget=60).resolve(manifest.get("a"))
    assert waits == []  # it did not wait at all
    message = str(info.value)
    assert "429" in message
    assert "Retry-After" in message
    assert "3600" in message
    assert "HF_TOKEN" in message


@pytest.mark.slow
def test_blackholed_hub_costs_one_probe_for_the_whole_xdist_run(
    pytester: pytest.Pytester, hub: LocalHub
) -> None:
    """A hub that accepts connections and never answers: one connection, one timeout."""
    make_manifest(pytester.path, hub, FOUR, pinned=True)
    pytester.makepyfile(test_it=FOUR_TESTS)
    hub.blackhole()
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "-rs", timeout=120)
    result.assert_outcomes(skipped=4)
    result.stdout.fnmatch_lines(["*hub unreachable*no answer in time*"])
    assert "hf_path" not in result.stdout.str()
    assert hub.connections_accepted == 1


def test_dead_hub_with_pinned_revisions_in_a_run(pytester: pytest.Pytester) -> None:
    """Pinned commits + port closed: every test skips with the real cause, fast."""
    path = make_manifest(pytester.path, None, FOUR, endpoint=LocalHub.dead_endpoint())
    path.write_text(path.read_text() + '  revision: "' + "c" * 40 + '"\n')
    pytester.makepyfile(test_it=FOUR_TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(skipped=4)
    result.stdout.fnmatch_lines(["*hub unreachable*Connect*"])
    assert "hf_path" not in result.stdout.str()


def test_run_records_are_removed_after_the_run_and_by_prune(pytester: pytest.Pytester) -> None:
    make_manifest(pytester.path, None, FILES, endpoint=dead_endpoint())
    pytester.makepyfile(
        test_it="""
        import pytest

        @pytest.mark.requires_checkpoints("vae")
        def test_vae(checkpoints):
            pass
        """
    )
    pytester.runpytest("-p", "no:cacheprovider", "-n", "2").assert_outcomes(skipped=1)
    runs = pytester.path / "checkpoints" / ".ckpts" / "runs"
    assert not [p for p in runs.glob("*") if p.is_file()]  # the run removed its record
    # a crashed run leaves its record behind: prune removes it once it is a day old
    runs.mkdir(parents=True, exist_ok=True)
    old, fresh = runs / "old.json", runs / "fresh.json"
    old.write_text("{}")
    fresh.write_text("{}")
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(old, (two_days_ago, two_days_ago))
    manifest = pytester.path / "checkpoints" / "checkpoints.yaml"
    assert main(["--manifest", str(manifest), "cache", "prune"]) == 0
    assert not old.exists()
    assert fresh.exists()
