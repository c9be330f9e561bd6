"""Renderers of the reference pages: manifest keys, report schema, errors, API."""

from __future__ import annotations

import inspect
from typing import Any

from gen_reference_render import UNDOCUMENTED, banner, md_escape, rst_to_md
from gen_reference_tables import MANIFEST_KEYS, REPORT_FIELDS, REPORT_STATUSES

# --------------------------------------------------------------------------- manifest


def manifest_keys() -> dict[str, tuple[str, ...]]:
    """The key declarations of ``pytest_ckpts.manifest``, by where they are allowed."""
    from pytest_ckpts import manifest

    return {
        "top": manifest._TOP_KEYS,
        "entry": manifest._ENTRY_KEYS,
        "config": manifest._CONFIG_KEYS,
    }


def render_manifest() -> str:
    from pytest_ckpts import _yaml, manifest

    titles = {
        "top": ("Top level", ""),
        "entry": ("Entry keys (`checkpoints.<name>.*`)", "checkpoints.NAME."),
        "config": ("`config` keys", "config."),
    }
    out = [
        banner(),
        "# Manifest keys",
        "",
        f"`{manifest.DEFAULT_MANIFEST.as_posix()}`, as `pytest_ckpts.manifest` validates it. "
        "Any other key is an error naming the file, line, entry and key, with the closest "
        "allowed key.",
        "",
    ]
    for where, keys in manifest_keys().items():
        title, prefix = titles[where]
        out += [f"## {title}", "", "| key | meaning |", "|---|---|"]
        for key in keys:
            text = MANIFEST_KEYS.get(f"{where}.{key}") or UNDOCUMENTED.format(table="MANIFEST_KEYS")
            out.append(f"| `{prefix}{key}` | {text} |")
        out.append("")
    out += [
        "## Limits",
        "",
        "A pull request can edit the manifest, so it is read within bounds:",
        "",
        f"- at most {_yaml.MAX_BYTES // 2**20} MiB of UTF-8, nested at most "
        f"{_yaml.MAX_DEPTH} deep;",
        "- plain YAML types only (tags such as `!!python/object` are refused);",
        f"- anchors, aliases and `<<:` merges work, but aliases may expand to at most "
        f"{_yaml.ALIAS_NODES_FLOOR:,} nodes plus {_yaml.ALIAS_NODES_PER_NODE} times the "
        "nodes the file has;",
        "- revisions follow git's ref-name rules, repo ids the Hub's; paths are relative "
        "and cannot leave the cache.",
        "",
    ]
    return "\n".join(out)


# --------------------------------------------------------------------------- report


def report_schema() -> dict[str, Any]:
    from pytest_ckpts.stats import STATUSES, Stats

    stats = Stats()
    stats.record("x", "cached")
    keys = list(stats.report_rows()[0])
    props: dict[str, Any] = {}
    for key in keys:
        kind, text = REPORT_FIELDS.get(key, ({}, UNDOCUMENTED.format(table="REPORT_FIELDS")))
        prop: dict[str, Any] = {"description": text}
        if kind:
            prop["type"] = kind
        if key == "status":
            prop["enum"] = list(STATUSES)
        if key in ("bytes", "seconds"):
            prop["minimum"] = 0
        props[key] = prop
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "pytest-ckpts checkpoint report (--ckpts-report)",
        "description": "Written once per run, atomically, by the process that saw the whole "
        "run (the xdist controller). One row per checkpoint, sorted by name.",
        "type": "object",
        "required": ["checkpoints"],
        "additionalProperties": False,
        "properties": {
            "checkpoints": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": keys,
                    "additionalProperties": False,
                    "properties": props,
                },
            }
        },
    }


def render_report(schema: dict[str, Any]) -> str:
    from pytest_ckpts.stats import STATUSES

    row = schema["properties"]["checkpoints"]["items"]
    out = [
        banner(),
        "# The JSON report (`--ckpts-report`)",
        "",
        schema["description"],
        "JSON Schema: [report.schema.json](report.schema.json) (draft 2020-12).",
        "",
        "| field | type | meaning |",
        "|---|---|---|",
    ]
    for key, prop in row["properties"].items():
        kind = prop.get("type", "")
        kind = " or ".join(kind) if isinstance(kind, list) else kind
        out.append(f"| `{key}` | {kind} | {prop['description']} |")
    out += ["", "## Statuses", "", "| status | meaning |", "|---|---|"]
    for status in STATUSES:
        text = REPORT_STATUSES.get(status) or UNDOCUMENTED.format(table="REPORT_STATUSES")
        out.append(f"| `{status}` | {text} |")
    out += [
        "",
        "When workers disagree about a checkpoint, the strongest status wins "
        f"({' > '.join(STATUSES)}). When `GITHUB_STEP_SUMMARY` is set, the same rows are "
        "appended to that file as a markdown table.",
        "",
    ]
    return "\n".join(out)


# --------------------------------------------------------------------------- errors, API


def render_errors() -> str:
    from pytest_ckpts import errors

    out = [
        banner(),
        "# Error and warning types",
        "",
        rst_to_md(errors.__doc__ or ""),
        "",
        "| type | bases | raised when |",
        "|---|---|---|",
    ]
    public = set(__import__("pytest_ckpts").__all__)
    for name in errors.__all__:
        cls = getattr(errors, name)
        if not (inspect.isclass(cls) and issubclass(cls, BaseException)):
            continue  # Fix, Kind, env_words: the data errors carry (documented below)
        bases = ", ".join(f"`{b.__name__}`" for b in cls.__bases__)
        doc = (inspect.getdoc(cls) or "").split("\n\n")[0].replace("\n", " ").replace("``", "`")
        star = f" (also `pytest_ckpts.{name}`)" if name in public else ""
        out.append(f"| `{name}`{star} | {bases} | {md_escape(doc)} |")
    out += ["", "::: pytest_ckpts.errors", "    options:", "      show_root_heading: false", ""]
    return "\n".join(out)


def render_api(title: str, modules: list[str]) -> str:
    out = [banner(), f"# {title}", ""]
    for module in modules:
        out += [f"::: {module}", ""]
    return "\n".join(out)


def render_index(pages: dict[str, str]) -> str:
    titles = []
    for name, text in pages.items():
        if not name.endswith(".md") or name == "index.md":
            continue
        heading = next(line for line in text.splitlines() if line.startswith("# "))
        titles.append(f"- [{heading[2:]}]({name})")
    return "\n".join(
        [
            banner(),
            "# Reference",
            "",
            "Generated from the code by `docs/gen_reference.py`; a test fails when a page "
            "is out of date.",
            "",
            *titles,
            "",
        ]
    )
