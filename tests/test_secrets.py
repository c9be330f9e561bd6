"""No token and no password in anything the project prints or writes (docs/how-to/ci.md "Tokens").

The local hub plays a hostile hub that echoes the ``Authorization`` header in its error
message, its body and its status line; the endpoint carries a password in its userinfo
(``HF_ENDPOINT`` and ``config.endpoint``). Every output a CI job keeps is grepped: the
terminal with ``-l`` (traceback locals), junit XML, the JSON report, the step summary and
``pytest-ckpts fetch``.
"""

from __future__ import annotations

import base64
import io
import json
import textwrap
from pathlib import Path

import pytest

from pytest_ckpts import CheckpointDownloadError, load_manifest
from pytest_ckpts._redact import redact, redact_url, secrets_of, split_userinfo
from pytest_ckpts.cli import main
from pytest_ckpts.store import Store
from pytest_ckpts.testing import LocalHub
from tests.helpers import REPO, make_manifest
from tests.plugin.suites import SMALL_FILES

pytest_plugins = ["pytester"]

TOKEN = "hf_SeCrEtToKeN0123456789abcdefghijklmn"
PASSWORD = "hunter2-pw"
BASIC = base64.b64encode(f"ci-user:{PASSWORD}".encode()).decode()
LEAKS = (TOKEN, TOKEN[3:], PASSWORD, BASIC)
GOOD = b"good checkpoint bytes" * 100
BAD = b"bad checkpoint bytes" * 100

TESTS = """
import pytest
from pytest_ckpts import get_checkpoint

@pytest.mark.requires_checkpoints("good")
def test_good(checkpoints):
    assert checkpoints["good"].path.exists()

@pytest.mark.requires_checkpoints("bad")
def test_bad_marked(checkpoints):
    pass

def test_bad_unmarked():
    get_checkpoint("bad")
"""


def _with_userinfo(endpoint: str) -> str:
    return endpoint.replace("http://", f"http://ci-user:{PASSWORD}@")


@pytest.fixture
def token_hub() -> LocalHub:
    with LocalHub(token=TOKEN) as hub:
        yield hub


def _assert_clean(where: str, text: str) -> None:
    for secret in LEAKS:
        assert secret not in text, f"{secret!r} leaked into {where}"


# --------------------------------------------------------------------------- helpers


def test_redact_url_hides_the_whole_userinfo() -> None:
    assert redact_url("http://u:pw@host:8/x?y=1") == "http://***@host:8/x?y=1"
    assert redact_url("https://TOKEN@host/") == "https://***@host/"
    assert redact_url("http://host/a@b") == "http://host/a@b"  # '@' in the path is not userinfo
    assert split_userinfo("https://u%40x:p%3Aw@h/a") == ("https://h/a", "u@x", "p:w")


def test_redact_scrubs_known_secrets_and_credential_shapes() -> None:
    secrets = secrets_of(f"http://ci-user:{PASSWORD}@h", TOKEN)
    text = (
        f"401 you sent Authorization: Bearer {TOKEN} (Basic {BASIC}) at "
        f"http://ci-user:{PASSWORD}@h/x, again {PASSWORD} and {TOKEN[3:]}"
    )
    out = redact(text, secrets)
    _assert_clean("redact()", out)
    assert "Bearer ***" in out
    assert "http://***@h/x" in out
    # shapes alone, without knowing the secrets
    assert redact(f"Bearer {TOKEN}") == "Bearer ***"
    assert redact(f"echo {TOKEN} end") == "echo hf_*** end"
    # ordinary words survive
    hint = "the repo needs a token with read access: set HF_TOKEN"
    assert redact(hint, secrets) == hint


# --------------------------------------------------------------------------- a run


@pytest.mark.parametrize("xdist", [["-p", "no:xdist"], ["-n", "2"]], ids=["serial", "xdist"])
def test_no_secret_in_any_output_of_a_run(
    pytester: pytest.Pytester,
    token_hub: LocalHub,
    monkeypatch: pytest.MonkeyPatch,
    xdist: list[str],
) -> None:
    endpoint = _with_userinfo(token_hub.endpoint)
    make_manifest(pytester.path, token_hub, {"good": GOOD, "bad": BAD}, endpoint=endpoint)
    token_hub.faults.fail_next(100, 403, path_contains="weights/bad.ckpt", echo_auth=True)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    summary = pytester.path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    pytester.makepyfile(test_it=TESTS)
    report, junit = pytester.path / "report.json", pytester.path / "junit.xml"
    result = pytester.runpytest(
        "-p", "no:cacheprovider", "-l", "-rA", "-v", *xdist,
        f"--ckpts-report={report}", f"--junitxml={junit}",
    )  # fmt: skip
    result.assert_outcomes(passed=1, skipped=1, failed=1)
    # the hostile answers really came, with the credentials in them
    assert token_hub.stats.count(path_contains="weights/bad.ckpt") >= 2
    out = result.stdout.str() + result.stderr.str()
    assert "you sent Authorization: Bearer ***" in out  # received, and scrubbed
    assert "http://***@127.0.0.1" in out  # the endpoint is named, without its userinfo
    outputs = {
        "terminal": out,
        "junit": junit.read_text(),
        "report": report.read_text(),
        "step summary": summary.read_text(),
    }
    for where, text in outputs.items():
        _assert_clean(where, text)
    rows = {r["name"]: r for r in json.loads(outputs["report"])["checkpoints"]}
    assert rows["good"]["status"] == "downloaded"
    assert "Bearer ***" in rows["bad"]["reason"]


def test_library_error_and_its_failure_record_are_scrubbed(
    project: Path, token_hub: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = _with_userinfo(token_hub.endpoint)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    manifest = load_manifest(make_manifest(project, token_hub, {"bad": BAD}, endpoint=endpoint))
    token_hub.faults.fail_next(100, 401, route="revision", echo_auth=True)
    store = Store(manifest)
    with pytest.raises(CheckpointDownloadError) as info:
        store.resolve(manifest.get("bad"))
    texts = [str(info.value), repr(info.value), repr(store.hub), repr(store)]
    texts += [repr(v) for v in store.hub.probes_to_json().values()]
    for text in texts:
        _assert_clean("the error and the objects holding it", text)
    assert "Bearer ***" in str(info.value)


def test_cli_fetch_prints_no_secret(
    project: Path,
    token_hub: LocalHub,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    endpoint = _with_userinfo(token_hub.endpoint)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    path = make_manifest(project, token_hub, {"good": GOOD, "bad": BAD}, endpoint=endpoint)
    token_hub.faults.fail_next(100, 403, path_contains="weights/bad.ckpt", echo_auth=True)
    out = io.StringIO()
    code = main(["--manifest", str(path), "fetch", "--quiet"], out=out)
    err = capsys.readouterr()
    text = out.getvalue() + err.out + err.err
    assert code == 1
    assert "good" in text
    assert "FAILED" in text
    assert "Bearer ***" in text
    _assert_clean("pytest-ckpts fetch", text)
    # the probe answering with the credentials, too
    token_hub.faults.clear()
    token_hub.faults.fail_next(100, 401, route="revision", echo_auth=True)
    out = io.StringIO()
    main(["--manifest", str(path), "fetch", "--quiet", "--force", "good"], out=out)
    err = capsys.readouterr()
    text = out.getvalue() + err.out + err.err
    assert "Bearer ***" in text
    _assert_clean("pytest-ckpts fetch (probe)", text)
    assert REPO in text


def test_manifest_endpoint_userinfo_is_sent_as_basic_auth_and_never_shown(
    pytester: pytest.Pytester, hub: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An untrusted manifest endpoint gets no token; its own userinfo still authenticates
    (Basic, as the URL asks), and a hub echoing it back is scrubbed everywhere."""
    endpoint = _with_userinfo(hub.endpoint)
    make_manifest(pytester.path, hub, {"good": GOOD, "bad": BAD}, endpoint=endpoint)
    hub.faults.fail_next(100, 403, path_contains="weights/bad.ckpt", echo_auth=True)
    monkeypatch.setenv("HF_TOKEN", TOKEN)  # not sent: the manifest's endpoint is not trusted
    pytester.makepyfile(test_it=TESTS)
    report, junit = pytester.path / "report.json", pytester.path / "junit.xml"
    result = pytester.runpytest(
        "-p", "no:cacheprovider", "-l", "-rA", f"--ckpts-report={report}", f"--junitxml={junit}"
    )
    result.assert_outcomes(passed=1, skipped=1, failed=1)
    out = result.stdout.str() + result.stderr.str()
    assert "you sent Authorization: Basic ***" in out
    for where, text in {
        "terminal": out,
        "junit": junit.read_text(),
        "report": report.read_text(),
    }.items():
        _assert_clean(where, text)


SECRET = "hf_" + "Zq7" * 10  # what a user token looks like


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
        make_manifest(pytester.path, hub, SMALL_FILES)
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
        make_manifest(pytester.path, hub, SMALL_FILES, pinned=True)
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
