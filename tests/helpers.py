"""Helpers the test modules import: manifests on the local hub, a dead endpoint, the CLI.

Fixtures live in ``tests/conftest.py``; plain functions and constants here, imported as
``from tests.helpers import make_manifest``.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import subprocess
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pytest_ckpts import ManifestError, load_manifest
from pytest_ckpts.cli import main

if TYPE_CHECKING:
    from pytest_ckpts.testing import LocalHub
    from pytest_ckpts.testing.mlflow import ServerTracking

REPO = "acme/ckpts"

#: The plugins the suite's pytest runs use (pytester, docs pages); see unused_plugins.
USED_PLUGINS = frozenset(
    {"ckpts", "xdist", "xdist.looponfail", "randomly", "repeat", "timeout"}
    | {"pytest_jsonreport", "metadata"}
)


@functools.cache
def unused_plugins() -> tuple[str, ...]:
    """``-p no:NAME`` for every other installed pytest plugin (by entry point name).

    Measured here: ``pytest`` on one trivial test starts in 2.4 s with every installed
    plugin and 0.4 s without the ones this suite never uses; hypothesis alone imports
    itself for about 1 s (``python -X importtime``). Each subprocess run pays that.
    """
    from importlib.metadata import entry_points

    names = {ep.name for ep in entry_points(group="pytest11")} - USED_PLUGINS
    return tuple(f"-p no:{name}" for name in sorted(names))


def make_manifest(
    root: Path,
    hub: LocalHub | None,
    files: dict[str, bytes],
    *,
    pinned: bool = False,
    sha: dict[str, str | None] | None = None,
    endpoint: str | None = None,
    extra_config: str = "",
) -> Path:
    """Publish ``files`` (name -> bytes) on ``hub`` and write a manifest naming them.

    Each checkpoint ``name`` lives at ``weights/<name>.ckpt`` in ``REPO``. ``sha``
    overrides the recorded sha256 per name (None = placeholder).
    """
    commit = None
    if hub is not None and files:
        commit = hub.add_files(REPO, {f"weights/{n}.ckpt": data for n, data in files.items()})
    lines = ["checkpoints:"]
    for name, data in files.items():
        digest = hashlib.sha256(data).hexdigest()
        if sha is not None and name in sha:
            digest = sha[name] or "<to_be_calculated>"
        if digest != "<to_be_calculated>":
            digest = f'"{digest}"'
        lines += [
            f"  {name}:",
            f"    filename: {name}.ckpt",
            f"    hf_path: weights/{name}.ckpt",
            f"    sha256: {digest}",
            f'    description: "test checkpoint {name}"',
        ]
    if not files:
        lines[0] = "checkpoints: {}"
    lines += ["config:", f"  hf_repo: {REPO}", '  cache_dir: "./checkpoints"']
    ep = endpoint or (hub.endpoint if hub is not None else None)
    if ep:
        lines.append(f"  endpoint: {ep}")
    if pinned and commit:
        lines.append(f'  revision: "{commit}"')
    if extra_config:
        lines.append(extra_config)
    path = root / "checkpoints" / "checkpoints.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def dead_endpoint() -> str:
    """An http endpoint on 127.0.0.1 where nothing listens (connection refused)."""
    from pytest_ckpts.testing import LocalHub

    return LocalHub.dead_endpoint()


# twelve checkpoints of about 1 kB, for what small files cost
SMALL = {f"c{i:02d}": os.urandom(1000) + bytes([i]) for i in range(12)}


def fetch_quietly(project: Path, *names: str) -> None:
    """``pytest-ckpts fetch -q NAMES`` of the project's manifest, in this process; must succeed."""
    out = io.StringIO()
    code = main(
        ["--manifest", str(project / "checkpoints" / "checkpoints.yaml"), "fetch", "-q", *names],
        out=out,
    )
    assert code == 0, out.getvalue()


def cli(*args: str) -> tuple[int, str]:
    """Run ``pytest-ckpts ARGS`` in this process: (exit code, what it printed)."""
    out = io.StringIO()
    code = main(list(args), out=out)
    return code, out.getvalue()


class Mounts:
    """Mount helpers whose mounts are undone at teardown (most recent first)."""

    def __init__(self) -> None:
        self.points: list[Path] = []

    def _mount(self, *args: str) -> None:
        subprocess.run(["mount", *args], check=True, capture_output=True, text=True)

    def read_only(self, path: Path) -> None:
        """Make ``path`` (a directory) read-only in place: a bind mount onto itself."""
        self._mount("--bind", str(path), str(path))
        self.points.append(path)
        self._mount("-o", "remount,ro,bind", str(path))

    def tmpfs(self, path: Path, size: str) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self._mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
        self.points.append(path)

    def unmount_all(self) -> None:
        while self.points:
            point = self.points.pop()
            done = subprocess.run(["umount", str(point)], capture_output=True)
            if done.returncode != 0:  # something still has it open: detach it anyway
                subprocess.run(["umount", "-l", str(point)], capture_output=True)


# --------------------------------------------------------------------------- manifest text


def write_manifest_text(project: Path, text: str | bytes) -> Path:
    """Write ``project/checkpoints/checkpoints.yaml``: bytes as they are, text dedented."""
    path = project / "checkpoints" / "checkpoints.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def refused(path: Path) -> ManifestError:
    """Load ``path``, expect a ManifestError and check it is one line naming the file."""
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    message = str(info.value)
    assert "\n" not in message, message
    assert message.startswith("pytest-ckpts: invalid manifest "), message
    assert os.fspath(path) in message
    assert len(message) < 600, message
    return info.value


def one_entry(**keys: str) -> str:
    """A manifest with one entry ``a`` holding ``keys`` (values as YAML text)."""
    body = "".join(f"    {k}: {v}\n" for k, v in keys.items())
    return f"checkpoints:\n  a:\n{body}config: {{hf_repo: o/r}}\n"


# --------------------------------------------------------------------------- MLflow server


def logged(server: ServerTracking, method: str, path: str, expected: int) -> int:
    """How many matching requests the server logged, once ``expected`` are in (10 s at most).

    The server logs a request just after answering it, so the client can be faster.
    """
    deadline = time.monotonic() + 10
    while server.faults.count(method, path) < expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return server.faults.count(method, path)
