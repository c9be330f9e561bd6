"""The local hub stand-in, exercised by the real huggingface_hub client over HTTP."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from pytest_ckpts.testing import LocalHub

REPO = "org/models"
DATA = os.urandom(100_000)


def download(hub: LocalHub, cache: Path, path: str = "w.bin", **kwargs: object) -> Path:
    return Path(
        hf_hub_download(REPO, path, endpoint=hub.endpoint, cache_dir=cache, **kwargs)  # type: ignore[arg-type]
    )


def test_round_trip_names_blob_after_sha256(hub: LocalHub, tmp_path: Path) -> None:
    commit = hub.add_file(REPO, "w.bin", DATA)
    got = download(hub, tmp_path)
    assert got.read_bytes() == DATA
    assert got.resolve().name == hashlib.sha256(DATA).hexdigest()
    assert got.parent.name == commit
    assert hub.stats.bodies_served == 1
    assert hub.stats.bytes_served == len(DATA)
    assert hub.stats.count("HEAD") == 1
    assert hub.file_bytes(REPO, "w.bin") == DATA


def test_pinned_commit_warm_call_makes_no_request(hub: LocalHub, tmp_path: Path) -> None:
    commit = hub.add_file(REPO, "w.bin", DATA)
    download(hub, tmp_path, revision=commit)
    hub.stats.reset()
    download(hub, tmp_path, revision=commit)
    assert hub.stats.request_count == 0


def test_commits_are_deterministic_and_branches_move(tmp_path: Path) -> None:
    with LocalHub() as a, LocalHub() as b:
        assert a.add_file(REPO, "w.bin", DATA) == b.add_file(REPO, "w.bin", DATA)
        first = a.commit_sha(REPO)
        second = a.add_file(REPO, "x.bin", b"more")
        assert second != first
        assert a.commit_sha(REPO) == second
        # the old commit still serves its tree
        assert download(a, tmp_path, revision=first).read_bytes() == DATA


def test_range_requests(hub: LocalHub) -> None:
    hub.add_file(REPO, "w.bin", DATA)
    url = f"{hub.endpoint}/{REPO}/resolve/main/w.bin"
    r = httpx2.get(url, headers={"Range": "bytes=10-19"})
    assert r.status_code == 206
    assert r.content == DATA[10:20]
    assert r.headers["Content-Range"] == f"bytes 10-19/{len(DATA)}"
    r = httpx2.get(url, headers={"Range": "bytes=99990-"})
    assert r.content == DATA[99990:]
    r = httpx2.head(url)
    assert r.headers["X-Linked-Etag"].strip('"') == hashlib.sha256(DATA).hexdigest()
    assert "X-Xet-Hash" not in r.headers


@pytest.mark.parametrize(
    ("repo", "revision", "path", "error"),
    [
        ("org/missing", "main", "w.bin", RepositoryNotFoundError),
        (REPO, "nobranch", "w.bin", RevisionNotFoundError),
        (REPO, "main", "nofile.bin", EntryNotFoundError),
    ],
)
def test_not_found_kinds_map_to_client_exceptions(
    hub: LocalHub, tmp_path: Path, repo: str, revision: str, path: str, error: type[Exception]
) -> None:
    hub.add_file(REPO, "w.bin", DATA)
    with pytest.raises(error):
        hf_hub_download(repo, path, revision=revision, endpoint=hub.endpoint, cache_dir=tmp_path)


def test_token_required_and_never_echoed(tmp_path: Path) -> None:
    with LocalHub(token="hf_right") as hub:
        hub.add_file(REPO, "w.bin", DATA)
        with pytest.raises(HfHubHTTPError) as info:
            download(hub, tmp_path, token="hf_wrong_secret")
        assert "hf_wrong_secret" not in str(info.value)
        assert info.value.response is not None
        assert info.value.response.status_code == 401
        assert download(hub, tmp_path, token="hf_right").read_bytes() == DATA


def test_fail_next_then_recover(hub: LocalHub, tmp_path: Path) -> None:
    hub.add_file(REPO, "w.bin", DATA)
    hub.faults.fail_next(1, status=500, method="GET")  # the client does not retry a 5xx GET
    with pytest.raises(HfHubHTTPError):
        download(hub, tmp_path)
    assert download(hub, tmp_path).read_bytes() == DATA
    assert [(r.method, r.status) for r in hub.stats.requests] == [
        ("HEAD", 200),
        ("GET", 500),
        ("HEAD", 200),
        ("GET", 200),
    ]


def test_delay(hub: LocalHub) -> None:
    import time

    hub.add_file(REPO, "w.bin", DATA)
    hub.faults.delay(0.3, n=1, path_contains="w.bin")
    started = time.monotonic()
    httpx2.head(f"{hub.endpoint}/{REPO}/resolve/main/w.bin")
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    httpx2.head(f"{hub.endpoint}/{REPO}/resolve/main/w.bin")
    assert time.monotonic() - started < 0.3


def test_drop_mid_body_leaves_no_complete_file(hub: LocalHub, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024)
    hub.add_file(REPO, "w.bin", data)
    hub.faults.drop_next(1, after_bytes=1024 * 1024)
    # measured on huggingface_hub 2.4.0: an RST mid-body raises httpx2.ReadError (not
    # an OSError, not HfHubHTTPError) and the partial file is deleted
    with pytest.raises(httpx2.ReadError):
        download(hub, tmp_path)
    assert not list(tmp_path.rglob("w.bin"))
    assert not [
        p
        for p in tmp_path.rglob("*")
        if p.is_file() and p.stat().st_size > 0 and "blobs" in p.parts
    ]
    assert hub.stats.bodies_served == 1
    assert download(hub, tmp_path).read_bytes() == data


def test_clean_close_mid_body_is_retried_by_the_client(hub: LocalHub, tmp_path: Path) -> None:
    data = os.urandom(2 * 1024 * 1024)
    hub.add_file(REPO, "w.bin", data)
    hub.faults.drop_next(1, after_bytes=512 * 1024, reset=False)
    assert download(hub, tmp_path).read_bytes() == data
    # measured on huggingface_hub 2.4.0: it logs "Trying to resume download..." but
    # asks for the whole file again (no Range header)
    bodies = [(r.range, r.bytes_sent) for r in hub.stats.requests if r.body]
    assert bodies == [(None, 512 * 1024), (None, len(data))]


def test_corrupt_body_same_length(hub: LocalHub, tmp_path: Path) -> None:
    hub.add_file(REPO, "w.bin", DATA)
    hub.faults.corrupt_next(1)
    got = download(hub, tmp_path).read_bytes()
    assert len(got) == len(DATA)
    assert got != DATA


def test_path_backed_file_is_streamed(hub: LocalHub, tmp_path: Path) -> None:
    source = tmp_path / "big.bin"
    chunk = os.urandom(1024 * 1024)
    with source.open("wb") as f:
        for _ in range(20):
            f.write(chunk)
    hub.add_file(REPO, "big.bin", source)
    got = download(hub, tmp_path / "cache", "big.bin")
    assert got.stat().st_size == 20 * 1024 * 1024
    assert hashlib.sha256(got.read_bytes()).digest() == hashlib.sha256(chunk * 20).digest()


def test_model_info_probe(hub: LocalHub) -> None:
    commit = hub.add_files(REPO, {"a.bin": b"a", "dir/b.bin": b"bb"})
    info = HfApi(endpoint=hub.endpoint).model_info(REPO)
    assert info.sha == commit
    assert sorted(s.rfilename for s in info.siblings or []) == ["a.bin", "dir/b.bin"]
    assert sorted(HfApi(endpoint=hub.endpoint).list_repo_files(REPO)) == ["a.bin", "dir/b.bin"]


@pytest.mark.parametrize("size", [100, 3 * 1024 * 1024], ids=["small", "lfs"])
def test_upload_then_download(tmp_path: Path, size: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    # the stand-in has no Xet storage: uploads take the LFS path, as with HF_HUB_DISABLE_XET=1
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    data = os.urandom(size)
    with LocalHub(token="hf_write") as hub:
        api = HfApi(endpoint=hub.endpoint, token="hf_write")
        api.create_repo("org/new")
        info = api.upload_file(path_or_fileobj=data, path_in_repo="m/w.bin", repo_id="org/new")
        assert hub.commit_sha("org/new") in str(info)
        got = hf_hub_download(
            "org/new", "m/w.bin", endpoint=hub.endpoint, cache_dir=tmp_path, token="hf_write"
        )
        assert Path(got).read_bytes() == data
        with pytest.raises(HfHubHTTPError):
            HfApi(endpoint=hub.endpoint, token="hf_nope").upload_file(
                path_or_fileobj=b"x", path_in_repo="x", repo_id="org/new"
            )


def test_serve_directory_from_the_command_line(tmp_path: Path) -> None:
    repo_dir = tmp_path / "repo"
    (repo_dir / "vae").mkdir(parents=True)
    (repo_dir / "vae" / "w.bin").write_bytes(DATA)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest_ckpts.testing.hub", "--repo", f"org/served={repo_dir}"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(2)]
        assert lines[0].startswith("org/served: 1 files at commit ")
        endpoint = lines[1].split()[-1]
        got = hf_hub_download("org/served", "vae/w.bin", endpoint=endpoint, cache_dir=tmp_path)
        assert Path(got).read_bytes() == DATA
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_local_hub_fixture_in_a_user_suite(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from pathlib import Path

        import pytest
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import HfHubHTTPError

        def test_flaky_hub(local_hub, tmp_path):
            local_hub.add_file("org/models", "vae.ckpt", b"weights")
            local_hub.faults.fail_next(1, status=500, method="GET")
            with pytest.raises(HfHubHTTPError):
                hf_hub_download("org/models", "vae.ckpt", endpoint=local_hub.endpoint,
                                cache_dir=tmp_path)
            path = hf_hub_download("org/models", "vae.ckpt", endpoint=local_hub.endpoint,
                                   cache_dir=tmp_path)
            assert Path(path).read_bytes() == b"weights"
            assert local_hub.stats.bodies_served == 1
        """
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
