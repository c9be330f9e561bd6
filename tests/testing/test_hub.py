"""The local hub stand-in, exercised by the real huggingface_hub client over HTTP."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from pytest_ckpts.testing import LocalHub

REPO = "org/models"
DATA = os.urandom(100_000)


def download(
    hub: LocalHub,
    cache: Path,
    path: str = "w.bin",
    *,
    repo: str = REPO,
    revision: str | None = None,
    token: str | None = None,
    repo_type: str | None = None,
) -> Path:
    return Path(
        hf_hub_download(
            repo,
            path,
            revision=revision,
            token=token,
            repo_type=repo_type,
            endpoint=hub.endpoint,
            cache_dir=cache,
        )
    )


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@pytest.fixture
def no_xet(monkeypatch: pytest.MonkeyPatch) -> None:
    """LFS uploads over HTTP: with hf_xet installed the client would upload to Xet storage."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)


# --------------------------------------------------------------------------- downloads


def test_round_trip_names_blob_after_sha256(hub: LocalHub, tmp_path: Path) -> None:
    commit = hub.add_file(REPO, "w.bin", DATA)
    got = download(hub, tmp_path)
    assert got.read_bytes() == DATA
    assert got.resolve().name == hashlib.sha256(DATA).hexdigest()
    assert got.parent.name == commit
    # measured: one HEAD (metadata) and one GET (body) per cold download
    assert [(r.method, r.status, r.body) for r in hub.stats.requests] == [
        ("HEAD", 200, False),
        ("GET", 200, True),
    ]
    assert hub.stats.bodies_served == 1
    assert hub.stats.bytes_served == len(DATA)
    assert hub.file_bytes(REPO, "w.bin") == DATA


def test_lfs_and_regular_files_look_like_the_real_hub(hub: LocalHub, tmp_path: Path) -> None:
    config = b'{"hidden": 8}\n'
    hub.add_files(REPO, {"w.bin": DATA, "config.json": config, "notes.txt": b"\0binary"})
    url = f"{hub.endpoint}/{REPO}/resolve/main"
    lfs = httpx2.head(f"{url}/w.bin").headers
    assert lfs["X-Linked-Etag"] == lfs["ETag"] == f'"{hashlib.sha256(DATA).hexdigest()}"'
    assert lfs["X-Linked-Size"] == lfs["Content-Length"] == str(len(DATA))
    assert lfs["Accept-Ranges"] == "bytes"
    assert lfs["X-Repo-Commit"] == hub.commit_sha(REPO)
    assert not [h for h in lfs if h.lower().startswith("x-xet")]
    regular = httpx2.head(f"{url}/config.json").headers
    assert regular["ETag"] == f'"{git_blob_id(config)}"'
    assert "X-Linked-Etag" not in regular
    assert "X-Linked-Etag" in httpx2.head(f"{url}/notes.txt").headers  # binary content: LFS
    # the client names a regular file's blob after its git blob id, as on the real hub
    got = download(hub, tmp_path, "config.json")
    assert got.read_bytes() == config
    assert got.resolve().name == git_blob_id(config)


def test_pinned_commit_warm_call_makes_no_request(hub: LocalHub, tmp_path: Path) -> None:
    commit = hub.add_file(REPO, "w.bin", DATA)
    download(hub, tmp_path, revision=commit)
    hub.stats.reset()
    download(hub, tmp_path, revision=commit)
    assert hub.stats.request_count == 0
    download(hub, tmp_path)  # a branch costs one HEAD per file
    assert [r.method for r in hub.stats.requests] == ["HEAD"]


def test_commits_are_deterministic_and_branches_move(tmp_path: Path) -> None:
    source = tmp_path / "w.bin"
    source.write_bytes(DATA)
    with LocalHub() as a, LocalHub() as b:
        first = a.add_file(REPO, "w.bin", DATA, message="one")
        assert first == b.add_file(REPO, "w.bin", source, message="another")  # path or bytes
        assert len(first) == 40
        second = a.add_file(REPO, "x.bin", b"more")
        assert second != first
        assert a.commit_sha(REPO) == second
        assert a.commit_sha(REPO, first) == first
        with pytest.raises(KeyError):
            a.commit_sha(REPO, "nobranch")
        # the old commit still serves its tree
        assert download(a, tmp_path / "c", revision=first).read_bytes() == DATA
        with pytest.raises(EntryNotFoundError):
            download(a, tmp_path / "c", "x.bin", revision=first)


def test_range_requests(hub: LocalHub) -> None:
    hub.add_file(REPO, "w.bin", DATA)
    url = f"{hub.endpoint}/{REPO}/resolve/main/w.bin"
    r = httpx2.get(url, headers={"Range": "bytes=10-19"})
    assert r.status_code == 206
    assert r.content == DATA[10:20]
    assert r.headers["Content-Range"] == f"bytes 10-19/{len(DATA)}"
    r = httpx2.get(url, headers={"Range": "bytes=99990-"})
    assert (r.status_code, r.content) == (206, DATA[99990:])
    r = httpx2.get(url, headers={"Range": "bytes=-5"})
    assert r.content == DATA[-5:]
    assert httpx2.get(url, headers={"Range": f"bytes={len(DATA)}-"}).status_code == 416
    assert [r.range for r in hub.stats.requests][:2] == ["bytes=10-19", "bytes=99990-"]
    assert hub.stats.bodies_served == 3
    assert sum(r.bytes_sent for r in hub.stats.requests if r.body) == 10 + 10 + 5


def test_clean_close_mid_body_is_retried_by_the_client(hub: LocalHub, tmp_path: Path) -> None:
    data = os.urandom(2 * 1024 * 1024)
    hub.add_file(REPO, "w.bin", data)
    hub.faults.drop_next(1, after_bytes=512 * 1024, reset=False)
    assert download(hub, tmp_path).read_bytes() == data
    # measured on huggingface_hub 2.4.0: it logs "Trying to resume download..." but
    # asks for the whole file again (no Range header)
    bodies = [(r.range, r.bytes_sent) for r in hub.stats.requests if r.body]
    assert bodies == [(None, 512 * 1024), (None, len(data))]


@pytest.mark.parametrize(
    ("repo", "revision", "path", "error"),
    [
        ("org/missing", "main", "w.bin", RepositoryNotFoundError),
        (REPO, "nobranch", "w.bin", RevisionNotFoundError),
        (REPO, "f" * 40, "w.bin", RevisionNotFoundError),
        (REPO, "main", "nofile.bin", EntryNotFoundError),
    ],
)
def test_not_found_kinds_map_to_client_exceptions(
    hub: LocalHub, tmp_path: Path, repo: str, revision: str, path: str, error: type[Exception]
) -> None:
    hub.add_file(REPO, "w.bin", DATA)
    with pytest.raises(error):
        download(hub, tmp_path, path, repo=repo, revision=revision)


def test_datasets_and_single_name_repos(hub: LocalHub, tmp_path: Path) -> None:
    hub.add_file("org/data", "train/part.parquet", b"rows", repo_type="dataset")
    hub.add_file("gpt0", "w.bin", DATA)
    got = download(hub, tmp_path, "train/part.parquet", repo="org/data", repo_type="dataset")
    assert got.read_bytes() == b"rows"
    assert download(hub, tmp_path, repo="gpt0").read_bytes() == DATA
    with pytest.raises(RepositoryNotFoundError):  # not a model repo
        download(hub, tmp_path, "train/part.parquet", repo="org/data")
    info = HfApi(endpoint=hub.endpoint).dataset_info("org/data")
    assert info.sha == hub.commit_sha("org/data", repo_type="dataset")


# --------------------------------------------------------------------------- auth


def test_token_required_and_never_echoed(tmp_path: Path) -> None:
    with LocalHub(token="hf_right") as hub:
        hub.add_file(REPO, "w.bin", DATA)
        # no token: looks like a missing repo, as on the real hub
        with pytest.raises(RepositoryNotFoundError) as missing:
            download(hub, tmp_path)
        assert missing.value.response.status_code == 401
        # a wrong token: "Invalid credentials", a plain HfHubHTTPError
        with pytest.raises(HfHubHTTPError) as wrong:
            download(hub, tmp_path, token="hf_wrong_secret")
        assert not isinstance(wrong.value, RepositoryNotFoundError)
        assert wrong.value.response.status_code == 401
        assert "Invalid credentials" in str(wrong.value)
        assert "hf_wrong_secret" not in str(wrong.value)
        assert "hf_right" not in str(wrong.value) + str(missing.value)
        assert download(hub, tmp_path, token="hf_right").read_bytes() == DATA
        with pytest.raises(HfHubHTTPError) as info:
            HfApi(endpoint=hub.endpoint, token="hf_wrong_secret").model_info(REPO)
        assert info.value.response.status_code == 401


def test_private_repo_needs_a_token(hub: LocalHub, tmp_path: Path) -> None:
    hub.create_repo(REPO, private=True)
    hub.add_file(REPO, "w.bin", DATA)
    with pytest.raises(RepositoryNotFoundError):
        download(hub, tmp_path)
    assert download(hub, tmp_path, token="hf_any").read_bytes() == DATA
    assert HfApi(endpoint=hub.endpoint, token="hf_any").model_info(REPO).private is True


# --------------------------------------------------------------------------- faults


def test_fail_next_then_recover(hub: LocalHub, tmp_path: Path) -> None:
    hub.add_file(REPO, "w.bin", DATA)
    hub.faults.fail_next(1, status=503, method="GET")  # the client does not retry a 5xx GET
    with pytest.raises(HfHubHTTPError) as info:
        download(hub, tmp_path)
    assert info.value.response.status_code == 503
    assert download(hub, tmp_path).read_bytes() == DATA
    assert [(r.method, r.status) for r in hub.stats.requests] == [
        ("HEAD", 200),
        ("GET", 503),
        ("HEAD", 200),
        ("GET", 200),
    ]


def test_delay_applies_to_matching_requests_only(
    hub: LocalHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    waits: list[float] = []  # the hub's waits, recorded instead of slept

    def wait_stopping(seconds: float) -> bool:
        waits.append(seconds)
        return False  # not stopping: the request goes on

    monkeypatch.setattr(hub, "wait_stopping", wait_stopping)
    hub.add_file(REPO, "w.bin", DATA)
    hub.add_file(REPO, "x.bin", b"x")
    hub.faults.delay(0.4, n=2, path_contains="w.bin")  # the HEAD and the GET
    download(hub, tmp_path)
    assert waits == [0.4, 0.4]
    download(hub, tmp_path, "x.bin")
    download(hub, tmp_path / "again")  # the fault is used up
    assert waits == [0.4, 0.4]


def test_drop_mid_body_leaves_no_complete_file(hub: LocalHub, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024)
    hub.add_file(REPO, "w.bin", data)
    hub.faults.drop_next(1, after_bytes=1024 * 1024)
    # measured on huggingface_hub 2.4.0: an RST mid-body raises httpx2.ReadError (not
    # an OSError, not HfHubHTTPError) and the partial file is deleted
    with pytest.raises(httpx2.ReadError):
        download(hub, tmp_path)
    assert not list(tmp_path.rglob("w.bin"))
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and "blobs" in p.parts]
    assert hub.stats.bodies_served == 1
    assert hub.stats.bytes_served == 1024 * 1024
    assert download(hub, tmp_path).read_bytes() == data


def test_corrupt_body_same_length(hub: LocalHub, tmp_path: Path) -> None:
    hub.add_file(REPO, "w.bin", DATA)
    hub.faults.corrupt_next(1, path_contains="w.bin")
    got = download(hub, tmp_path).read_bytes()
    assert len(got) == len(DATA)
    assert got != DATA
    assert sum(a != b for a, b in zip(got, DATA, strict=True)) == 1
    assert hub.file_bytes(REPO, "w.bin") == DATA


def test_faults_match_and_clear(hub: LocalHub) -> None:
    hub.add_file(REPO, "w.bin", DATA)
    url = f"{hub.endpoint}/{REPO}/resolve/main/w.bin"
    hub.faults.fail_next(1, status=500, path_contains="other.bin")
    hub.faults.fail_next(2, status=429, method="HEAD")
    assert httpx2.get(url).status_code == 200
    assert [httpx2.head(url).status_code for _ in range(3)] == [429, 429, 200]
    hub.faults.clear()
    assert httpx2.get(url.replace("w.bin", "other.bin")).status_code == 404
    assert hub.stats.count("HEAD") == 3
    assert hub.stats.count(path_contains="other.bin") == 1


# --------------------------------------------------------------------------- streaming


def test_path_backed_file_is_streamed(hub: LocalHub, tmp_path: Path) -> None:
    source = tmp_path / "big.bin"
    chunk = os.urandom(1024 * 1024)
    with source.open("wb") as f:
        for _ in range(20):
            f.write(chunk)
    hub.add_file(REPO, "big.bin", source)
    tracemalloc.start()  # the client buffers 10 MiB chunks: measure the hub alone
    try:
        url = f"{hub.endpoint}/{REPO}/resolve/main/big.bin"
        with httpx2.stream("GET", url) as response:
            received = sum(len(b) for b in response.iter_bytes(64 * 1024))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert received == 20 * 1024 * 1024
    assert peak < 8 * 1024 * 1024  # measured ~2 MiB; holding the file would be 20 MiB
    got = download(hub, tmp_path / "cache", "big.bin")
    assert got.stat().st_size == 20 * 1024 * 1024
    assert got.resolve().name == hashlib.sha256(chunk * 20).hexdigest()
    assert hub.stats.bodies_served == 2
    assert hub.stats.bytes_served == 2 * 20 * 1024 * 1024


def test_stop_cuts_kept_alive_connections_and_delayed_requests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = LocalHub().start()
    held = threading.Event()  # set once the GET is held by the delay
    wait_stopping = hub.wait_stopping

    def holding(seconds: float) -> bool:
        held.set()
        return wait_stopping(seconds)

    monkeypatch.setattr(hub, "wait_stopping", holding)
    hub.add_file(REPO, "w.bin", DATA)
    url = f"{hub.endpoint}/{REPO}/resolve/main/w.bin"
    with httpx2.Client() as client:
        assert client.head(url).status_code == 200  # the connection stays in the pool
        hub.faults.delay(30, path_contains="w.bin")
        errors: list[BaseException] = []

        def slow() -> None:
            try:
                httpx2.get(url, timeout=60)
            except httpx2.HTTPError as exc:
                errors.append(exc)

        thread = threading.Thread(target=slow)
        thread.start()
        assert held.wait(30)
        hub.stop()
        thread.join(timeout=10)  # not the 30 s delay
        assert not thread.is_alive()
        assert errors
        with pytest.raises(httpx2.TransportError):
            client.head(url)


# --------------------------------------------------------------------------- API & uploads


def test_model_info_probe(hub: LocalHub) -> None:
    commit = hub.add_files(REPO, {"a.bin": b"a", "dir/b.bin": b"bb", "dir/sub/c.txt": b"c"})
    api = HfApi(endpoint=hub.endpoint)
    info = api.model_info(REPO)
    assert info.sha == commit
    assert sorted((s.rfilename, s.size) for s in info.siblings or []) == [
        ("a.bin", 1),
        ("dir/b.bin", 2),
        ("dir/sub/c.txt", 1),
    ]
    assert api.model_info(REPO, revision=commit).sha == commit
    assert sorted(api.list_repo_files(REPO)) == ["a.bin", "dir/b.bin", "dir/sub/c.txt"]
    top = {f.path for f in api.list_repo_tree(REPO, path_in_repo="dir")}
    assert top == {"dir/b.bin", "dir/sub"}
    assert api.repo_exists(REPO)
    assert not api.repo_exists("org/nothing")
    assert api.file_exists(REPO, "dir/b.bin")
    assert not api.file_exists(REPO, "nope")
    # the lead's probe: a plain GET on the revision route answers with the commit
    r = httpx2.get(f"{hub.endpoint}/api/models/{REPO}/revision/main")
    assert (r.status_code, r.json()["sha"], r.json()["private"]) == (200, commit, False)
    r = httpx2.get(f"{hub.endpoint}/api/models/{REPO}/revision/nope")
    assert (r.status_code, r.headers["X-Error-Code"]) == (404, "RevisionNotFound")


def test_upload_regular_file_with_the_unmodified_client(tmp_path: Path) -> None:
    """Small text files are regular git files: no LFS, so no Xet, even with hf_xet installed."""
    with LocalHub(token="hf_write") as hub:
        api = HfApi(endpoint=hub.endpoint, token="hf_write")
        api.create_repo("org/new")
        info = api.upload_file(
            path_or_fileobj=b'{"a": 1}', path_in_repo="config.json", repo_id="org/new"
        )
        assert info.oid == hub.commit_sha("org/new")
        assert info.commit_url.endswith(f"/org/new/commit/{info.oid}")
        got = download(hub, tmp_path, "config.json", repo="org/new", token="hf_write")
        assert got.read_bytes() == b'{"a": 1}'
        # the same content again: preupload's oid lets the client skip the commit
        again = api.upload_file(
            path_or_fileobj=b'{"a": 1}', path_in_repo="config.json", repo_id="org/new"
        )
        assert again.oid == info.oid
        assert hub.stats.count("POST", "/commit/") == 1


@pytest.mark.usefixtures("no_xet")
@pytest.mark.parametrize("size", [100, 3 * 1024 * 1024], ids=["small", "large"])
def test_upload_lfs_file_then_download(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    with LocalHub(token="hf_write", upload_dir=tmp_path) as hub:
        api = HfApi(endpoint=hub.endpoint, token="hf_write")
        api.create_repo("org/new", private=True)
        info = api.upload_file(path_or_fileobj=data, path_in_repo="m/w.bin", repo_id="org/new")
        assert info.oid == hub.commit_sha("org/new")
        assert hub.stats.count("POST", "/info/lfs/objects/batch") == 1
        assert hub.stats.count("PUT", "/lfs-upload/") == 1
        assert hub.file_bytes("org/new", "m/w.bin") == data
        got = download(hub, tmp_path, "m/w.bin", repo="org/new", token="hf_write")
        assert got.read_bytes() == data
        assert got.resolve().name == hashlib.sha256(data).hexdigest()
        for token in (None, "hf_nope"):
            with pytest.raises(HfHubHTTPError) as denied:
                HfApi(endpoint=hub.endpoint, token=token).upload_file(
                    path_or_fileobj=b"x", path_in_repo="x.bin", repo_id="org/new"
                )
            assert denied.value.response.status_code == 401


@pytest.mark.usefixtures("no_xet")
def test_create_commit_adds_and_deletes(tmp_path: Path) -> None:
    with LocalHub(upload_dir=tmp_path) as hub:
        first = hub.add_files(REPO, {"old.bin": b"old", "keep.txt": b"keep"})
        api = HfApi(endpoint=hub.endpoint)
        info = api.create_commit(
            REPO,
            operations=[
                CommitOperationAdd("new/w.safetensors", DATA),
                CommitOperationAdd("README.md", b"# models\n"),
                CommitOperationDelete("old.bin"),
            ],
            commit_message="swap",
            parent_commit=first,
        )
        files = sorted(api.list_repo_files(REPO))
        assert files == ["README.md", "keep.txt", "new/w.safetensors"]
        got = download(hub, tmp_path / "c", "new/w.safetensors", revision=info.oid)
        assert got.read_bytes() == DATA
        with pytest.raises(HfHubHTTPError) as stale:  # the branch moved since `first`
            api.create_commit(
                REPO,
                operations=[CommitOperationDelete("keep.txt")],
                commit_message="x",
                parent_commit=first,
            )
        assert stale.value.response.status_code == 412
        assert list(tmp_path.glob("pytest-ckpts-hub-*"))  # LFS uploads spilled here...
    assert not list(tmp_path.glob("pytest-ckpts-hub-*"))  # ...and removed by stop()


# --------------------------------------------------------------------------- processes


def test_telemetry_call_only_without_the_kill_switch(hub: LocalHub, tmp_path: Path) -> None:
    """SPEC §11: the client asks HF_ENDPOINT (read at import) for /api/agent-harnesses."""
    hub.add_file(REPO, "w.bin", DATA)
    code = (
        "from huggingface_hub import hf_hub_download as d;"
        f"d({REPO!r}, 'w.bin', endpoint={hub.endpoint!r}, cache_dir={str(tmp_path / 'c')!r})"
    )
    env = {k: v for k, v in os.environ.items() if "TELEMETRY" not in k}
    for disabled in (True, False):
        hub.stats.reset()
        extra = {"HF_HUB_DISABLE_TELEMETRY": "1"} if disabled else {}
        home = tmp_path / f"home-{disabled}"
        subprocess.run(
            [sys.executable, "-c", code],
            env={**env, **extra, "HF_ENDPOINT": hub.endpoint, "HF_HOME": str(home)},
            check=True,
            timeout=60,
        )
        calls = hub.stats.count("GET", "/api/agent-harnesses")
        assert calls == (0 if disabled else 1)


@pytest.fixture
def served_dir(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    repo_dir = tmp_path / "repo"
    (repo_dir / "vae").mkdir(parents=True)
    (repo_dir / "vae" / "w.bin").write_bytes(DATA)
    (repo_dir / ".git").mkdir()
    (repo_dir / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest_ckpts.testing.hub", "--repo", f"org/served={repo_dir}"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        yield proc, [proc.stdout.readline() for _ in range(3)]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()


def test_serve_directory_from_the_command_line(
    served_dir: tuple[subprocess.Popen[str], list[str]], tmp_path: Path
) -> None:
    proc, lines = served_dir
    assert lines[0].startswith("org/served: 1 file at commit ")  # dot-dirs skipped
    commit = lines[0].split()[-1]
    endpoint = lines[1].split()[-1]
    assert lines[2].strip() == f"export HF_ENDPOINT={endpoint}"
    got = hf_hub_download(
        "org/served", "vae/w.bin", revision=commit, endpoint=endpoint, cache_dir=tmp_path
    )
    assert Path(got).read_bytes() == DATA
    with LocalHub() as same:  # the same files pin the same commit in any process
        assert same.add_file("org/served", "vae/w.bin", DATA) == commit
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0  # SIGTERM shuts down cleanly, like Ctrl-C


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
