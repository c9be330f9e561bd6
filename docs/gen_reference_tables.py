"""The descriptions the code does not carry, for ``docs/gen_reference.py``.

The keys themselves come from the code (manifest key declarations, the report rows of
``pytest_ckpts.stats``, ``pytest_ckpts.settings``); a key the code declares and a table
here lacks is rendered as "not documented yet" and fails
``tests/test_docs_reference.py``. Add the description here and regenerate.
"""

from __future__ import annotations

from typing import Any

#: Manifest keys: what the code does not say in words. Key: "where.key".
MANIFEST_KEYS: dict[str, str] = {
    "top.checkpoints": "Mapping of checkpoint name to entry (required). Names use letters, "
    "digits, `_`, `-` and `.`.",
    "top.config": "Settings shared by every entry (optional).",
    "entry.filename": "Local file name. Default: the last part of `hf_path`. Relative, "
    "without `..`, `\\` or a drive letter.",
    "entry.hf_path": "Path of the file inside the hub repo (required). Relative, without "
    "`..`, `\\` or a drive letter.",
    "entry.sha256": "64 hex digits, or `<to_be_calculated>` (the same as missing): "
    "unverified, warned about once per run, an error under `--ckpts-strict`. "
    "`pytest-ckpts lock` fills it in. Quote a hash that is all digits.",
    "entry.description": "Free text shown by `pytest-ckpts list`.",
    "entry.repo": "Hub repo id of this entry. Default: `config.hf_repo`.",
    "entry.revision": "Branch, tag or 40-hex commit. Default: `config.revision`. A commit "
    "pins the file: a warm run makes no HTTP request. `pytest-ckpts lock --pin` pins it.",
    "entry.repo_type": "`model` or `dataset`. Default: `config.repo_type`.",
    "entry.size": "Size in bytes (informational; shown before a download).",
    "entry.tensor_index": "64 hex: sha256 of `checkpoints/tensors/<name>.json`, written by "
    "`pytest-ckpts lock --tensors NAME`; needed for partial reads.",
    "config.hf_repo": "Default repo id (required unless every entry has `repo`).",
    "config.cache_dir": "Cache directory, relative to the project root (never the cwd). "
    "Overridden by `--ckpts-cache-dir` / `PYTEST_CKPTS_CACHE_DIR`.",
    "config.revision": "Default revision of every entry. Default: `main`.",
    "config.endpoint": "Hub URL (a private hub). Default: env `HF_ENDPOINT`, else "
    "`https://huggingface.co`. Gets `HF_TOKEN` only when you opt in "
    "(`ckpts_trust_manifest_endpoint`).",
    "config.repo_type": "Default repo type of every entry: `model` (default) or `dataset`.",
    "config.mirrors": "List of mirror URL templates (a folder, `file://`, `http(s)://`, "
    "`s3://`, `gs://`) tried in order before the hub, for entries with a sha256; "
    "placeholders `{sha256}` `{name}` `{repo}` `{revision}` `{path}` `{filename}`, default "
    "layout `/{sha256}`. Replaced by `PYTEST_CKPTS_MIRRORS` / `--ckpts-mirror`. See "
    "[Mirrors](../mirrors.md).",
}

#: JSON report fields (``--ckpts-report``): JSON Schema type and meaning.
REPORT_FIELDS: dict[str, tuple[Any, str]] = {
    "name": ("string", "Checkpoint name from the manifest."),
    "status": ("string", "What this run did with it (see the statuses below)."),
    "sha256": (["string", "null"], "sha256 of the file used, when known."),
    "commit": (["string", "null"], "Commit the file was resolved at, when known."),
    "bytes": ("integer", "Bytes this run transferred for it (0 when cached)."),
    "size": (["integer", "null"], "Size of the whole file, when known."),
    "seconds": ("number", "Time spent resolving it in this run."),
    "reason": (["string", "null"], "Why it was skipped, failed or served stale; else null."),
    "source": (
        ["string", "null"],
        "Where the bytes came from: `cache`, `hub` or the mirror URL (credentials "
        "redacted); null when nothing was served.",
    ),
}

#: A note under the options summary: value options and pytest's rootdir.
OPTIONS_NOTE = (
    "Give a path or URL value with `=` (`--ckpts-report=PATH`, `--ckpts-mirror=URL`, "
    "`--ckpts-manifest=PATH`, `--ckpts-cache-dir=DIR`): pytest picks rootdir (and with it "
    "the ini file, the conftest cut-off and the default manifest) from the command line "
    "before it loads plugins, when these options are not known yet, so after a space an "
    "existing path is taken for a test path and rootdir moves towards it. The `=` form is "
    "read as one option whatever the order. Details: "
    "[Reports for fleets](../how-to/ci.md#reports-for-fleets)."
)

#: Metavars of options whose value is a path or URL: shown as ``--opt=VALUE``.
EQUALS_METAVARS: frozenset[str] = frozenset({"PATH", "DIR", "URL"})

#: Report statuses (the values come from ``pytest_ckpts.stats.STATUSES``).
REPORT_STATUSES: dict[str, str] = {
    "downloaded": "fetched from a source and verified in this run",
    "cached": "a verified copy in the cache was used",
    "stale": "the hub could not resolve the branch; a verified copy of the commit it last "
    "resolved to was used",
    "skipped": "not available; the tests that needed it were skipped",
    "failed": "an error (checksum mismatch, `--ckpts=require`, a local failure)",
}

#: Environment variables pytest-ckpts reads that are not ``PYTEST_CKPTS_*`` settings.
OTHER_ENV: dict[str, str] = {
    "SKIP_CHECKPOINT_DOWNLOAD": "`true`: mode `skip` unless `--ckpts` says otherwise "
    "(CI's kill switch).",
    "HF_HUB_OFFLINE": "`1`: the default mode becomes `offline`.",
    "HF_ENDPOINT": "Hub URL for manifests without `config.endpoint` (the machine-wide "
    "mirror setting).",
    "HF_TOKEN": "Hub token (or the token file of `hf auth login`), read per request, "
    "never printed; sent only to the public hub or `HF_ENDPOINT` unless you opt in.",
    "GITHUB_STEP_SUMMARY": "When set, a markdown table of every checkpoint is appended "
    "to this file.",
    "SOURCE_DATE_EPOCH": "Member mtime of checkpoint archives (deterministic archives).",
    "MLFLOW_TRACKING_URI": "MLflow tracking URI for uploads (beats `mlflow.yaml`).",
    "MLFLOW_RUN_ID": "Run to upload to when no run is active.",
    "MLFLOW_SKIP_ARTIFACT_LOGGING": "`true`: uploads do nothing and return `False`.",
}

#: Modules documented with mkdocstrings (public API), in page order: (page, title, modules).
API_PAGES: list[tuple[str, str, list[str]]] = [
    ("api.md", "Library API: `pytest_ckpts`", ["pytest_ckpts"]),
    ("api-archive.md", "Archives: `pytest_ckpts.archive`", ["pytest_ckpts.archive"]),
    ("api-uploads.md", "MLflow uploads: `pytest_ckpts.uploads`", ["pytest_ckpts.uploads"]),
    (
        "api-experiments.md",
        "Experiment directories: `pytest_ckpts.experiments`",
        ["pytest_ckpts.experiments", "pytest_ckpts.testing.experiments"],
    ),
    ("api-baseline.md", "Baselines: `pytest_ckpts.baseline`", ["pytest_ckpts.baseline"]),
    ("api-testing.md", "Test doubles: `pytest_ckpts.testing`", ["pytest_ckpts.testing"]),
]
