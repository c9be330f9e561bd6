"""The local hub answers the Hub API calls user suites make, as the Hub does.

Every route is exercised through huggingface_hub's own ``HfApi`` (or the ``hf`` CLI)
over HTTP, never by hand-built requests, so a test fails when the client would.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from pytest_ckpts.testing import LocalHub

REPO = "org/models"
WEIGHTS = bytes(range(256)) * 64  # binary: stored in LFS


# --------------------------------------------------------------- the local_hub fixture


def test_local_hub_fixture_takes_lfs_upload_and_create_repo_twice(
    local_hub: LocalHub, tmp_path: Path
) -> None:
    """issue 17 point 8: LFS uploads through the fixture, ``create_repo(exist_ok=True)`` twice."""
    api = HfApi(endpoint=local_hub.endpoint)
    first = api.create_repo(REPO, exist_ok=True)
    second = api.create_repo(REPO, exist_ok=True)  # 409: the body carries the url
    assert first == second == f"{local_hub.endpoint}/{REPO}"
    (tmp_path / "w.bin").write_bytes(WEIGHTS)
    api.upload_file(path_or_fileobj=tmp_path / "w.bin", path_in_repo="w.bin", repo_id=REPO)
    got = hf_hub_download(REPO, "w.bin", endpoint=local_hub.endpoint, cache_dir=tmp_path / "c")
    assert Path(got).read_bytes() == WEIGHTS
    assert Path(got).resolve().name == hashlib.sha256(WEIGHTS).hexdigest()  # LFS etag


def test_hf_upload_cli_twice_against_local_hub_fixture(local_hub: LocalHub, tmp_path: Path) -> None:
    """``hf upload`` creates the repo (exist_ok) on every call: the second must work too."""
    folder = tmp_path / "up"
    folder.mkdir()
    (folder / "w.bin").write_bytes(WEIGHTS)
    env = {
        **os.environ,
        "HF_ENDPOINT": local_hub.endpoint,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_TOKEN": "hf_local",
    }
    cli = [sys.executable, "-c", "from huggingface_hub.cli.hf import main; main()"]
    for round_ in range(2):
        (folder / "w.bin").write_bytes(WEIGHTS + bytes([round_]))
        done = subprocess.run(
            [*cli, "upload", REPO, str(folder), "."],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert local_hub.file_bytes(REPO, "w.bin") == WEIGHTS + bytes([round_])


# --------------------------------------------------------------- refs, branches, tags


@pytest.fixture
def api(hub: LocalHub) -> HfApi:
    return HfApi(endpoint=hub.endpoint)


def test_list_repo_refs_branches_tags_converts(hub: LocalHub, api: HfApi) -> None:
    main = hub.add_files(REPO, {"w.bin": WEIGHTS})
    dev = hub.add_files(REPO, {"w.bin": WEIGHTS[::-1]}, revision="dev")
    refs = api.list_repo_refs(REPO)
    assert {(b.name, b.ref, b.target_commit) for b in refs.branches} == {
        ("main", "refs/heads/main", main),
        ("dev", "refs/heads/dev", dev),
    }
    assert refs.tags == []
    assert refs.converts == []
    assert refs.pull_requests is None
    assert api.list_repo_refs(REPO, include_pull_requests=True).pull_requests == []
    assert hub.stats.count(route="refs") == 2
    with pytest.raises(RepositoryNotFoundError):
        api.list_repo_refs("org/missing")


def test_create_and_delete_branch(hub: LocalHub, api: HfApi, tmp_path: Path) -> None:
    first = hub.add_files(REPO, {"w.bin": WEIGHTS})
    hub.add_files(REPO, {"w.bin": WEIGHTS[::-1]})
    api.create_branch(REPO, branch="feature/x", revision=first)
    assert hub.commit_sha(REPO, "feature/x") == first
    got = hf_hub_download(
        REPO, "w.bin", revision="feature/x", endpoint=hub.endpoint, cache_dir=tmp_path
    )
    assert Path(got).read_bytes() == WEIGHTS
    api.create_branch(REPO, branch="feature/x", exist_ok=True)  # 409, accepted
    with pytest.raises(HfHubHTTPError) as info:
        api.create_branch(REPO, branch="feature/x")
    assert info.value.response.status_code == 409
    api.create_branch(REPO, branch="from-main")  # no revision: the head of main
    assert hub.commit_sha(REPO, "from-main") == hub.commit_sha(REPO, "main")
    with pytest.raises(RevisionNotFoundError):
        api.create_branch(REPO, branch="y", revision="no-such-branch")
    with pytest.raises(HfHubHTTPError) as info:
        api.create_branch(REPO, branch="bad..name")
    assert info.value.response.status_code == 400
    api.delete_branch(REPO, branch="feature/x")
    assert "feature/x" not in {b.name for b in api.list_repo_refs(REPO).branches}
    with pytest.raises(RevisionNotFoundError):
        api.delete_branch(REPO, branch="feature/x")
    with pytest.raises(HfHubHTTPError) as info:
        api.delete_branch(REPO, branch="main")
    assert info.value.response.status_code == 403


def test_create_and_delete_tag(hub: LocalHub, api: HfApi, tmp_path: Path) -> None:
    first = hub.add_files(REPO, {"w.bin": WEIGHTS})
    hub.add_files(REPO, {"w.bin": WEIGHTS[::-1]})
    api.create_tag(REPO, tag="v1.0", revision=first, tag_message="first")
    api.create_tag(REPO, tag="latest")  # no revision: main
    refs = api.list_repo_refs(REPO)
    assert {(t.name, t.ref, t.target_commit) for t in refs.tags} == {
        ("v1.0", "refs/tags/v1.0", first),
        ("latest", "refs/tags/latest", hub.commit_sha(REPO)),
    }
    got = hf_hub_download(REPO, "w.bin", revision="v1.0", endpoint=hub.endpoint, cache_dir=tmp_path)
    assert Path(got).read_bytes() == WEIGHTS
    assert api.model_info(REPO, revision="v1.0").sha == first
    api.create_tag(REPO, tag="v1.0", exist_ok=True)
    with pytest.raises(HfHubHTTPError) as info:
        api.create_tag(REPO, tag="v1.0")
    assert info.value.response.status_code == 409
    with pytest.raises(RevisionNotFoundError):
        api.create_tag(REPO, tag="v2", revision="no-such-branch")
    api.delete_tag(REPO, tag="v1.0")
    assert [t.name for t in api.list_repo_refs(REPO).tags] == ["latest"]
    with pytest.raises(RevisionNotFoundError):
        api.delete_tag(REPO, tag="v1.0")


# --------------------------------------------------------------- history, deletion, metadata


def test_list_repo_commits_newest_first_with_titles(hub: LocalHub, api: HfApi) -> None:
    a = hub.add_files(REPO, {"a.bin": b"\0a"}, message="add a")
    b = hub.add_files(REPO, {"b.bin": b"\0b"}, message="add b")
    c = hub.add_files(REPO, {"c.bin": b"\0c"}, revision="dev", message="on dev")
    commits = api.list_repo_commits(REPO)
    assert [x.commit_id for x in commits][:2] == [b, a]
    assert [x.title for x in commits] == ["add b", "add a", "initial commit"]
    assert commits[0].created_at.tzinfo is not None
    assert commits[0].authors
    assert [x.commit_id for x in api.list_repo_commits(REPO, revision="dev")] == [
        c,
        commits[-1].commit_id,
    ]
    with pytest.raises(RevisionNotFoundError):
        api.list_repo_commits(REPO, revision="nope")


def test_list_repo_commits_pages_like_the_hub(hub: LocalHub, api: HfApi) -> None:
    from pytest_ckpts.testing.hub.gitapi import COMMITS_PER_PAGE

    for i in range(COMMITS_PER_PAGE + 9):
        hub.add_files(REPO, {"n.txt": f"{i}".encode()}, message=f"commit {i}")
    hub.stats.reset()
    commits = api.list_repo_commits(REPO)
    assert len(commits) == COMMITS_PER_PAGE + 10  # and the initial commit
    assert commits[0].title == f"commit {COMMITS_PER_PAGE + 8}"
    assert hub.stats.count(route="refs") == 2  # two pages, the second behind a Link header


def test_commit_over_http_records_its_summary(local_hub: LocalHub, tmp_path: Path) -> None:
    api = HfApi(endpoint=local_hub.endpoint)
    api.create_repo(REPO)
    info = api.upload_file(
        path_or_fileobj=b"hello", path_in_repo="a.txt", repo_id=REPO, commit_message="say hi"
    )
    [latest, _initial] = api.list_repo_commits(REPO)
    assert latest.commit_id == info.oid
    assert latest.title == "say hi"


def test_delete_repo(hub: LocalHub, api: HfApi) -> None:
    hub.add_files(REPO, {"w.bin": WEIGHTS})
    hub.add_files("org/other", {"w.bin": WEIGHTS}, repo_type="dataset")
    api.delete_repo(REPO)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info(REPO)
    api.delete_repo(REPO, missing_ok=True)
    with pytest.raises(RepositoryNotFoundError):
        api.delete_repo(REPO)
    assert api.dataset_info("org/other").sha  # another repo, another type: untouched
    api.delete_repo("org/other", repo_type="dataset")
    with pytest.raises(RepositoryNotFoundError):
        api.dataset_info("org/other")


def test_model_info_files_metadata(hub: LocalHub, api: HfApi) -> None:
    hub.add_files(REPO, {"w.bin": WEIGHTS, "config.json": b'{"a": 1}'})
    siblings = {s.rfilename: s for s in api.model_info(REPO, files_metadata=True).siblings}
    tree = {f.path: f for f in api.list_repo_tree(REPO)}
    lfs = siblings["w.bin"].lfs
    assert lfs is not None
    assert lfs.sha256 == hashlib.sha256(WEIGHTS).hexdigest()
    assert lfs.size == len(WEIGHTS)
    assert lfs.pointer_size == tree["w.bin"].lfs.pointer_size  # type: ignore[union-attr]
    assert siblings["w.bin"].blob_id == tree["w.bin"].blob_id
    assert siblings["config.json"].lfs is None
    assert siblings["config.json"].blob_id == hashlib.sha1(b'blob 8\0{"a": 1}').hexdigest()
    assert siblings["config.json"].size == 8
    plain = api.model_info(REPO).siblings
    assert plain is not None
    assert all(s.blob_id is None and s.lfs is None for s in plain)


def test_private_repo_refs_need_a_token(hub: LocalHub, api: HfApi) -> None:
    hub.create_repo(REPO, private=True)
    with pytest.raises(RepositoryNotFoundError):
        api.list_repo_refs(REPO, token=False)
    assert api.list_repo_refs(REPO, token="hf_any").branches[0].name == "main"


def test_unsupported_method_answers_in_the_hubs_json_form(hub: LocalHub) -> None:
    from huggingface_hub.utils import get_session, hf_raise_for_status

    response = get_session().request("OPTIONS", f"{hub.endpoint}/api/models/{REPO}")
    assert response.status_code == 501
    assert response.headers["Content-Type"] == "application/json"
    assert "Unsupported method" in response.json()["error"]
    assert "Unsupported method" in response.headers["X-Error-Message"]
    with pytest.raises(HfHubHTTPError, match="Unsupported method"):
        hf_raise_for_status(response)
    response = get_session().request("PATCH", f"{hub.endpoint}/api/models/{REPO}/refs")
    assert response.status_code == 404
    assert "no route" in response.json()["error"]
