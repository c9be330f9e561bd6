"""pytest_ckpts.cachekey: the CI cache key ignores how the manifest is written and changes with what it pins."""

from __future__ import annotations

import os
from pathlib import Path

from pytest_ckpts.cli import main
from tests.helpers import dead_endpoint, make_manifest

FILES = {name: os.urandom(16 * 1024) + name.encode() for name in ("vae", "ldm")}


def _key(manifest: Path, *names: str) -> str:
    import io

    out = io.StringIO()
    assert main(["--manifest", str(manifest), "cache", "key", *names], out=out) == 0
    return out.getvalue().strip()


def test_cache_key_ignores_presentation_and_changes_with_content(project: Path) -> None:
    endpoint = dead_endpoint()  # no network is used
    path = make_manifest(project, None, FILES, endpoint=endpoint)
    key = _key(path)
    assert len(key) == 64
    text = path.read_text()
    # reorder entries, add comments, change descriptions, local names and cache_dir
    body = text.split("config:")[0]
    vae = body[body.index("  vae:") : body.index("  ldm:")]
    ldm = body[body.index("  ldm:") :]
    reordered = (
        "# a comment\ncheckpoints:\n"
        + ldm.replace("test checkpoint ldm", "other words")
        + vae.replace("filename: vae.ckpt", "filename: renamed.ckpt")
        + "config:"
        + text.split("config:")[1].replace("./checkpoints", "./elsewhere")
    )
    path.write_text(reordered)
    assert _key(path) == key
    path.write_text(text.replace("weights/vae.ckpt", "weights/vae2.ckpt"))
    assert _key(path) != key
    path.write_text(text + '  revision: "' + "b" * 40 + '"\n')
    assert _key(path) != key
    path.write_text(text.replace(endpoint, "http://127.0.0.1:1"))
    assert _key(path) != key
    path.write_text(text)
    assert _key(path, "vae") != key  # a subset is a different cache
