"""Mirror templates (pytest_ckpts.sources.template): placeholders, the default layout, escaping, credentials redacted; where the list of mirrors comes from."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

import pytest

from pytest_ckpts import load_manifest
from pytest_ckpts.errors import ManifestError
from pytest_ckpts.manifest import CheckpointSpec
from pytest_ckpts.settings import Settings
from pytest_ckpts.sources import parse_mirror, redact_url
from pytest_ckpts.store import Store
from tests.helpers import make_manifest

A = os.urandom(96 * 1024) + b"a"


def spec(**changes: object) -> CheckpointSpec:
    values: dict[str, object] = {
        "name": "vae",
        "filename": "vae.ckpt",
        "hf_path": "mp_20/vae/vae.ckpt",
        "sha256": "ab" * 32,
        "description": "",
        "repo": "acme/ckpts",
        "revision": "refs/pr/3",
        "repo_type": "model",
        "size": None,
    }
    values.update(changes)
    return CheckpointSpec(**values)  # type: ignore[arg-type]


def test_template_placeholders_default_layout_and_escaping() -> None:
    assert parse_mirror("/mnt/ckpts", source="t").template == "/mnt/ckpts/{sha256}"
    assert parse_mirror("s3://bucket/ckpts/", source="t").template == "s3://bucket/ckpts/{sha256}"
    m = parse_mirror("https://cdn.example/c/{repo}/{revision}/{path}?x={name}", source="t")
    assert m.url(spec()) == (
        "https://cdn.example/c/acme/ckpts/refs%2Fpr%2F3/mp_20/vae/vae.ckpt?x=vae"
    )
    folder = parse_mirror("file:///srv/m/{repo}/{filename}", source="t")
    assert folder.url(spec()) == "/srv/m/acme/ckpts/vae.ckpt"
    # what the manifest puts in cannot change the host or leave the prefix
    hostile = spec(hf_path="a/../../../etc/passwd")
    with pytest.raises(ValueError, match="components are refused"):
        folder.url(hostile)
    with pytest.raises(ValueError, match="components are refused"):
        m.url(hostile)
    assert m.url(spec(name="x?y#z@evil.com")).endswith("?x=x%3Fy%23z%40evil.com")
    assert m.url(spec(hf_path="a%2F..%2Fb")).split("/c/")[0] == "https://cdn.example"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("https://{repo}.example.com/x", "placeholders may only follow the host"),
        ("https://host/{sha}", "unknown placeholder {sha}"),
        ("s3://{name}/x", "placeholders may only follow the host"),
        ("https://host/{sha256", "expected '}'"),
    ],
)
def test_bad_templates_name_the_source(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match="from --ckpts-mirror") as info:
        parse_mirror(text, source="--ckpts-mirror")
    assert problem in str(info.value)


def test_credentials_are_redacted() -> None:
    text = "see https://user:hunter2@host/x?X-Amz-Signature=abc&k=v and s3://AKIA:sec@b/k"
    shown = redact_url(text)
    assert "hunter2" not in shown
    assert "abc" not in shown
    assert "sec@" not in shown
    assert "https://***@host/x?X-Amz-Signature=***&k=***" in shown
    m = parse_mirror("https://user:hunter2@host/c", source="t")
    assert "hunter2" not in m.label
    assert "hunter2" not in repr(m)


def test_settings_precedence_higher_source_replaces_the_list(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = make_manifest(
        project, None, {"a": A}, extra_config='  mirrors: ["/srv/one", "/srv/two/{sha256}"]'
    )
    manifest = load_manifest(path)
    assert manifest.mirrors == ("/srv/one", "/srv/two/{sha256}")
    monkeypatch.setenv("PYTEST_CKPTS_MANIFEST", str(path))
    assert Store.from_settings(manifest, Settings.from_env()).mirrors == manifest.mirrors
    env = {"PYTEST_CKPTS_MIRRORS": "  /srv/e1\n/srv/e2 ", "PYTEST_CKPTS_MANIFEST": str(path)}
    settings = Settings.from_env(env)
    assert (settings.mirrors, settings.source("mirrors")) == (
        ("/srv/e1", "/srv/e2"),
        "PYTEST_CKPTS_MIRRORS",
    )
    assert Store.from_settings(manifest, settings).mirrors == ("/srv/e1", "/srv/e2")
    off = Settings.from_env({**env, "PYTEST_CKPTS_MIRRORS": ""})
    assert Store.from_settings(manifest, off).mirrors == ()

    class Args:
        mirror: ClassVar[list[str]] = ["/srv/cli"]

    monkeypatch.setenv("PYTEST_CKPTS_MIRRORS", "/srv/e1")
    cli = Settings.from_args(Args())
    assert (cli.mirrors, cli.source("mirrors")) == (("/srv/cli",), "--mirror")
    Args.mirror = [""]
    assert Settings.from_args(Args()).mirrors == ()
    with pytest.raises(ValueError, match=r"env PYTEST_CKPTS_MIRRORS.*unknown placeholder"):
        Settings.from_env({"PYTEST_CKPTS_MIRRORS": "/srv/{nope}"})


def test_manifest_mirrors_must_be_a_list_of_templates(project: Path) -> None:
    path = make_manifest(project, None, {"a": A}, extra_config="  mirrors: /srv/one")
    with pytest.raises(ManifestError, match="key 'mirrors': must be a list"):
        load_manifest(path)
    path.write_text(path.read_text().replace("mirrors: /srv/one", 'mirrors: ["/s/{bad}"]'))
    with pytest.raises(ManifestError, match=r"key 'mirrors'.*unknown placeholder \{bad\}"):
        load_manifest(path)
