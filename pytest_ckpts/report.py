"""The header line, the ``checkpoints`` terminal summary, the JSON report, the step summary.

All four are written by the process that saw the whole run: the xdist controller (after
merging what workers sent) or the only process.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .session import CkptsSession
from .stats import Stats

__all__ = ["header_line", "markdown_table", "summary_lines", "write_reports"]


def _size(nbytes: float) -> str:
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover


def header_line(session: CkptsSession) -> str | None:
    """``ckpts: mode=auto (default), manifest=..., N entries, cache=...``; None if idle."""
    if session.manifest is None:
        return None
    from .cache import Cache

    cache = Cache.locate(session.settings.cache_dir or session.manifest.cache_dir).hub
    try:
        cache_label = str(cache.relative_to(session.config.rootpath))
    except ValueError:
        cache_label = str(cache)
    unverified = len(session.manifest.unverified)
    extra = f", {unverified} unverified" if unverified else ""
    return (
        f"ckpts: mode={session.settings.mode} ({session.mode_source}), "
        f"manifest={session.manifest_label} ({len(session.manifest)} entries{extra}), "
        f"cache={cache_label}"
    )


def summary_lines(stats: Stats, *, verbose: bool) -> list[str]:
    """Lines of the summary section: one line when quiet, details otherwise."""
    downloaded = stats.by_status("downloaded")
    cached = stats.by_status("cached")
    stale = stats.by_status("stale")
    skipped = stats.by_status("skipped")
    failed = stats.by_status("failed")
    down_bytes = sum(r["bytes"] for r in downloaded.values())
    down_secs = sum(r["seconds"] for r in downloaded.values())
    parts = [
        f"{len(downloaded)} downloaded ({_size(down_bytes)} in {down_secs:.1f}s)",
        f"{len(cached)} cached",
    ]
    if stale:
        parts.append(f"{len(stale)} stale")
    parts.append(f"{len(skipped)} skipped")
    if failed:
        parts.append(f"{len(failed)} errors")
    if stats.hashed_bytes:
        parts.append(f"{_size(stats.hashed_bytes)} verified in {stats.hash_seconds:.1f}s")
    lines = [", ".join(parts)]
    if not verbose:
        return lines
    for name, r in sorted(downloaded.items()):
        lines.append(f"downloaded {name}: {_size(r['bytes'])} in {r['seconds']:.2f}s")
    for name in sorted(cached):
        lines.append(f"cached     {name}")
    for name, r in sorted(stale.items()):
        lines.append(f"stale      {name}: {r['reason']}")
    for name, r in sorted(skipped.items()):
        lines.append(f"skipped    {name}: {r['reason']}")
    for name, r in sorted(failed.items()):
        lines.append(f"error      {name}: {r['reason']}")
    return lines


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The GitHub step summary: one table row per checkpoint."""
    out = [
        "### Checkpoints (pytest-ckpts)",
        "",
        "| name | status | bytes | seconds | commit | reason |",
        "|---|---|---:|---:|---|---|",
    ]
    for r in rows:
        reason = str(r["reason"] or "").replace("|", "\\|").replace("\n", " ")
        commit = (r["commit"] or "")[:12]
        out.append(
            f"| {r['name']} | {r['status']} | {r['bytes']} | {r['seconds']:.2f} | "
            f"{commit} | {reason} |"
        )
    return "\n".join(out) + "\n\n"


def write_reports(session: CkptsSession) -> None:
    """``--ckpts-report`` JSON (atomic, whole) and the GitHub step summary (appended)."""
    if session.manifest is None:
        return
    rows = session.stats.report_rows()
    path = session.settings.report
    if path is not None:
        from .integrity import atomic_write_text

        atomic_write_text(Path(path), json.dumps({"checkpoints": rows}, indent=2) + "\n")
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary and rows:
        with open(summary, "a", encoding="utf-8") as f:
            f.write(markdown_table(rows))
