"""pytest_ckpts.cache: the cache is huggingface_hub's, and nothing leaves it.

- ``scan_cache_dir`` / ``hf cache ls`` on the hub folder of a cache pytest-ckpts filled (and
  of one moved from the layout before ``hub/``) report no inconsistencies;
- a manifest without ``cache_dir`` uses ``HF_HUB_CACHE`` / ``HF_HOME``: files other tools
  downloaded there are used without a download;
- ``cache info`` names the folder to give huggingface_hub's tools; ``cache key`` does not
  depend on where the cache lives;
- hostile revisions never become paths outside the cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import hf_hub_download, scan_cache_dir, try_to_load_from_cache

from pytest_ckpts import load_manifest
from pytest_ckpts.cache import Cache, contained
from pytest_ckpts.errors import CacheError
from pytest_ckpts.manifest import CheckpointSpec
from pytest_ckpts.store import NullObserver, Store
from pytest_ckpts.testing import LocalHub
from tests.helpers import REPO, cli, make_manifest

VAE = os.urandom(30_000) + b"vae"
LDM = os.urandom(20_000) + b"ldm"

TEST_FILE = """
import hashlib
import pytest

@pytest.mark.requires_checkpoints("vae")
def test_vae(checkpoints):
    data = checkpoints["vae"].path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == "{sha}"
"""


def _no_cache_dir_manifest(root: Path, hub: LocalHub, files: dict[str, bytes]) -> Path:
    """``make_manifest`` without ``config.cache_dir``: huggingface_hub's cache is used."""
    path = make_manifest(root, hub, files)
    text = path.read_text().replace('  cache_dir: "./checkpoints"\n', "")
    path.write_text(text)
    assert "cache_dir" not in text
    return path


def _hf_cache_ls(cache: Path) -> str:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from huggingface_hub.cli.hf import main; main()",
            "cache",
            "ls",
            "--cache-dir",
            str(cache),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


class Verifies(NullObserver):
    def __init__(self) -> None:
        self.hashed: list[str] = []

    def on_verify(self, spec, path, sha256, ok, seconds):  # type: ignore[no-untyped-def]
        self.hashed.append(spec.name)


# --------------------------------------------------------------- a cache_dir of the project


def test_project_cache_reads_cleanly_with_huggingface_hub_tools(
    project: Path, hub: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project)
    manifest = load_manifest(make_manifest(project, hub, {"vae": VAE, "ldm": LDM}))
    store = Store(manifest)
    for name in ("vae", "ldm"):
        store.resolve(manifest.get(name))
    root = project / "checkpoints"
    assert store.layout.hub == root / "hub"
    assert (root / "checkpoints.yaml").is_file()  # the manifest stays where it was
    info = scan_cache_dir(root / "hub")
    assert info.warnings == []
    [repo] = info.repos
    assert repo.repo_id == REPO
    assert {f.file_name for r in repo.revisions for f in r.files} == {"vae.ckpt", "ldm.ckpt"}
    assert "inconsistenc" not in _hf_cache_ls(root / "hub")
    # huggingface_hub finds our files without a request
    hub.stats.reset()
    found = try_to_load_from_cache(REPO, "weights/vae.ckpt", cache_dir=root / "hub")
    assert isinstance(found, str)
    assert Path(found).read_bytes() == VAE
    got = hf_hub_download(REPO, "weights/ldm.ckpt", cache_dir=root / "hub", local_files_only=True)
    assert Path(got).read_bytes() == LDM
    assert hub.stats.request_count == 0
    # cache info names the folder for huggingface_hub's tools
    code, out = cli("cache", "info")
    assert code == 0
    assert f"hf cache ls --cache-dir {root / 'hub'}" in out


def test_cache_in_the_old_layout_is_moved_once_without_downloading_or_rehashing(
    project: Path, hub: LocalHub
) -> None:
    """The layout before ``hub/``: repo folders beside the manifest and ``.ckpts/``."""
    manifest = load_manifest(make_manifest(project, hub, {"vae": VAE}))
    Store(manifest).resolve(manifest.get("vae"))
    root = project / "checkpoints"
    for entry in list((root / "hub").iterdir()):  # back to the old layout
        entry.rename(root / entry.name)
    (root / "hub").rmdir()
    assert len(scan_cache_dir(root).warnings) >= 2  # what users saw: .ckpts and the manifest

    hub.stats.reset()
    seen = Verifies()
    ckpt = Store(manifest, observer=seen).resolve(manifest.get("vae"))
    assert ckpt.path.read_bytes() == VAE
    assert ckpt.path.is_relative_to(root / "hub")
    assert hub.stats.bodies_served == 0  # no re-download
    assert seen.hashed == []  # the stamps moved with the files: no re-hash either
    assert sorted(p.name for p in root.iterdir()) == [".ckpts", "checkpoints.yaml", "hub"]
    assert scan_cache_dir(root / "hub").warnings == []
    assert sorted(p.name for p in (root / "hub").iterdir()) == ["models--acme--ckpts"]


def test_cache_dir_huggingface_hub_also_writes_is_read_in_place(
    project: Path, hub: LocalHub, tmp_path: Path
) -> None:
    """A cache_dir other tools use (huggingface_hub made ``.locks/`` there) is not moved."""
    manifest_path = make_manifest(project, hub, {"vae": VAE})
    shared = tmp_path / "shared-hf-cache"
    hf_hub_download(REPO, "weights/vae.ckpt", endpoint=hub.endpoint, cache_dir=shared)
    assert (shared / ".locks").is_dir()
    manifest = load_manifest(manifest_path)
    hub.stats.reset()
    ckpt = Store(manifest, cache_dir=shared).resolve(manifest.get("vae"))
    assert ckpt.path.is_relative_to(shared / "models--acme--ckpts")
    assert hub.stats.bodies_served == 0
    assert not (shared / "hub").exists()
    found = hf_hub_download(REPO, "weights/vae.ckpt", cache_dir=shared, local_files_only=True)
    assert Path(found).read_bytes() == VAE  # the other tools still find their files


def test_cache_dir_naming_hf_hub_cache_is_that_cache(
    project: Path, hub: LocalHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``cache_dir: ~/.cache/huggingface/hub`` (the old way to share): state goes beside it."""
    hf_cache = tmp_path / "hf-hub-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_cache))
    (hf_cache / ".ckpts" / "stamps").mkdir(parents=True)  # left there by an earlier version
    manifest = load_manifest(make_manifest(project, hub, {"vae": VAE}))
    assert Cache.locate(hf_cache) == Cache(Path(os.environ["HF_HOME"]), hf_cache)
    store = Store(manifest, cache_dir=hf_cache)  # as --ckpts-cache-dir / --cache-dir give it
    assert store.resolve(manifest.get("vae")).path.is_relative_to(hf_cache)
    assert scan_cache_dir(hf_cache).warnings == []
    assert (Path(os.environ["HF_HOME"]) / ".ckpts" / "stamps").is_dir()
    assert not (hf_cache / ".ckpts").exists()


def test_old_layout_beside_a_new_one_is_merged(project: Path, hub: LocalHub) -> None:
    """An older pytest-ckpts wrote into the old place after the move: both are kept."""
    manifest = load_manifest(make_manifest(project, hub, {"vae": VAE, "ldm": LDM}))
    root = project / "checkpoints"
    Store(manifest).resolve(manifest.get("vae"))
    other = Store(manifest, cache_dir=project / "old")
    other.resolve(manifest.get("ldm"))
    shutil.move(str(project / "old" / "hub" / "models--acme--ckpts"), str(root))
    hub.stats.reset()
    store = Store(manifest)
    assert store.resolve(manifest.get("ldm")).path.read_bytes() == LDM
    assert store.resolve(manifest.get("vae")).path.read_bytes() == VAE
    assert hub.stats.bodies_served == 0
    assert not (root / "models--acme--ckpts").exists()
    assert scan_cache_dir(root / "hub").warnings == []


def test_pytest_run_on_old_layout_then_scan_is_clean(
    pytester: pytest.Pytester, hub: LocalHub
) -> None:
    make_manifest(pytester.path, hub, {"vae": VAE})
    pytester.makepyfile(TEST_FILE.format(sha=hashlib.sha256(VAE).hexdigest()))
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
    root = pytester.path / "checkpoints"
    for entry in list((root / "hub").iterdir()):
        entry.rename(root / entry.name)
    (root / "hub").rmdir()
    hub.stats.reset()
    result = pytester.runpytest("-p", "no:cacheprovider", "-n", "2")
    result.assert_outcomes(passed=1)
    assert hub.stats.bodies_served == 0
    assert scan_cache_dir(root / "hub").warnings == []
    assert not [p for p in root.iterdir() if p.name.startswith("models--")]


# --------------------------------------------------------------- no cache_dir: the user's cache


def test_no_cache_dir_uses_files_already_in_hf_hub_cache(
    pytester: pytest.Pytester, hub: LocalHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``hf download`` / transformers put the file there: the run downloads 0 bytes."""
    hf_cache = tmp_path / "hf-hub-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_cache))
    _no_cache_dir_manifest(pytester.path, hub, {"vae": VAE})
    hf_hub_download(REPO, "weights/vae.ckpt", endpoint=hub.endpoint, cache_dir=hf_cache)
    hub.stats.reset()
    pytester.makepyfile(TEST_FILE.format(sha=hashlib.sha256(VAE).hexdigest()))
    result = pytester.runpytest("-p", "no:cacheprovider", "-v")
    result.assert_outcomes(passed=1)
    assert hub.stats.bytes_sent("file") == 0
    assert hub.stats.bodies_served == 0
    result.stdout.fnmatch_lines([f"*cache={hf_cache}*"])
    assert not (pytester.path / "checkpoints" / "hub").exists()
    assert scan_cache_dir(hf_cache).warnings == []
    # our state is beside huggingface_hub's cache, in HF_HOME, never inside it
    assert (Path(os.environ["HF_HOME"]) / ".ckpts" / "stamps").is_dir()


def test_no_cache_dir_without_hf_hub_cache_uses_hf_home_hub(
    project: Path, hub: LocalHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE")
    manifest = load_manifest(_no_cache_dir_manifest(project, hub, {"vae": VAE}))
    hf_hub_download(REPO, "weights/vae.ckpt", endpoint=hub.endpoint, cache_dir=home / "hub")
    hub.stats.reset()
    store = Store(manifest)
    assert store.layout == Cache(home)
    assert store.resolve(manifest.get("vae")).path.is_relative_to(home / "hub")
    assert hub.stats.bodies_served == 0
    assert scan_cache_dir(home / "hub").warnings == []
    monkeypatch.chdir(project)
    _code, out = cli("cache", "info")
    assert f"hf cache ls --cache-dir {home / 'hub'}" in out


def test_cache_dir_option_and_env_still_override_the_hf_cache(
    pytester: pytest.Pytester, hub: LocalHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hf_cache = tmp_path / "hf-hub-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_cache))
    _no_cache_dir_manifest(pytester.path, hub, {"vae": VAE})
    hf_hub_download(REPO, "weights/vae.ckpt", endpoint=hub.endpoint, cache_dir=hf_cache)
    pytester.makepyfile(TEST_FILE.format(sha=hashlib.sha256(VAE).hexdigest()))
    hub.stats.reset()
    mine = tmp_path / "mine"
    pytester.runpytest("-p", "no:cacheprovider", f"--ckpts-cache-dir={mine}").assert_outcomes(
        passed=1
    )
    assert hub.stats.bodies_served == 1  # the override is another cache
    assert scan_cache_dir(mine / "hub").warnings == []
    monkeypatch.setenv("PYTEST_CKPTS_CACHE_DIR", str(tmp_path / "env"))
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
    assert hub.stats.bodies_served == 2
    assert (tmp_path / "env" / "hub" / "models--acme--ckpts").is_dir()


def test_cache_key_does_not_depend_on_where_the_cache_lives(
    project: Path, hub: LocalHub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(project)
    path = make_manifest(project, hub, {"vae": VAE})
    key = cli("cache", "key")[1]
    _no_cache_dir_manifest(project, hub, {"vae": VAE})
    assert cli("cache", "key")[1] == key
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "x"))
    assert cli("cache", "key")[1] == key
    assert cli("--cache-dir", str(tmp_path / "y"), "cache", "key")[1] == key
    assert not (tmp_path / "x").exists()
    assert not (tmp_path / "y").exists()
    assert path.is_file()


def test_prune_leaves_no_ref_to_a_removed_snapshot(
    project: Path, hub: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A branch the manifest no longer uses: its ref goes with its snapshot."""
    import dataclasses

    manifest = load_manifest(make_manifest(project, hub, {"vae": VAE}))
    hub.add_files(REPO, {"weights/vae.ckpt": VAE[::-1]}, revision="dev")
    dev = dataclasses.replace(manifest.get("vae"), revision="dev", sha256=None)
    store = Store(manifest)
    store.resolve(dev)
    store.resolve(manifest.get("vae"))
    root = project / "checkpoints" / "hub"
    assert (root / "models--acme--ckpts" / "refs" / "dev").is_file()
    store.layout.prune(manifest)  # keeps main's file, drops dev's
    assert not (root / "models--acme--ckpts" / "refs" / "dev").exists()
    assert (root / "models--acme--ckpts" / "refs" / "main").is_file()
    assert scan_cache_dir(root).warnings == []


DATA = os.urandom(48 * 1024) + b"weights"


HOSTILE = "../../../../victim.txt"


def _spec(revision: str) -> CheckpointSpec:
    return CheckpointSpec(
        name="vae",
        filename="vae.ckpt",
        hf_path="weights/vae.ckpt",
        sha256=hashlib.sha256(DATA).hexdigest(),
        description="",
        repo=REPO,
        revision=revision,
        repo_type="model",
        size=None,
    )


def _files_outside(tmp_path: Path, cache: Path) -> set[Path]:
    """Every file under tmp_path that is not inside the cache (the hub's own files excluded)."""
    return {
        p
        for p in tmp_path.rglob("*")
        if p.is_file() and not p.is_relative_to(cache) and p.suffix != ".yaml"
    }


@pytest.mark.parametrize(
    "revision", [HOSTILE, "/etc/victim", "refs/../../x", "a//b", "a\\..\\b", "x\0y", ""]
)
def test_ref_path_refuses_revisions_leaving_the_cache(tmp_path: Path, revision: str) -> None:
    """The earlier store built ``refs/<revision>`` by plain joining: ``../..`` escaped it."""
    cache = Cache(tmp_path / "cache")
    with pytest.raises(CacheError, match="refusing revision") as info:
        cache.ref_path(_spec(revision))
    assert "\n" not in str(info.value)
    assert "Fix the manifest" in str(info.value)
    with pytest.raises(CacheError):
        contained(tmp_path / "cache", revision, what="revision")


@pytest.mark.parametrize("revision", ["main", "v1.2", "refs/pr/3", "feature/x"])
def test_real_revisions_stay_under_refs(tmp_path: Path, revision: str) -> None:
    cache = Cache(tmp_path / "cache")
    ref = cache.ref_path(_spec(revision))
    refs = tmp_path / "cache" / "hub" / "models--acme--ckpts" / "refs"
    assert ref == refs.joinpath(*revision.split("/"))
    assert ref.resolve().is_relative_to(refs.resolve())


def test_hostile_revision_writes_nothing_outside_the_cache(
    tmp_path: Path, project: Path, hub: LocalHub
) -> None:
    """A hub that has a branch named ``../../../../victim.txt`` answers the probe; the
    earlier store then wrote the commit to ``refs/../../../../victim.txt``, outside the
    cache. Now the revision is refused before any request is made."""
    manifest = load_manifest(make_manifest(project, hub, {"vae": DATA}))
    hub.add_files(REPO, {"weights/vae.ckpt": DATA}, revision=HOSTILE)
    cache = manifest.cache_dir
    before = _files_outside(tmp_path, cache)
    hub.stats.reset()
    store = Store(manifest)
    with pytest.raises(CacheError, match="refusing revision") as info:
        store.resolve(_spec(HOSTILE))
    assert HOSTILE in str(info.value)
    assert _files_outside(tmp_path, cache) == before
    assert not (cache.parent.parent / "victim.txt").exists()
    assert not (tmp_path / "victim.txt").exists()
    assert hub.stats.request_count == 0  # refused before asking the hub
    assert store.layout.cached_commit(_spec(HOSTILE)) is None  # reading a hostile ref: just absent


@pytest.mark.parametrize("revision", ["feature/x", "refs/pr/3", "v1.2"])
def test_branches_with_slashes_resolve_and_record_their_ref(
    project: Path, hub: LocalHub, revision: str
) -> None:
    manifest = load_manifest(make_manifest(project, hub, {"vae": b"x"}))
    commit = hub.add_files(REPO, {"weights/vae.ckpt": DATA}, revision=revision)
    spec = dataclasses.replace(manifest.get("vae"), revision=revision)
    spec = dataclasses.replace(spec, sha256=hashlib.sha256(DATA).hexdigest())
    ckpt = Store(manifest).resolve(spec)
    assert ckpt.path.read_bytes() == DATA
    assert ckpt.revision == commit
    ref = manifest.cache_dir / "hub" / "models--acme--ckpts" / "refs" / revision
    assert ref.read_text().strip() == commit
    # offline, the recorded ref finds the file again
    assert Store(manifest, offline=True).resolve(spec).source == "cached"


@pytest.mark.parametrize(
    ("repo_id", "repo_type"),
    [("acme/ckpts", "model"), ("org/sets", "dataset"), ("org/demo", "space"), ("solo", "model")],
)
def test_repo_folder_name_is_huggingface_hubs(repo_id: str, repo_type: str) -> None:
    """``cache.repo_folder_name`` copies huggingface_hub's (its import costs ~0.2 s per
    process): both name a repo's cache folder the same."""
    from huggingface_hub.file_download import repo_folder_name as theirs

    from pytest_ckpts.cache import repo_folder_name as ours

    assert ours(repo_id=repo_id, repo_type=repo_type) == theirs(
        repo_id=repo_id, repo_type=repo_type
    )
