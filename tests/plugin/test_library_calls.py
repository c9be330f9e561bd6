"""Library calls inside a test follow the test's environment (docs/how-to/writing-tests.md "The library API").

``get_checkpoint()``, ``resolve_checkpoint()`` and ``fetch_tensors()`` called in a test
resolve their settings when they are called: the run's command-line options, then the
environment as it is now, then ini, then defaults; the manifest from the option, else
the environment, else ini, else discovery from the current directory. Only when that
gives the run's manifest, mode and cache directory does the call share the run's store,
summary and report; otherwise it behaves as outside pytest. Tested through the public
path only: real pytest runs (in-process and, with ``-n 2``, in subprocesses) against the
local hub.
"""

from __future__ import annotations

import hashlib
import json
import os
import textwrap
from pathlib import Path

import pytest

from pytest_ckpts.testing import LocalHub
from tests.helpers import dead_endpoint, make_manifest
from tests.plugin.suites import FILES, LIBRARY_TESTS, SMALL_FILES

pytest_plugins = ["pytester"]

OUTER = {name: os.urandom(8 * 1024) + f"outer-{name}".encode() for name in ("vae", "enc")}
OTHER = {name: os.urandom(8 * 1024) + f"other-{name}".encode() for name in ("vae", "only_other")}
RUN = ("-p", "no:cacheprovider", "-p", "no:randomly", "-p", "pytester", "-ra")

TESTS = '''
import os
from pathlib import Path

import pytest

from pytest_ckpts import (
    CheckpointDownloadError,
    CheckpointSkipped,
    fetch_tensors,
    get_checkpoint,
    resolve_checkpoint,
)

OTHER = Path(os.environ["OTHER_PROJECT"])


def test_shared_with_the_run():
    ckpt = resolve_checkpoint("vae")
    assert ckpt.path.read_bytes().endswith(b"outer-vae")


def test_kill_switch(monkeypatch):
    monkeypatch.setenv("SKIP_CHECKPOINT_DOWNLOAD", "true")
    with pytest.raises(CheckpointSkipped, match="SKIP_CHECKPOINT_DOWNLOAD=true"):
        get_checkpoint("enc")
    with pytest.raises(CheckpointSkipped, match="Cannot load checkpoint: enc"):
        fetch_tensors("enc", ["w"])


@pytest.mark.requires_checkpoints
def test_kill_switch_in_a_marked_test_is_a_skip(monkeypatch):
    monkeypatch.setenv("SKIP_CHECKPOINT_DOWNLOAD", "true")
    get_checkpoint("enc")


def test_offline(monkeypatch):
    monkeypatch.setenv("PYTEST_CKPTS_MODE", "offline")
    with pytest.raises(CheckpointSkipped, match="not cached"):
        get_checkpoint("enc")


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("PYTEST_CKPTS_CACHE_DIR", str(tmp_path / "elsewhere"))
    path = get_checkpoint("vae")
    assert path.is_relative_to(tmp_path / "elsewhere")
    assert path.read_bytes().endswith(b"outer-vae")


def test_chdir_into_another_project(monkeypatch):
    monkeypatch.chdir(OTHER / "checkpoints")
    assert get_checkpoint("vae").read_bytes().endswith(b"other-vae")
    assert get_checkpoint("only_other").is_relative_to(OTHER / "checkpoints")


def test_chdir_into_tmp_path_keeps_the_run(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert get_checkpoint("vae").read_bytes().endswith(b"outer-vae")


def test_manifest_from_the_environment(monkeypatch):
    monkeypatch.setenv("PYTEST_CKPTS_MANIFEST", str(OTHER / "checkpoints" / "checkpoints.yaml"))
    assert get_checkpoint("vae").read_bytes().endswith(b"other-vae")


def test_nested_run_without_the_plugin(pytester):
    manifest = (OTHER / "checkpoints" / "checkpoints.yaml").read_text()
    pytester.mkdir("checkpoints").joinpath("checkpoints.yaml").write_text(manifest)
    pytester.makepyfile(
        test_deep="""
        from pytest_ckpts import get_checkpoint

        def test_deep():
            assert get_checkpoint("vae").read_bytes().endswith(b"other-vae")
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:ckpts", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
'''


def _other_project(root: Path, hub: LocalHub) -> Path:
    """A second project, its own manifest naming another repo of the same hub."""
    hub.add_files("other/ckpts", {f"w/{n}.ckpt": data for n, data in OTHER.items()})
    entries = "".join(
        f'  {n}:\n    hf_path: w/{n}.ckpt\n    sha256: "{hashlib.sha256(d).hexdigest()}"\n'
        for n, d in OTHER.items()
    )
    path = root / "checkpoints" / "checkpoints.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(
        f"checkpoints:\n{entries}config:\n  hf_repo: other/ckpts\n"
        f'  cache_dir: "./checkpoints"\n  endpoint: {hub.endpoint}\n',
        encoding="utf-8",
    )
    return root


@pytest.fixture
def other(
    hub: LocalHub, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    root = _other_project(tmp_path_factory.mktemp("other"), hub)
    monkeypatch.setenv("OTHER_PROJECT", str(root))
    return root


def test_library_calls_follow_the_tests_environment(
    pytester: pytest.Pytester, hub: LocalHub, other: Path, plugin_args: list[str]
) -> None:
    make_manifest(pytester.path, hub, OUTER)
    pytester.makepyfile(test_lib=TESTS)
    run = pytester.runpytest_subprocess if plugin_args else pytester.runpytest_inprocess
    result = run(*RUN, "-v", "--ckpts-report=report.json", *plugin_args)
    result.assert_outcomes(passed=8, skipped=1)
    result.stdout.fnmatch_lines(
        ["*SKIPPED*Checkpoint download skipped (SKIP_CHECKPOINT_DOWNLOAD=true)*"]
    )
    result.stdout.no_fnmatch_line("*UsageError*")
    # the kill switch and offline mode never downloaded the outer project's "enc"
    assert hub.stats.count(method="GET", path_contains="weights/enc.ckpt") == 0
    assert not list((pytester.path / "checkpoints").rglob("enc.ckpt"))
    # only the calls the run shares are in its report; the others behaved as outside pytest
    rows = json.loads((pytester.path / "report.json").read_text())["checkpoints"]
    assert {r["name"] for r in rows} == {"vae"}
    assert list(other.joinpath("checkpoints").rglob("only_other.ckpt"))  # its own cache


def test_run_without_manifest_never_raises_a_usage_error(
    pytester: pytest.Pytester, other: Path
) -> None:
    """The run found no manifest: a test that moves into a project uses it; a test that
    finds none gets the library's own error, as a script would, never ``UsageError``."""
    pytester.makepyfile(
        test_lib=textwrap.dedent(
            """
            import os
            from pathlib import Path

            import pytest
            from pytest_ckpts import ManifestError, get_checkpoint

            def test_moves_into_a_project(monkeypatch):
                monkeypatch.chdir(os.environ["OTHER_PROJECT"])
                assert get_checkpoint("only_other").read_bytes().endswith(b"other-only_other")

            def test_no_manifest_anywhere():
                with pytest.raises(ManifestError, match="looked for checkpoints"):
                    get_checkpoint("vae")

            def test_fixture_without_manifest(checkpoint):
                checkpoint("vae")
            """
        )
    )
    result = pytester.runpytest_inprocess(*RUN)
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*checkpoint 'vae' requested but no manifest was found*"])
    result.stdout.no_fnmatch_line("*UsageError*")


def test_require_set_by_the_test_makes_a_hub_failure_an_error(
    pytester: pytest.Pytester, hub: LocalHub
) -> None:
    """A marked test's ``get_checkpoint()`` failure is a skip in ``auto``; the mode the
    call resolved (``PYTEST_CKPTS_MODE=require`` set by the test) makes it an error."""
    make_manifest(pytester.path, hub, OUTER)
    hub.stop()
    pytester.makepyfile(
        test_lib=textwrap.dedent(
            """
            import pytest
            from pytest_ckpts import get_checkpoint

            @pytest.mark.requires_checkpoints
            def test_auto():
                get_checkpoint("enc")

            @pytest.mark.requires_checkpoints
            def test_require(monkeypatch):
                monkeypatch.setenv("PYTEST_CKPTS_MODE", "require")
                get_checkpoint("enc")
            """
        )
    )
    result = pytester.runpytest_inprocess(*RUN)
    result.assert_outcomes(skipped=1, failed=1)
    result.stdout.fnmatch_lines(["FAILED test_lib.py::test_require - *CheckpointDownloadErro*"])


def test_seed_style_get_checkpoint_follows_the_policy(pytester: pytest.Pytester) -> None:
    make_manifest(pytester.path, None, FILES, endpoint=dead_endpoint())
    pytester.makepyfile(
        test_it="""
        import pytest
        from pytest_ckpts import get_checkpoint

        @pytest.mark.requires_checkpoints
        def test_seed_style():
            get_checkpoint("vae")

        def test_unmarked_raises():
            from pytest_ckpts import CheckpointDownloadError
            with pytest.raises(CheckpointDownloadError):
                get_checkpoint("vae")
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*hub unreachable*"])


def _skipped_lines(result: pytest.RunResult) -> list[str]:
    return [line for line in result.stdout.lines if line.startswith("SKIPPED")]


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
    plugin_args: list[str],
) -> None:
    """With ``PYTEST_CKPTS_MODE=skip`` the library said downloads were skipped because of
    ``SKIP_CHECKPOINT_DOWNLOAD=true``, a variable nobody had set."""
    make_manifest(pytester.path, hub, SMALL_FILES)
    pytester.makepyfile(test_it=LIBRARY_TESTS)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    result = pytester.runpytest(*plugin_args, "-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(skipped=1)
    lines = _skipped_lines(result)
    assert len(lines) == 1
    assert want in lines[0]
    other = "SKIP_CHECKPOINT_DOWNLOAD" if want == "PYTEST_CKPTS_MODE" else "PYTEST_CKPTS_MODE"
    assert other not in lines[0]
    assert hub.stats.request_count == 0
