"""Plugin behaviour through pytester (SPEC §3, §4): modes, marker, fixtures, xdist, report."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable

import pytest

from pytest_ckpts.testing import LocalHub
from tests.helpers import dead_endpoint, make_manifest

pytest_plugins = ["pytester"]

FILES = {name: os.urandom(32 * 1024) + name.encode() for name in ("vae", "ldm", "enc", "dec")}

TESTS = textwrap.dedent(
    """
    import hashlib
    import pytest

    @pytest.mark.requires_checkpoints("vae")
    def test_marked(checkpoints):
        ckpt = checkpoints["vae"]
        assert ckpt.path.is_file()
        assert hashlib.sha256(ckpt.path.read_bytes()).hexdigest() == ckpt.sha256

    def test_lazy(checkpoint):
        assert checkpoint("ldm").path.read_bytes().endswith(b"ldm")

    def test_plain():
        pass
    """
)


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


def test_offline_never_touches_network(
    pytester: pytest.Pytester, hub: LocalHub, run: Callable[..., pytest.RunResult]
) -> None:
    make_manifest(pytester.path, hub, FILES)
    pytester.makepyfile(test_it=TESTS)
    result = run("--ckpts=offline")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(["*checkpoint 'vae'*not cached*offline*"])
    assert hub.stats.request_count == 0
    # warm the cache, then offline runs green, still with zero requests
    assert run("--ckpts=auto").ret == 0
    hub.stats.reset()
    run("--ckpts=offline").assert_outcomes(passed=3)
    assert hub.stats.request_count == 0


def test_skip_mode_skips_at_collection_with_no_io(
    pytester: pytest.Pytester, hub: LocalHub, run: Callable[..., pytest.RunResult]
) -> None:
    make_manifest(pytester.path, hub, FILES)
    pytester.makepyfile(test_it=TESTS)
    result = run("--ckpts=skip")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(["*vae: checkpoint downloads disabled (--ckpts)*"])
    assert hub.stats.request_count == 0
    assert not (pytester.path / "checkpoints" / ".ckpts").exists()


def test_skip_switch_env(
    pytester: pytest.Pytester, hub: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_manifest(pytester.path, hub, FILES)
    pytester.makepyfile(test_it=TESTS)
    monkeypatch.setenv("SKIP_CHECKPOINT_DOWNLOAD", "true")
    monkeypatch.setenv("PYTEST_CKPTS_MODE", "require")
    result = pytester.runpytest("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(["*SKIP_CHECKPOINT_DOWNLOAD=true*"])
    # the command line beats the kill switch
    pytester.runpytest("-p", "no:cacheprovider", "--ckpts=auto").assert_outcomes(passed=3)


def test_precedence_cli_over_env_over_ini(
    pytester: pytest.Pytester, hub: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_manifest(pytester.path, hub, FILES)
    pytester.makeini("[pytest]\nckpts_mode = skip\n")
    pytester.makepyfile(test_it=TESTS)
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1, skipped=2)  # ini
    monkeypatch.setenv("PYTEST_CKPTS_MODE", "offline")
    result = pytester.runpytest("-p", "no:cacheprovider")  # env beats ini
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(["ckpts: mode=offline (PYTEST_CKPTS_MODE)*"])
    assert hub.stats.request_count == 0
    result = pytester.runpytest("-p", "no:cacheprovider", "--ckpts=auto")  # CLI beats env
    result.assert_outcomes(passed=3)


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


def test_hub_down_require_errors(
    pytester: pytest.Pytester, run: Callable[..., pytest.RunResult]
) -> None:
    make_manifest(pytester.path, None, FILES, endpoint=dead_endpoint())
    pytester.makepyfile(test_it=TESTS)
    result = run("--ckpts=require")
    result.assert_outcomes(passed=1, errors=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*hub unreachable*", "*--ckpts=require turns hub failures into errors*"]
    )
    assert "Traceback" not in result.stdout.str()


@pytest.mark.parametrize("mode", ["auto", "require", "offline"])
def test_checksum_mismatch_is_always_an_error(
    pytester: pytest.Pytester, hub: LocalHub, mode: str
) -> None:
    manifest = make_manifest(pytester.path, hub, FILES)
    pytester.makepyfile(test_it=TESTS)
    if mode == "offline":  # a verified copy in the cache, then the manifest changes
        pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=3)
    good = hashlib.sha256(FILES["vae"]).hexdigest()
    manifest.write_text(manifest.read_text().replace(good, "0" * 64))
    result = pytester.runpytest("-p", "no:cacheprovider", f"--ckpts={mode}")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        ["*Checksum mismatch for checkpoint 'vae'*", "*expected: 000000*", f"*actual:   {good}*"]
    )


def test_unknown_marker_name_is_a_collection_error(
    pytester: pytest.Pytester, hub: LocalHub
) -> None:
    make_manifest(pytester.path, hub, FILES)
    pytester.makepyfile(
        test_it="""
        import pytest

        @pytest.mark.requires_checkpoints("vea")
        def test_typo(checkpoints):
            pass

        def test_other():
            pass
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "--strict-markers")
    result.stdout.fnmatch_lines(
        ["*Checkpoint 'vea' not found*Did you mean: 'vae'*", "ERROR test_it.py::test_typo"]
    )
    assert "Traceback" not in result.stdout.str()
    assert result.ret != 0


def test_marker_registered_and_m_filter_works(pytester: pytest.Pytester, hub: LocalHub) -> None:
    make_manifest(pytester.path, hub, FILES)
    pytester.makepyfile(test_it=TESTS)
    result = pytester.runpytest(
        "-p", "no:cacheprovider", "--strict-markers", "-m", "not requires_checkpoints"
    )
    # test_lazy uses the `checkpoint` fixture: it needs a checkpoint, so it is deselected too
    result.assert_outcomes(passed=1, deselected=2)
    assert hub.stats.request_count == 0


def test_bad_mode_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_it="def test_x(): pass")
    result = pytester.runpytest_subprocess("--ckpts=sometimes")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*invalid checkpoint mode 'sometimes'*valid modes: auto, offline, skip, require*"]
    )
    pytester.makeini("[pytest]\nckpts_mode = nah\n")
    result = pytester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*'nah' from ini ckpts_mode*"])


def test_malformed_manifest_is_a_usage_error_without_traceback(pytester: pytest.Pytester) -> None:
    (pytester.path / "checkpoints").mkdir()
    (pytester.path / "checkpoints" / "checkpoints.yaml").write_text(
        "checkpoints:\n  vae:\n    filename: v.ckpt\nconfig:\n  hf_repo: o/r\n"
    )
    pytester.makepyfile(test_it="def test_x(): pass")
    result = pytester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*checkpoints.yaml:2, entry 'vae', key 'hf_path'*"])
    assert "Traceback" not in result.stderr.str() + result.stdout.str()


def test_suite_without_manifest_runs_untouched(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_it="def test_x(): pass")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert "ckpts:" not in result.stdout.str()
    assert "= checkpoints =" not in result.stdout.str()


def test_quiet_summary_is_one_line(pytester: pytest.Pytester, hub: LocalHub) -> None:
    make_manifest(pytester.path, hub, FILES)
    pytester.makepyfile(test_it=TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider", "-q")
    result.stdout.fnmatch_lines(["checkpoints: 2 downloaded (*), 0 cached, 0 skipped*"])
    assert "= checkpoints =" not in result.stdout.str()


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


def test_strict_fails_unverified_and_default_warns(
    pytester: pytest.Pytester, hub: LocalHub
) -> None:
    make_manifest(pytester.path, hub, FILES, sha={"vae": None})
    pytester.makepyfile(test_it=TESTS)
    # a subprocess: in-process runs inherit this suite's "warnings are errors" filter
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, warnings=1)
    result.stdout.fnmatch_lines(["*unverified checkpoints*vae*pytest-ckpts lock*"])
    result = pytester.runpytest("-p", "no:cacheprovider", "--ckpts-strict")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*'vae' has no sha256*--ckpts-strict*"])


def test_hooks_observe_events(pytester: pytest.Pytester, hub: LocalHub) -> None:
    make_manifest(pytester.path, hub, FILES)
    pytester.makeconftest(
        """
        EVENTS = []

        def pytest_ckpts_downloaded(config, name, path, nbytes, seconds):
            EVENTS.append(("downloaded", name, nbytes))

        def pytest_ckpts_verified(config, name, path, sha256, ok, seconds):
            EVENTS.append(("verified", name, ok))

        def pytest_ckpts_resolved(config, checkpoint):
            EVENTS.append(("resolved", checkpoint.name, checkpoint.source))

        def pytest_sessionfinish(session):
            print("EVENTS", sorted(EVENTS))
        """
    )
    pytester.makepyfile(test_it=TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider", "-s")
    size = len(FILES["vae"])
    expected = (
        f"EVENTS [('downloaded', 'ldm', {size}), ('downloaded', 'vae', {size}), "
        "('resolved', 'ldm', 'downloaded'), ('resolved', 'vae', 'downloaded'), "
        "('verified', 'ldm', True), ('verified', 'vae', True)]"
    )
    assert expected in result.stdout.str()


def test_cache_dir_option_and_env(
    pytester: pytest.Pytester, hub: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_manifest(pytester.path, hub, FILES)
    pytester.makepyfile(test_it=TESTS)
    pytester.runpytest("-p", "no:cacheprovider", "--ckpts-cache-dir", "cli-cache").assert_outcomes(
        passed=3
    )
    assert any((pytester.path / "cli-cache").rglob("vae.ckpt"))
    monkeypatch.setenv("PYTEST_CKPTS_CACHE_DIR", str(pytester.path / "env-cache"))
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=3)
    assert any((pytester.path / "env-cache").rglob("vae.ckpt"))


def test_manifest_option_env_ini(
    pytester: pytest.Pytester, hub: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = make_manifest(pytester.path, hub, FILES)
    moved = pytester.path / "conf" / "models.yaml"
    moved.parent.mkdir()
    path.rename(moved)
    pytester.makepyfile(test_it=TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider", "--ckpts-manifest", "conf/models.yaml")
    result.assert_outcomes(passed=3)
    monkeypatch.setenv("PYTEST_CKPTS_MANIFEST", str(moved))
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=3)
    monkeypatch.delenv("PYTEST_CKPTS_MANIFEST")
    pytester.makeini("[pytest]\nckpts_manifest = conf/models.yaml\n")
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=3)
    result = pytester.runpytest_subprocess("--ckpts-manifest", "conf/missing.yaml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*missing.yaml*file not found*"])


def test_plugin_import_is_cheap() -> None:
    code = (
        "import sys, pytest_ckpts.plugin, pytest_ckpts\n"
        "heavy = sorted(m for m in ('torch', 'mlflow', 'safetensors', 'numpy', 'huggingface_hub')"
        " if m in sys.modules)\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_autoload_off_with_pytest_plugins_env(
    pytester: pytest.Pytester, hub: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_manifest(pytester.path, hub, FILES)
    pytester.makepyfile(test_it=TESTS)
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.setenv("PYTEST_PLUGINS", "pytest_ckpts.plugin")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(passed=3)


def test_disabled_with_p_no_ckpts(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_it="def test_x(): pass")
    result = pytester.runpytest_subprocess("-p", "no:ckpts", "--help")
    assert "--ckpts-manifest" not in result.stdout.str()
    result = pytester.runpytest_subprocess("--help")
    result.stdout.fnmatch_lines(["*checkpoints (pytest-ckpts)*", "*--ckpts=MODE*"])


def test_optional_hook_impls_keep_working_with_the_plugin_disabled(
    pytester: pytest.Pytester,
) -> None:
    """docs/how-to/writing-tests.md "Hooks": a conftest implementing our hooks must not break ``-p no:ckpts``."""
    pytester.makeconftest(
        """
        import pytest

        @pytest.hookimpl(optionalhook=True)
        def pytest_ckpts_downloaded(config, name, path, nbytes, seconds):
            pass
        """
    )
    pytester.makepyfile(test_it="def test_x(): pass")
    pytester.runpytest("-p", "no:ckpts").assert_outcomes(passed=1)
    pytester.makeconftest(
        """
        def pytest_ckpts_downloaded(config, name, path, nbytes, seconds):
            pass
        """
    )
    result = pytester.runpytest("-p", "no:ckpts")
    assert result.ret != 0  # why the README says optionalhook=True
    result.stdout.fnmatch_lines(["*unknown hook*pytest_ckpts_downloaded*"])
