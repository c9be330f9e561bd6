"""Per-test checkpoint data in CI test reports: junit XML and pytest-json-report.

Each test that used a checkpoint carries ``ckpts.<name>.status`` / ``.sha256`` /
``.commit`` (and ``.reason`` when there is one) as pytest user properties, with and
without pytest-xdist, so a test served a ``stale`` copy no longer looks like a plain pass.
"""

from __future__ import annotations

import hashlib
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pytest_ckpts.testing import LocalHub
from tests.helpers import REPO, make_manifest

VAE = b"vae-weights" * 3000
LDM = b"ldm-weights" * 2000
SHA = {n: hashlib.sha256(d).hexdigest() for n, d in (("vae", VAE), ("ldm", LDM))}

TESTS = """
import pytest

@pytest.mark.requires_checkpoints("vae")
def test_marked(checkpoints):
    assert checkpoints["vae"].path.is_file()

def test_lazy(checkpoint):
    assert checkpoint("ldm").path.is_file()

def test_plain():
    pass
"""


def _properties(xml: Path) -> dict[str, dict[str, str]]:
    """test name -> {property name: value} from a junit XML file."""
    out: dict[str, dict[str, str]] = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        props = {p.get("name", ""): p.get("value", "") for p in case.iter("property")}
        out[case.get("name", "")] = props
    return out


def _inprocess(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-p", "no:cacheprovider", "-p", "no:randomly", *args)


def test_junit_xml_carries_status_sha256_and_commit(
    pytester: pytest.Pytester, hub: LocalHub, plugin_args: list[str]
) -> None:
    """The first run downloads, the second finds both cached.

    Under xdist every worker prefetches the marked checkpoints of the whole selection (it
    does not know which tests it will be sent), so the worker that runs ``test_marked``
    may find ``vae`` already fetched by the other one and truthfully say ``cached`` (seen
    once in CI). Prefetch is off in that run, so the worker that runs a test is the one
    that downloads its checkpoint; the prefetch case is the next test.
    """
    make_manifest(pytester.path, hub, {"vae": VAE, "ldm": LDM}, pinned=True)
    commit = hub.commit_sha(REPO)
    pytester.makepyfile(test_it=TESTS)
    xml = pytester.path / "junit.xml"
    args = [*plugin_args, "--ckpts-prefetch=0"] if plugin_args else []
    _inprocess(pytester, *args, f"--junitxml={xml}").assert_outcomes(passed=3)
    props = _properties(xml)
    assert props["test_marked"] == {
        "ckpts.vae.status": "downloaded",
        "ckpts.vae.sha256": SHA["vae"],
        "ckpts.vae.commit": commit,
    }
    assert props["test_lazy"] == {
        "ckpts.ldm.status": "downloaded",
        "ckpts.ldm.sha256": SHA["ldm"],
        "ckpts.ldm.commit": commit,
    }
    assert props["test_plain"] == {}  # no checkpoint, no properties
    _inprocess(pytester, *plugin_args, f"--junitxml={xml}").assert_outcomes(passed=3)
    assert _properties(xml)["test_marked"]["ckpts.vae.status"] == "cached"


def test_xdist_prefetch_status_is_what_this_worker_saw(
    pytester: pytest.Pytester, hub: LocalHub
) -> None:
    """With prefetch under xdist, a checkpoint is downloaded once by whichever worker gets
    its lock first; the test's status is ``downloaded`` or ``cached`` accordingly, and the
    run's summary counts one download."""
    pytest.importorskip("xdist")
    make_manifest(pytester.path, hub, {"vae": VAE, "ldm": LDM}, pinned=True)
    pytester.makepyfile(test_it=TESTS)
    xml = pytester.path / "junit.xml"
    result = _inprocess(pytester, "-n", "2", f"--junitxml={xml}")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["2 downloaded (*), 0 cached*", "downloaded vae: *"])
    props = _properties(xml)["test_marked"]
    assert props["ckpts.vae.status"] in ("downloaded", "cached")
    assert props["ckpts.vae.sha256"] == SHA["vae"]
    assert hub.stats.bodies_served == 2  # vae and ldm once each, whichever worker


def test_stale_copy_shows_stale_in_junit_xml(
    pytester: pytest.Pytester, hub: LocalHub, plugin_args: list[str]
) -> None:
    """A branch resolved once, then the hub goes away: the copy is served ``stale``."""
    make_manifest(pytester.path, hub, {"vae": VAE, "ldm": LDM})  # revision: main
    commit = hub.commit_sha(REPO)
    pytester.makepyfile(test_it=TESTS)
    xml = pytester.path / "junit.xml"
    _inprocess(pytester, *plugin_args, f"--junitxml={xml}").assert_outcomes(passed=3)
    hub.stop()
    result = _inprocess(pytester, *plugin_args, f"--junitxml={xml}", "--ckpts=require")
    result.assert_outcomes(passed=3)
    props = _properties(xml)
    assert props["test_marked"]["ckpts.vae.status"] == "stale"
    assert props["test_marked"]["ckpts.vae.commit"] == commit
    assert props["test_marked"]["ckpts.vae.sha256"] == SHA["vae"]
    assert "hub failed" in props["test_marked"]["ckpts.vae.reason"]
    assert props["test_lazy"]["ckpts.ldm.status"] == "stale"
    text = xml.read_text()
    assert 'name="ckpts.vae.status" value="stale"' in text


def test_skipped_checkpoints_say_so(pytester: pytest.Pytester, hub: LocalHub) -> None:
    make_manifest(pytester.path, hub, {"vae": VAE, "ldm": LDM}, pinned=True)
    commit = hub.commit_sha(REPO)
    pytester.makepyfile(test_it=TESTS)
    xml = pytester.path / "junit.xml"
    _inprocess(pytester, f"--junitxml={xml}", "--ckpts=offline").assert_outcomes(
        passed=1, skipped=2
    )
    props = _properties(xml)
    assert props["test_marked"]["ckpts.vae.status"] == "skipped"
    assert props["test_marked"]["ckpts.vae.commit"] == commit  # pinned: known without a hub
    assert "not cached" in props["test_marked"]["ckpts.vae.reason"]
    assert props["test_lazy"]["ckpts.ldm.status"] == "skipped"
    _inprocess(pytester, f"--junitxml={xml}", "--ckpts=skip").assert_outcomes(passed=1, skipped=2)
    props = _properties(xml)
    assert props["test_marked"]["ckpts.vae.status"] == "skipped"  # skipped at collection
    assert "downloads disabled" in props["test_marked"]["ckpts.vae.reason"]


def test_mismatch_is_failed_with_expected_sha(pytester: pytest.Pytester, hub: LocalHub) -> None:
    make_manifest(pytester.path, hub, {"vae": VAE, "ldm": LDM}, sha={"vae": "0" * 64})
    pytester.makepyfile(test_it=TESTS)
    xml = pytester.path / "junit.xml"
    pytester.runpytest("-p", "no:cacheprovider", f"--junitxml={xml}").assert_outcomes(
        passed=2, errors=1
    )
    props = _properties(xml)["test_marked"]
    assert props["ckpts.vae.status"] == "failed"
    assert props["ckpts.vae.sha256"] == "0" * 64
    assert "Checksum mismatch" in props["ckpts.vae.reason"]


def test_pytest_json_report_carries_them(pytester: pytest.Pytester, hub: LocalHub) -> None:
    pytest.importorskip("pytest_jsonreport")
    make_manifest(pytester.path, hub, {"vae": VAE, "ldm": LDM}, pinned=True)
    pytester.makepyfile(test_it=TESTS)
    report = pytester.path / "report.json"
    _inprocess(pytester, "--json-report", f"--json-report-file={report}").assert_outcomes(passed=3)
    tests = {t["nodeid"].split("::")[-1]: t for t in json.loads(report.read_text())["tests"]}
    props = {k: v for d in tests["test_marked"]["user_properties"] for k, v in d.items()}
    assert props["ckpts.vae.status"] == "downloaded"
    assert props["ckpts.vae.sha256"] == SHA["vae"]
    assert "user_properties" not in tests["test_plain"]
