"""Prefetch follows the run's life (issue 17, point 4).

Real pytest processes and real signals against the local hub, whose file bodies are
throttled so that a prefetch takes far longer than the test run: a session that ends
early (``-x``, ``--maxfail``, ``pytest.exit``, SIGINT) must not wait for it, the bytes
already fetched stay as partial files, and the next run continues them with a ``Range``
request (also after SIGTERM). Nothing is fetched when no test will run.

Exit times are measured from a time stamp the test process writes at the moment of the
failure or just before the signal, with a generous bound (12 s; a whole transfer takes
~32 s).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pytest_ckpts import load_manifest
from pytest_ckpts.cache import Cache
from pytest_ckpts.store import Store
from pytest_ckpts.testing import LocalHub
from tests.helpers import SMALL, dead_endpoint, make_manifest

pytest_plugins = ["pytester"]

SIZE = 1024 * 1024
RATE = 32 * 1024  # bytes/s per response: one file takes ~32 s
NAMES = ("a", "b", "c", "d")
#: seconds from the failure / signal to the exit of the process: the issue asks for 5 s;
#: measured here ~1-3 s, up to 7 s when the machine is loaded; waiting for the prefetches
#: (before the fix) took the whole transfer, ~32 s
BOUND = 12.0

WAIT_FOR_BYTES = """
import glob, os, time

def wait_for_partial_bytes():
    # until some prefetch has written bytes to a partial file (at most 20 s)
    for _ in range(400):
        if any(os.path.getsize(p) > 0 for p in glob.glob("**/.*.incomplete", recursive=True)
               if os.path.exists(p)):
            return
        time.sleep(0.05)
    raise AssertionError("no partial bytes after 20 s")

def stamp():
    with open("stamp", "w") as f:
        f.write(repr(time.time()))
"""

EACH = "".join(
    f"""
@pytest.mark.requires_checkpoints("{n}")
def test_each_{n}(checkpoints):
    assert checkpoints["{n}"].path.read_bytes().endswith(b"{n}")
"""
    for n in NAMES
)


@pytest.fixture
def files() -> dict[str, bytes]:
    return {n: os.urandom(SIZE) + n.encode() for n in NAMES}


@pytest.fixture
def slow_hub(hub: LocalHub, pytester: pytest.Pytester, files: dict[str, bytes]) -> LocalHub:
    make_manifest(pytester.path, hub, files, pinned=True)
    hub.faults.slow(bytes_per_second=RATE, route="file")
    return hub


def write_tests(pytester: pytest.Pytester, first: str, header: str = "") -> None:
    body = "import pytest\n" + header + WAIT_FOR_BYTES + textwrap.dedent(first) + EACH
    pytester.makepyfile(test_it=body)


def spawn(pytester: pytest.Pytester, *args: str) -> subprocess.Popen[bytes]:
    """``pytest`` in a process of its own, with this plugin (and xdist for ``-n``) only:
    other plugins' start-up and summaries (hypothesis imports itself in its terminal
    summary: seconds on a loaded machine) would blur the times measured here."""
    plugins = ["-p", "ckpts", *(["-p", "xdist"] if "-n" in args else [])]
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *plugins, *args],
        cwd=pytester.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
    )


def finish(proc: subprocess.Popen[bytes]) -> tuple[int, str, float]:
    """Wait for the process (at most 120 s): return code, output, exit time."""
    out, _ = proc.communicate(timeout=120)
    return proc.returncode, out.decode(errors="replace"), time.time()


def partials(root: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in root.rglob(".*.incomplete")}


def stamped(root: Path) -> float:
    return float((root / "stamp").read_text())


def assert_second_run_continues(
    pytester: pytest.Pytester, hub: LocalHub, files: dict[str, bytes], kept: dict[str, int]
) -> None:
    """The next run (no throttle) asks for the rest of each partial file with Range.

    First, not on the clock: the run that ended did not wait for its transfers (each
    takes ~32 s): the hub sent no file (SIZE + 1 bytes) whole, and partial files are left."""
    gets = hub.stats.select("GET", route="file")
    assert gets
    assert all(r.bytes_sent <= SIZE for r in gets), [(r.path, r.bytes_sent) for r in gets]
    kept = {name: size for name, size in kept.items() if size}  # a kill can leave 0 bytes
    assert kept
    hub.faults.clear()
    hub.stats.reset()
    proc = spawn(pytester, "-k", "test_each")
    code, out, _ = finish(proc)
    assert code == 0, out
    ranged = [r for r in hub.stats.select("GET", route="file") if r.range]
    assert len(ranged) >= len(kept), [(r.path, r.range) for r in hub.stats.requests]
    starts = sorted(int(r.range.removeprefix("bytes=").rstrip("-")) for r in ranged if r.range)
    assert starts == sorted(kept.values())  # each from where the partial file ends
    full = sum(len(b) for b in files.values())
    assert hub.stats.bytes_sent("file") < full  # the kept bytes were not fetched again
    assert partials(pytester.path) == {}


# --------------------------------------------------------------------------- early end


@pytest.mark.parametrize(
    "args", [["-x"], ["--maxfail=1"], ["-x", "-n", "2"]], ids=["x", "maxfail", "x-xdist"]
)
def test_a_failing_run_with_x_does_not_wait_for_prefetches(
    pytester: pytest.Pytester, slow_hub: LocalHub, files: dict[str, bytes], args: list[str]
) -> None:
    """Measured on main: `pytest -x` waited 63 s for 4 prefetches of 300 MB."""
    group = ""
    if "-n" in args:  # every test on one worker: the other one only prefetches, and ends
        group = 'pytestmark = pytest.mark.xdist_group("all")\n'
        args = [*args, "--dist", "loadgroup"]
    write_tests(
        pytester,
        """
        def test_first_fails():
            wait_for_partial_bytes()
            stamp()
            assert False
        """,
        header=group,
    )
    code, out, ended = finish(spawn(pytester, *args))
    assert code == (pytest.ExitCode.INTERRUPTED if "-n" in args else 1), out  # xdist: 2
    assert ended - stamped(pytester.path) < BOUND, out
    kept = partials(pytester.path)
    assert_second_run_continues(pytester, slow_hub, files, kept)


def test_pytest_exit_does_not_wait_for_prefetches(
    pytester: pytest.Pytester, slow_hub: LocalHub, files: dict[str, bytes]
) -> None:
    write_tests(
        pytester,
        """
        def test_first_exits():
            wait_for_partial_bytes()
            stamp()
            pytest.exit("enough", returncode=3)
        """,
    )
    code, out, ended = finish(spawn(pytester))
    assert code == 3, out
    assert ended - stamped(pytester.path) < BOUND, out
    assert_second_run_continues(pytester, slow_hub, files, partials(pytester.path))


@pytest.mark.parametrize(
    ("sig", "prefetch"),
    [(signal.SIGINT, "4"), (signal.SIGTERM, "4"), (signal.SIGINT, "0")],
    ids=["SIGINT", "SIGTERM", "SIGINT-no-prefetch"],
)
def test_a_signal_ends_the_run_and_the_next_run_continues(
    pytester: pytest.Pytester,
    slow_hub: LocalHub,
    files: dict[str, bytes],
    sig: signal.Signals,
    prefetch: str,
) -> None:
    """Measured on main: Ctrl-C waited 54 s; after SIGTERM the next run began at byte 0.
    Without prefetch the test's own download (main thread) keeps its bytes too."""
    pytester.makepyfile(test_it="import pytest\n" + EACH)
    proc = spawn(pytester, "--ckpts-prefetch", prefetch)
    deadline = time.monotonic() + 60
    while not any(partials(pytester.path).values()):
        assert proc.poll() is None
        assert time.monotonic() < deadline
        time.sleep(0.05)
    sent = time.time()
    proc.send_signal(sig)
    code, out, ended = finish(proc)
    assert ended - sent < BOUND, out
    if sig == signal.SIGINT:
        assert code == pytest.ExitCode.INTERRUPTED, out
    else:
        assert code == -signal.SIGTERM
    assert_second_run_continues(pytester, slow_hub, files, partials(pytester.path))


# --------------------------------------------------------------------------- no tests


@pytest.mark.parametrize(
    "args",
    [["--collect-only"], ["--setup-plan"], ["--fixtures"], ["-k", "no_such_test"]],
    ids=["collect-only", "setup-plan", "fixtures", "empty-selection"],
)
def test_nothing_is_fetched_when_no_test_will_run(
    pytester: pytest.Pytester, hub: LocalHub, files: dict[str, bytes], args: list[str]
) -> None:
    """Measured on main: `pytest --collect-only` downloaded 1.26 GB (5 GETs)."""
    make_manifest(pytester.path, hub, files)
    pytester.makepyfile(test_it="import pytest\n" + EACH)
    result = pytester.runpytest("-p", "no:cacheprovider", *args)
    assert result.ret in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED)
    assert hub.stats.count("GET", route="file") == 0
    assert hub.stats.request_count == 0
    assert partials(pytester.path) == {}


# --------------------------------------------------------------------------- partial files


def _partial_path(project: Path, name: str) -> tuple[Store, Path]:
    manifest = load_manifest(project / "checkpoints" / "checkpoints.yaml")
    store = Store(manifest)
    spec = manifest.get(name)
    assert spec.revision is not None
    return store, Cache(store.layout.root).incomplete_path(spec, spec.revision)


def test_a_partial_file_is_continued_from_where_it_ends(
    project: Path, hub: LocalHub, files: dict[str, bytes]
) -> None:
    make_manifest(project, hub, files, pinned=True)
    store, part = _partial_path(project, "a")
    part.parent.mkdir(parents=True)
    part.write_bytes(files["a"][:300_000])
    ckpt = store.resolve(store.manifest.get("a"))
    assert ckpt.path.read_bytes() == files["a"]
    assert [r.range for r in hub.stats.select("GET", route="file")] == ["bytes=300000-"]
    assert hub.stats.bytes_sent("file") == len(files["a"]) - 300_000
    assert not part.exists()


@pytest.mark.parametrize("extra", [0, 10], ids=["whole-file", "longer-than-the-file"])
def test_a_partial_file_the_hub_cannot_continue_is_fetched_again(
    project: Path, hub: LocalHub, files: dict[str, bytes], extra: int
) -> None:
    """A partial as long as the file (killed before the rename) or longer: 416, start over."""
    make_manifest(project, hub, files, pinned=True)
    store, part = _partial_path(project, "a")
    part.parent.mkdir(parents=True)
    part.write_bytes(files["a"] + b"x" * extra)
    ckpt = store.resolve(store.manifest.get("a"))
    assert ckpt.path.read_bytes() == files["a"]
    gets = hub.stats.select("GET", route="file")
    assert [(r.status, r.range is None) for r in gets] == [(416, False), (200, True)]


def test_a_corrupt_partial_file_is_caught_by_the_checksum_and_fetched_again(
    project: Path, hub: LocalHub, files: dict[str, bytes]
) -> None:
    make_manifest(project, hub, files, pinned=True)
    store, part = _partial_path(project, "a")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\0" * 1000)  # not a prefix of the file
    ckpt = store.resolve(store.manifest.get("a"))
    assert ckpt.path.read_bytes() == files["a"]
    assert [r.range for r in hub.stats.select("GET", route="file")] == ["bytes=1000-", None]


DATA = os.urandom(48 * 1024) + b"ckpt"


FILES = {name: os.urandom(16 * 1024) + name.encode() for name in ("vae", "ldm")}


def test_prefetch_downloads_each_file_once_with_the_same_outcomes(
    pytester: pytest.Pytester, hub: LocalHub, plugin_args: list[str]
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
    result = pytester.runpytest("-p", "no:cacheprovider", "--ckpts-prefetch", "4", *plugin_args)
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


def test_a_warm_run_starts_no_prefetch_thread(pytester: pytest.Pytester, hub: LocalHub) -> None:
    """Prefetch handed every checkpoint to its thread pool even when every file was
    stamped: 1000 futures, 4 threads fighting the main thread for the GIL, a warm run
    1.56x a plain hf_hub_download fixture. Warm pinned entries are now decided on the
    main thread from their stamps; the pool gets only what is missing."""
    make_manifest(pytester.path, hub, SMALL, pinned=True)
    names = list(SMALL)
    pytester.makeconftest(
        textwrap.dedent(
            """
            import threading

            SEEN = set()

            def pytest_runtest_call(item):
                SEEN.update(t.name for t in threading.enumerate())

            def pytest_terminal_summary(terminalreporter):
                prefetch = sorted(n for n in SEEN if n.startswith("ckpts-prefetch"))
                terminalreporter.write_line(f"prefetch threads: {len(prefetch)}")
            """
        )
    )
    pytester.makepyfile(
        test_it=textwrap.dedent(
            f"""
            import pytest

            @pytest.mark.parametrize(
                "name",
                [pytest.param(n, marks=pytest.mark.requires_checkpoints(n)) for n in {names!r}],
            )
            def test_one(checkpoints, name):
                assert checkpoints[name].path.is_file()
            """
        )
    )
    cold = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly")
    cold.assert_outcomes(passed=len(names))
    assert "prefetch threads: 0" not in cold.stdout.str()  # the cold run does use the pool
    hub.stats.reset()
    warm = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly")
    warm.assert_outcomes(passed=len(names))
    warm.stdout.fnmatch_lines(["prefetch threads: 0", f"0 downloaded (*), {len(names)} cached*"])
    assert hub.stats.request_count == 0
