"""Plugin behaviour through pytester (SPEC §3, §4): modes, marker, fixtures, xdist, report."""

from __future__ import annotations

import hashlib
import os
import re
import textwrap
import time
from collections.abc import Callable

import pytest

from pytest_ckpts.cli import main
from pytest_ckpts.testing import LocalHub
from tests.helpers import dead_endpoint, make_manifest
from tests.plugin.suites import FILES, SMALL_FILES, TESTS


@pytest.fixture(params=[[], ["-n", "0"], ["-n", "2"], ["-n", "4"], ["-p", "no:xdist"]], ids=str)
def worker_args(request: pytest.FixtureRequest) -> list[str]:
    """Every way of running with and without workers (the shared plugin_args has two)."""
    return list(request.param)


def test_auto_downloads_then_warm_run_is_cached(
    pytester: pytest.Pytester, hub: LocalHub, run: Callable[..., pytest.RunResult]
) -> None:
    make_manifest(pytester.path, hub, FILES, pinned=True)
    pytester.makepyfile(test_it=TESTS)
    result = run("-v")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        [
            "ckpts: mode=auto (default), manifest=checkpoints*checkpoints.yaml (4 entries), cache=checkpoints/hub",
            "*= checkpoints =*",
            "2 downloaded (*), 0 cached, 0 skipped*",
            "downloaded ldm: *",
            "downloaded vae: *",
        ]
    )
    assert hub.stats.bodies_served == 2
    hub.stats.reset()
    result = run("-v")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["0 downloaded (*), 2 cached, 0 skipped*"])
    assert hub.stats.request_count == 0  # pinned + warm: no HTTP at all


def test_xdist_downloads_each_checkpoint_once(
    pytester: pytest.Pytester, hub: LocalHub, worker_args: list[str]
) -> None:
    make_manifest(pytester.path, hub, FILES)
    tests = ["import pytest"]
    for i in range(12):
        name = list(FILES)[i % 4]
        tests.append(
            f"@pytest.mark.requires_checkpoints({name!r})\n"
            f"def test_{i}(checkpoints):\n"
            f"    assert checkpoints[{name!r}].path.read_bytes().endswith({name.encode()!r})\n"
        )
    pytester.makepyfile(test_many="\n\n".join(tests))
    hub.faults.delay(0.2, path_contains="/resolve/")  # make workers overlap on downloads
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *worker_args, timeout=120)
    result.assert_outcomes(passed=12)
    assert hub.stats.bodies_served == 4
    # the branch was resolved once for the whole run (on the controller under xdist)
    assert hub.stats.count(path_contains="/api/models/") == 1
    out = result.stdout.str()
    assert out.count("= checkpoints =") == 1
    result.stdout.fnmatch_lines(["4 downloaded (*), 0 cached, 0 skipped*"])


def test_hub_down_auto_skips_fast_naming_the_hub(
    pytester: pytest.Pytester, run: Callable[..., pytest.RunResult]
) -> None:
    endpoint = dead_endpoint()
    make_manifest(pytester.path, None, FILES, endpoint=endpoint)
    pytester.makepyfile(test_it=TESTS)
    started = time.monotonic()
    run("--ckpts=skip")  # the same run's start-up cost, with no hub at all
    no_network = time.monotonic() - started
    started = time.monotonic()
    result = run()
    assert time.monotonic() - started - no_network < 20  # the client alone: ~23 s per file
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines([f"*checkpoint 'vae'*hub unreachable at {endpoint}*Connection*"])


def test_hub_down_with_xdist_is_decided_once(pytester: pytest.Pytester) -> None:
    endpoint = dead_endpoint()
    make_manifest(pytester.path, None, FILES, endpoint=endpoint)
    pytester.makepyfile(test_it=TESTS)

    def timed(*args: str) -> tuple[float, pytest.RunResult]:
        started = time.monotonic()
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", *args)
        return time.monotonic() - started, result

    no_network, _ = timed("--ckpts=skip")  # same start-up cost, no hub at all
    dead_hub, result = timed("-rs")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines([f"*checkpoint '*'*hub unreachable at {endpoint}*"])
    # the dead hub itself may cost seconds, never the client's ~23 s per file
    assert dead_hub - no_network < 20


@pytest.mark.parametrize("mode", ["auto", "require", "offline"])
def test_checksum_mismatch_is_always_an_error(
    pytester: pytest.Pytester, hub: LocalHub, mode: str, plugin_args: list[str]
) -> None:
    manifest = make_manifest(pytester.path, hub, FILES)
    pytester.makepyfile(test_it=TESTS)
    if mode == "offline":  # a verified copy in the cache, then the manifest changes
        pytester.runpytest(*plugin_args, "-p", "no:cacheprovider").assert_outcomes(passed=3)
    good = hashlib.sha256(FILES["vae"]).hexdigest()
    manifest.write_text(manifest.read_text().replace(good, "0" * 64))
    result = pytester.runpytest(*plugin_args, "-p", "no:cacheprovider", f"--ckpts={mode}")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        ["*Checksum mismatch for checkpoint 'vae'*", "*expected: 000000*", f"*actual:   {good}*"]
    )


MISMATCH_TESTS = textwrap.dedent(
    """
    import pytest

    @pytest.mark.requires_checkpoints("vae")
    def test_a(checkpoints):
        pass

    @pytest.mark.requires_checkpoints("vae")
    def test_b(checkpoints):
        pass

    def test_c(checkpoint):
        checkpoint("vae")
    """
)


TWO_TESTS = textwrap.dedent(
    """
    import pytest
    from pytest_ckpts import get_checkpoint

    @pytest.mark.requires_checkpoints("enc")
    def test_enc(checkpoints):
        pass

    @pytest.mark.requires_checkpoints("dec")
    def test_dec(checkpoints):
        pass

    @pytest.mark.requires_checkpoints("dec")
    def test_dec_again(checkpoints):
        pass

    @pytest.mark.requires_checkpoints
    def test_library_dec():
        get_checkpoint("dec")

    def test_lazy_dec(checkpoint):
        checkpoint("dec")
    """
)


def _skipped_lines(result: pytest.RunResult) -> list[str]:
    return [line for line in result.stdout.lines if line.startswith("SKIPPED")]


def test_checksum_mismatch_downloaded_once_per_run(
    pytester: pytest.Pytester, hub: LocalHub, plugin_args: list[str]
) -> None:
    """Every test using a checkpoint whose hub file does not match the manifest
    downloaded it again (3 tests, 3 downloads of a possibly large file), and the error
    was printed with "During handling of the above exception" (twice). Now the first
    mismatch is remembered for the run, in every process of it."""
    make_manifest(pytester.path, hub, SMALL_FILES, sha={"vae": "0" * 64})
    pytester.makepyfile(test_it=MISMATCH_TESTS)
    hub.faults.delay(2.0, path_contains="/resolve/")  # workers overlap on the download
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *plugin_args, timeout=120)
    result.assert_outcomes(errors=2, failed=1)
    assert hub.stats.bodies_served == 1
    out = result.stdout.str()
    assert "During handling of the above exception" not in out
    assert "direct cause of the following exception" not in out
    assert out.count("Checksum mismatch for checkpoint 'vae'") >= 3
    assert "not downloaded again" in out
    assert "Traceback" not in out


@pytest.mark.parametrize("pinned", [False, True], ids=["branch", "pinned"])
def test_reused_probe_error_names_each_checkpoints_own_path(
    pytester: pytest.Pytester, run: Callable[..., pytest.RunResult], pinned: bool
) -> None:
    """The probe answer is shared by every entry of a repo and revision; the earlier
    store reused its error text, so 'dec' was skipped "from ... path 'weights/enc.ckpt'"
    (whichever entry asked first)."""
    endpoint = dead_endpoint()
    make_manifest(pytester.path, None, SMALL_FILES, endpoint=endpoint)
    if pinned:
        manifest = pytester.path / "checkpoints" / "checkpoints.yaml"
        manifest.write_text(manifest.read_text() + '  revision: "' + "a" * 40 + '"\n')
    pytester.makepyfile(test_it=TWO_TESTS)
    result = run()
    result.assert_outcomes(skipped=5)
    lines = _skipped_lines(result)
    assert len(lines) == 5, lines
    for line in lines:
        assert "unreachable" in line or "Connect" in line, line
        assert not re.search(r"checkpoint '(\w+)': checkpoint '\1'", line), line  # said once
        if "'enc'" in line:
            assert "weights/enc.ckpt" in line, line
            assert "dec.ckpt" not in line, line
        else:
            assert "'dec'" in line, line
            assert "weights/dec.ckpt" in line, line
            assert "enc.ckpt" not in line, line


def test_skip_reasons_point_at_each_test(
    pytester: pytest.Pytester, run: Callable[..., pytest.RunResult]
) -> None:
    """Skips raised inside the plugin were reported at ``pytest_ckpts/...py:NN``, and
    ``-rs`` merged every test skipped for the same reason into one ``SKIPPED [2]``
    line. Now each names its test's file and line."""
    make_manifest(pytester.path, None, SMALL_FILES, endpoint=dead_endpoint())
    test_file = pytester.makepyfile(test_it=TWO_TESTS)
    result = run()
    result.assert_outcomes(skipped=5)
    lines = _skipped_lines(result)
    source = test_file.read_text().splitlines()
    # pytest reports a test at its first line: the decorator's when it has one
    starts = {
        m.group(1): i + (0 if source[i - 1].startswith("@") else 1)
        for i, text in enumerate(source)
        if (m := re.match(r"def (test_\w+)", text))
    }
    assert len(lines) == 5, lines
    seen = []
    for line in lines:
        m = re.match(r"SKIPPED \[1\] test_it\.py:(\d+): ", line)
        assert m, line
        seen.append(int(m.group(1)))
        assert "pytest_ckpts" not in line.split(": ")[0]
    assert sorted(seen) == sorted(starts.values()), (seen, starts)


def test_plugin_run_after_verify_mismatch_downloads_again(
    pytester: pytest.Pytester, hub: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After ``pytest-ckpts verify`` reported a MISMATCH, the next pytest run must not
    hand out the file on the strength of an old stamp: it hashes, finds the damage and
    downloads the file again."""
    import io

    make_manifest(pytester.path, hub, SMALL_FILES, pinned=True)
    pytester.makepyfile(
        test_it=f"""
        import hashlib, pytest

        @pytest.mark.requires_checkpoints("vae")
        def test_vae(checkpoints):
            data = checkpoints["vae"].path.read_bytes()
            assert hashlib.sha256(data).hexdigest() == {hashlib.sha256(SMALL_FILES["vae"]).hexdigest()!r}
        """
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
    blob = next((pytester.path / "checkpoints" / "hub" / "models--acme--ckpts" / "blobs").iterdir())
    st = blob.stat()
    with open(blob, "r+b") as f:
        f.write(b"\0" * 64)
    os.utime(blob, ns=(st.st_atime_ns, st.st_mtime_ns))
    monkeypatch.chdir(pytester.path)
    out = io.StringIO()
    assert main(["verify"], out=out) == 1
    assert "MISMATCH" in out.getvalue()
    hub.stats.reset()
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert hub.stats.bodies_served == 1


DATA = os.urandom(48 * 1024) + b"ckpt"


FOUR = {n: DATA + n.encode() for n in ("a", "b", "c", "d")}


FOUR_TESTS = """
import pytest

@pytest.mark.parametrize("name", ["a", "b", "c", "d"])
def test_each(checkpoint, name):
    checkpoint(name)
"""


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
