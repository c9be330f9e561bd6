"""Plugin hardening through pytester: secrets in tracebacks, mismatches once per run,
skip reasons that name the right checkpoint and point at the test, library calls that
obey the run's policy.

Each test names, in its docstring, the defect of the earlier plugin it guards against.
"""

from __future__ import annotations

import hashlib
import os
import re
import textwrap
from collections.abc import Callable

import pytest

from pytest_ckpts.testing import LocalHub
from tests.helpers import dead_endpoint, make_manifest

pytest_plugins = ["pytester"]

FILES = {name: os.urandom(16 * 1024) + name.encode() for name in ("vae", "dec", "enc")}
SECRET = "hf_" + "Zq7" * 10  # what a user token looks like


# --------------------------------------------------------------------------- tokens

SECRET_TESTS = textwrap.dedent(
    """
    import pytest
    from pytest_ckpts import get_checkpoint

    def test_library_call_raises():
        get_checkpoint("vae")

    @pytest.mark.requires_checkpoints("vae")
    def test_marked(checkpoints):
        pass

    def test_fixture(checkpoint):
        checkpoint("vae")
    """
)


def _assert_no_secret(pytester: pytest.Pytester, result: pytest.RunResult) -> None:
    xml = (pytester.path / "junit.xml").read_text("utf-8")
    text = result.stdout.str() + result.stderr.str()
    assert "Traceback" in text or "def test_library_call_raises" in text  # locals were shown
    assert SECRET not in text
    assert SECRET not in xml
    assert SECRET[3:15] not in text + xml  # not even a piece of it


@pytest.mark.parametrize("full_trace", [False, True], ids=["tb-long", "full-trace"])
def test_refused_token_never_shown_with_showlocals(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, full_trace: bool
) -> None:
    """``pytest -l`` printed the locals of the earlier store's frames, among them
    ``token = hf_...``, in the terminal and in the JUnit XML. The token now lives only
    in an auth object whose repr hides it."""
    with LocalHub(token="hf_the_right_one") as hub:  # our token is refused with a 401
        make_manifest(pytester.path, hub, FILES)
        monkeypatch.setenv("HF_TOKEN", SECRET)
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)  # the machine's endpoint: token is sent
        pytester.makepyfile(test_it=SECRET_TESTS)
        extra = ["--full-trace"] if full_trace else ["--tb=long"]
        result = pytester.runpytest_subprocess(
            "-p", "no:cacheprovider", "-l", "-rA", "--junitxml=junit.xml", *extra, timeout=120
        )
        assert hub.stats.count(path_contains="/api/models/") >= 1  # the token was sent
    result.assert_outcomes(failed=1, skipped=2)
    assert "401" in result.stdout.str()
    _assert_no_secret(pytester, result)


@pytest.mark.parametrize("fault", ["503", "reset"])
def test_download_failure_never_shows_token(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    """Same, for a download that fails after the probe accepted the token (5xx until the
    retry budget is spent, or connections reset mid-body)."""
    with LocalHub(token=SECRET) as hub:
        make_manifest(pytester.path, hub, FILES, pinned=True)
        monkeypatch.setenv("HF_TOKEN", SECRET)
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        if fault == "503":
            hub.faults.fail_next(1000, 503, path_contains="/resolve/")
        else:
            hub.faults.drop_next(1000, after_bytes=100, path_contains="/resolve/")
        pytester.makepyfile(test_it=SECRET_TESTS)
        result = pytester.runpytest_subprocess(
            "-p",
            "no:cacheprovider",
            "-l",
            "--tb=long",
            "-rA",
            "--junitxml=junit.xml",
            "--ckpts=require",
            "--ckpts-retry-budget=1",
            timeout=120,
        )
        assert hub.stats.count(path_contains="/resolve/") >= 1
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert "INTERNALERROR" not in result.stdout.str()
    _assert_no_secret(pytester, result)


# --------------------------------------------------------------------------- mismatch once

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


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_checksum_mismatch_downloaded_once_per_run(
    pytester: pytest.Pytester, hub: LocalHub, xdist: list[str]
) -> None:
    """Every test using a checkpoint whose hub file does not match the manifest
    downloaded it again (3 tests, 3 downloads of a possibly large file), and the error
    was printed with "During handling of the above exception" (twice). Now the first
    mismatch is remembered for the run, in every process of it."""
    make_manifest(pytester.path, hub, FILES, sha={"vae": "0" * 64})
    pytester.makepyfile(test_it=MISMATCH_TESTS)
    hub.faults.delay(2.0, path_contains="/resolve/")  # workers overlap on the download
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *xdist, timeout=120)
    result.assert_outcomes(errors=2, failed=1)
    assert hub.stats.bodies_served == 1
    out = result.stdout.str()
    assert "During handling of the above exception" not in out
    assert "direct cause of the following exception" not in out
    assert out.count("Checksum mismatch for checkpoint 'vae'") >= 3
    assert "not downloaded again" in out
    assert "Traceback" not in out


# --------------------------------------------------------------------------- skip reasons

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


@pytest.mark.parametrize("pinned", [False, True], ids=["branch", "pinned"])
def test_reused_probe_error_names_each_checkpoints_own_path(
    pytester: pytest.Pytester, run: Callable[..., pytest.RunResult], pinned: bool
) -> None:
    """The probe answer is shared by every entry of a repo and revision; the earlier
    store reused its error text, so 'dec' was skipped "from ... path 'weights/enc.ckpt'"
    (whichever entry asked first)."""
    endpoint = dead_endpoint()
    make_manifest(pytester.path, None, FILES, endpoint=endpoint)
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
    make_manifest(pytester.path, None, FILES, endpoint=dead_endpoint())
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


# --------------------------------------------------------------------------- library calls

LIBRARY_TESTS = textwrap.dedent(
    """
    import pytest
    from pytest_ckpts import get_checkpoint

    @pytest.mark.requires_checkpoints
    def test_library():
        path = get_checkpoint("vae")
        print("HANDED", path)
    """
)


def test_library_call_obeys_strict(pytester: pytest.Pytester, hub: LocalHub) -> None:
    """``get_checkpoint()`` inside a ``requires_checkpoints`` test ignored
    ``--ckpts-strict`` and handed out an entry with no sha256 (the marker's fixtures
    failed it)."""
    make_manifest(pytester.path, hub, FILES, sha={"vae": None})
    pytester.makepyfile(test_it=LIBRARY_TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider", "-s", "--ckpts-strict")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*'vae' has no sha256*--ckpts-strict*"])
    assert "HANDED" not in result.stdout.str()
    assert hub.stats.bodies_served == 0
    # without --ckpts-strict the same call gets the file (and a warning)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s")
    result.assert_outcomes(passed=1, warnings=1)
    assert "HANDED" in result.stdout.str()


@pytest.mark.parametrize(
    ("env", "want"),
    [
        ({"PYTEST_CKPTS_MODE": "skip"}, "PYTEST_CKPTS_MODE"),
        ({"SKIP_CHECKPOINT_DOWNLOAD": "true"}, "SKIP_CHECKPOINT_DOWNLOAD=true"),
    ],
)
def test_library_skip_message_names_the_real_switch(
    pytester: pytest.Pytester,
    hub: LocalHub,
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    want: str,
) -> None:
    """With ``PYTEST_CKPTS_MODE=skip`` the library said downloads were skipped because of
    ``SKIP_CHECKPOINT_DOWNLOAD=true``, a variable nobody had set."""
    make_manifest(pytester.path, hub, FILES)
    pytester.makepyfile(test_it=LIBRARY_TESTS)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    result = pytester.runpytest("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(skipped=1)
    lines = _skipped_lines(result)
    assert len(lines) == 1
    assert want in lines[0]
    other = "SKIP_CHECKPOINT_DOWNLOAD" if want == "PYTEST_CKPTS_MODE" else "PYTEST_CKPTS_MODE"
    assert other not in lines[0]
    assert hub.stats.request_count == 0


def test_unverified_sha_matches_hub(pytester: pytest.Pytester, hub: LocalHub) -> None:
    """Control for the strict test: the file the library hands out is the hub's."""
    make_manifest(pytester.path, hub, FILES)
    pytester.makepyfile(
        test_it=f"""
        import hashlib, pytest
        from pytest_ckpts import get_checkpoint

        @pytest.mark.requires_checkpoints
        def test_library():
            data = get_checkpoint("vae").read_bytes()
            assert hashlib.sha256(data).hexdigest() == {hashlib.sha256(FILES["vae"]).hexdigest()!r}
        """
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_plugin_run_after_verify_mismatch_downloads_again(
    pytester: pytest.Pytester, hub: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After ``pytest-ckpts verify`` reported a MISMATCH, the next pytest run must not
    hand out the file on the strength of an old stamp: it hashes, finds the damage and
    downloads the file again."""
    import io

    from pytest_ckpts.cli import main

    make_manifest(pytester.path, hub, FILES, pinned=True)
    pytester.makepyfile(
        test_it=f"""
        import hashlib, pytest

        @pytest.mark.requires_checkpoints("vae")
        def test_vae(checkpoints):
            data = checkpoints["vae"].path.read_bytes()
            assert hashlib.sha256(data).hexdigest() == {hashlib.sha256(FILES["vae"]).hexdigest()!r}
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
