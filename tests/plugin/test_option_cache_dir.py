"""--ckpts-cache-dir (PYTEST_CKPTS_CACHE_DIR, ini ckpts_cache_dir), and caches on unfriendly
file systems: read-only, full, or a dangling symlink.

Read-only and full caches are real mounts (a read-only bind mount, a 1 MiB tmpfs)
inside tmp_path: as root a permission bit would not stop a write, a mount does. The
``mounts`` fixture (tests/conftest.py) skips, saying why, where mounting is not
permitted, and always unmounts.
"""

from __future__ import annotations

import os
import re
import shutil
import textwrap
from pathlib import Path

import pytest

from pytest_ckpts.testing import LocalHub
from tests.helpers import Mounts, cli, make_manifest
from tests.plugin.suites import FILES, TESTS


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


PYTEST_OPTION = re.compile(r"(?<![\w-])--ckpts\b")  # not the "models--acme--ckpts" folder


MOUNT_FILES = {"vae": os.urandom(24 * 1024) + b"vae", "ldm": os.urandom(24 * 1024) + b"ldm"}


MOUNT_TESTS = textwrap.dedent(
    """
    import hashlib
    import pytest
    from pytest_ckpts import get_checkpoint

    @pytest.mark.requires_checkpoints("vae")
    def test_marked(checkpoints):
        ckpt = checkpoints["vae"]
        assert hashlib.sha256(ckpt.path.read_bytes()).hexdigest() == ckpt.sha256

    def test_lazy(checkpoint):
        assert checkpoint("vae").path.read_bytes().endswith(b"vae")

    @pytest.mark.requires_checkpoints
    def test_library():
        assert get_checkpoint("vae").read_bytes().endswith(b"vae")
    """
)


def _warm_read_only(
    root: Path, hub: LocalHub, mounts: Mounts, *, pinned: bool, stamps: bool
) -> Path:
    """Fill ``root/checkpoints`` with vae (not ldm), then make it read-only."""
    manifest = make_manifest(root, hub, MOUNT_FILES, pinned=pinned)
    cwd = Path.cwd()
    os.chdir(root)
    try:
        code, out = cli("fetch", "-q", "vae")
    finally:
        os.chdir(cwd)
    assert code == 0, out
    if not stamps:  # as a CI cache restore leaves it: no stamp vouches for anything
        shutil.rmtree(root / "checkpoints" / ".ckpts" / "stamps")
    mounts.read_only(root / "checkpoints")
    with pytest.raises(OSError, match="Read-only"):
        (root / "checkpoints" / "x").write_bytes(b"")
    return manifest


@pytest.mark.parametrize("stamps", [True, False], ids=["stamped", "unstamped"])
@pytest.mark.parametrize("mode", ["auto", "require", "offline"])
def test_every_mode_runs_from_a_read_only_warm_cache(
    pytester: pytest.Pytester, hub: LocalHub, mounts: Mounts, mode: str, stamps: bool
) -> None:
    """A read-only cache (a shared volume, a CI cache mounted ro) made the earlier store
    fail where it only wanted to record something: the lock, the ref, the stamp. Files
    are now verified in memory when no stamp can be written."""
    _warm_read_only(pytester.path, hub, mounts, pinned=False, stamps=stamps)
    pytester.makepyfile(test_it=MOUNT_TESTS)
    hub.stats.reset()
    result = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:randomly", f"--ckpts={mode}")
    result.assert_outcomes(passed=3)
    assert "INTERNALERROR" not in result.stdout.str()
    assert hub.stats.bodies_served == 0


def test_pinned_read_only_cache_with_dead_run_state(
    pytester: pytest.Pytester, hub: LocalHub, mounts: Mounts
) -> None:
    """Pinned entries, unstamped, read-only, under xdist: no lock, no stamp, no run-state
    file can be written, and the workers still verify and use the files."""
    _warm_read_only(pytester.path, hub, mounts, pinned=True, stamps=False)
    pytester.makepyfile(test_it=MOUNT_TESTS)
    hub.stats.reset()
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", timeout=120)
    result.assert_outcomes(passed=3)
    assert hub.stats.bodies_served == 0


def test_read_only_cache_lacking_the_file_fails_in_one_line(
    pytester: pytest.Pytester, hub: LocalHub, mounts: Mounts
) -> None:
    """A read-only cache without the file: the test fails (a local problem is never a
    skip) with one line naming the cache and the fix, not an ``OSError`` traceback."""
    _warm_read_only(pytester.path, hub, mounts, pinned=False, stamps=True)
    pytester.makepyfile(
        test_it="""
        import pytest

        @pytest.mark.requires_checkpoints("ldm")
        def test_needs_ldm(checkpoints):
            pass
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    assert "Traceback" not in out
    lines = [line for line in out.splitlines() if "cannot download checkpoint 'ldm'" in line]
    assert lines, out
    assert str(pytester.path / "checkpoints") in lines[0]
    assert "--ckpts-cache-dir" in lines[0]
    assert "pytest-ckpts fetch" in lines[0]


def test_cli_on_a_read_only_cache(
    project: Path, hub: LocalHub, mounts: Mounts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``pytest-ckpts verify`` re-hashes and wanted to write stamps: on a read-only cache
    it crashed with an ``OSError`` instead of reporting the files as fine."""
    _warm_read_only(project, hub, mounts, pinned=False, stamps=False)
    monkeypatch.chdir(project)
    code, out = cli("verify", "vae")
    assert code == 0, out
    assert out.startswith("ok          vae: sha256 ")
    code, out = cli("verify")  # ldm is not cached: exit 1 naming it, no crash
    assert code == 1
    assert "missing     ldm: not cached" in out
    assert cli("list")[0] == 0
    assert cli("cache", "info")[0] == 0
    code, out = cli("fetch", "-q", "vae")
    assert code == 0, out
    assert out.startswith("cached")
    code, out = cli("fetch", "-q", "ldm")
    assert code == 1
    assert out.count("\n") == 1
    assert "not writable" in out
    assert "--cache-dir" in out
    assert not PYTEST_OPTION.search(out)


def test_dangling_symlink_cache_dir_is_one_line(
    pytester: pytest.Pytester, hub: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache dir that is a dangling symlink (a volume not mounted): the earlier store
    raised ``FileExistsError`` from ``mkdir`` (an INTERNALERROR in pytest, a traceback
    from the CLI). Now one line names the link, and a test using it fails."""
    make_manifest(pytester.path, hub, MOUNT_FILES)
    link = pytester.path / "cache"
    link.symlink_to(pytester.path / "volume-not-mounted")
    monkeypatch.chdir(pytester.path)
    code, out = cli("--cache-dir", str(link), "fetch", "-q", "vae")
    assert code == 1
    assert out.count("\n") == 1, out
    assert f"{link} is a dangling symlink" in out
    assert "--cache-dir" in out
    assert not PYTEST_OPTION.search(out)  # the CLI names its own options
    assert not (pytester.path / "volume-not-mounted").exists()

    pytester.makepyfile(test_it=MOUNT_TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider", "--ckpts-cache-dir", str(link))
    out = result.stdout.str()
    assert "INTERNALERROR" not in out
    assert "Traceback" not in out
    result.assert_outcomes(errors=1, failed=2)
    assert out.count(f"{link} is a dangling symlink") >= 3
    assert "--ckpts-cache-dir" in out  # pytest's option, inside pytest
    assert "skipped" not in out.splitlines()[-1]


def test_disk_full_after_a_resumed_cut_names_the_whole_file(
    project: Path, hub: LocalHub, mounts: Mounts
) -> None:
    """Was: a body cut mid-way was continued with ``Range``; the disk then filled, and the
    message asked for the *rest* (the ranged answer's Content-Length: seen once in CI as
    "1048576 bytes needed" for a 2 MiB file). The partial file is removed on that
    failure, so the whole file is what must fit."""
    from pytest_ckpts import load_manifest
    from pytest_ckpts.errors import CacheError
    from pytest_ckpts.store import Store

    big = os.urandom(2 * 1024 * 1024)
    manifest = load_manifest(make_manifest(project, hub, {"vae": big}, pinned=True))
    mounts.tmpfs(manifest.cache_dir, "1m")
    hub.faults.drop_next(after_bytes=256 * 1024, path_contains="vae")  # then a Range request
    with pytest.raises(CacheError) as info:
        Store(manifest).resolve(manifest.get("vae"))
    assert hub.stats.count(path_contains="vae", status=206) == 1  # it was resumed
    assert f"the disk is full ({len(big)} bytes needed" in str(info.value)
    assert not [p for p in manifest.cache_dir.rglob("*") if p.is_file() and p.stat().st_size]


def test_disk_full_fails_naming_path_and_bytes(
    pytester: pytest.Pytester, hub: LocalHub, mounts: Mounts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk was reported as a hub failure and skipped in auto mode, hiding a
    machine problem. Now it fails, naming the file and the bytes needed, and leaves no
    half-written file behind."""
    big = os.urandom(2 * 1024 * 1024)
    make_manifest(pytester.path, hub, {"vae": big})
    cache = pytester.path / "small"
    mounts.tmpfs(cache, "1m")
    pytester.makepyfile(
        test_it="""
        import pytest

        @pytest.mark.requires_checkpoints("vae")
        def test_big(checkpoints):
            pass
        """
    )
    # a subprocess: the hub's thread reports the aborted transfer on this process's stderr
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-rs", "--ckpts-cache-dir", str(cache), timeout=120
    )
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    assert "Traceback" not in out
    line = next(ln for ln in out.splitlines() if "disk is full" in ln)
    assert str(cache) in line
    assert f"{len(big)} bytes needed" in line
    assert not [p for p in cache.rglob("*") if p.is_file() and p.stat().st_size > 0]

    monkeypatch.chdir(pytester.path)
    code, out = cli("--cache-dir", str(cache), "fetch", "-q", "vae")
    assert code == 1
    assert out.count("\n") == 1, out
    assert f"{len(big)} bytes needed" in out
    assert "--cache-dir" in out
    assert not PYTEST_OPTION.search(out)


def test_read_only_cache_serves_stale_copy_when_the_hub_dies(
    pytester: pytest.Pytester, hub: LocalHub, mounts: Mounts
) -> None:
    """Stale-while-error on a read-only cache: the run state (which endpoint is dead)
    cannot be written to the cache, yet the branch's last verified copy is used."""
    from tests.helpers import dead_endpoint

    manifest = _warm_read_only(pytester.path, hub, mounts, pinned=False, stamps=True)
    moved = pytester.path / "manifest.yaml"  # same entries, same cache, a dead hub
    moved.write_text(manifest.read_text().replace(hub.endpoint, dead_endpoint()))
    pytester.makepyfile(test_it=MOUNT_TESTS)
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "--ckpts-manifest",
        str(moved),
        "--ckpts-cache-dir",
        str(pytester.path / "checkpoints"),
        "-n",
        "2",
        timeout=120,
    )
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*stale*vae*"])
