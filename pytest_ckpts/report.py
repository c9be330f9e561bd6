"""The header line, the ``checkpoints`` terminal summary, the JSON report, the step summary.

All four are written by the process that saw the whole run: the xdist controller (after
merging what workers sent) or the only process. Each process first completes its stats
with :func:`settle` (bytes of transfers cut short, commits and sizes known from the
manifest and the probes) before it ships or writes them.

Reports never turn a green run red: a report or step summary that cannot be written is
one warning line naming the path and why (docs/how-to/ci.md "Reports for fleets"). Every text
cell is scrubbed of secrets (docs/how-to/ci.md "Tokens"), and step-summary cells are literal text:
the manifest and the hub's answers are untrusted, so nothing in them renders as
markdown or HTML.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._redact import redact
from ._text import plural
from .session import CkptsSession
from .stats import Stats, is_mirror
from .stats import human_size as _size

__all__ = [
    "header_line",
    "markdown_table",
    "report_option_warning",
    "report_rows",
    "settle",
    "summary_lines",
    "write_reports",
]

# Inline markdown of a GFM table cell (code, emphasis, links, autolinks, raw HTML,
# entities, strikethrough, escapes, pipes): shown as character references instead.
_WWW = re.compile(r"(?i)\b(www)\.")
_MARKUP = re.compile(r"[`*_\[\]()<>&~\\!|:@#{}\"'=+^$]")


def header_line(session: CkptsSession) -> str | None:
    """``ckpts: mode=auto (default), manifest=..., N entries, cache=...``; None if idle."""
    if session.manifest is None:
        return None
    from .cache import Cache

    cache = Cache.in_force(session.settings.cache_dir, session.manifest).hub
    try:
        cache_label = str(cache.relative_to(session.config.rootpath))
    except ValueError:
        cache_label = str(cache)
    unverified = len(session.manifest.unverified)
    extra = f", {unverified} unverified" if unverified else ""
    return (
        f"ckpts: mode={session.settings.mode} ({session.mode_source}), "
        f"manifest={session.manifest_label} ({plural(len(session.manifest), 'entry', 'entries')}{extra}), "
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
    mirrored = sum(1 for r in downloaded.values() if is_mirror(r.get("source")))
    from_mirrors = f", {mirrored} from mirrors" if mirrored else ""
    parts = [
        f"{len(downloaded)} downloaded ({_size(down_bytes)} in {down_secs:.1f}s{from_mirrors})",
        f"{len(cached)} cached",
    ]
    if stale:
        parts.append(f"{len(stale)} stale")
    parts.append(f"{len(skipped)} skipped")
    if failed:
        parts.append(plural(len(failed), "error"))
    if stats.hashed_bytes:
        parts.append(f"{_size(stats.hashed_bytes)} verified in {stats.hash_seconds:.1f}s")
    lines = [", ".join(parts)]
    if not verbose:
        return lines
    for name, r in sorted(downloaded.items()):
        where = f" from {r['source']}" if is_mirror(r.get("source")) else ""
        lines.append(f"downloaded {name}: {_size(r['bytes'])} in {r['seconds']:.2f}s{where}")
    for name in sorted(cached):
        lines.append(f"cached     {name}")
    for name, r in sorted(stale.items()):
        lines.append(f"stale      {name}: {r['reason']}")
    for name, r in sorted(skipped.items()):
        lines.append(f"skipped    {name}: {r['reason']}")
    for name, r in sorted(failed.items()):
        lines.append(f"error      {name}: {r['reason']}")
    return [redact(line) for line in lines]


def literal(text: object) -> str:
    """``text`` as a GFM table cell that renders as exactly these characters."""
    flat = " ".join(str(text).split())  # newlines would end the row
    escaped = _MARKUP.sub(lambda m: f"&#{ord(m[0])};", flat)
    return _WWW.sub(lambda m: f"{m[1]}&#46;", escaped)  # no www. autolinks either


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The GitHub step summary: one table row per checkpoint."""
    out = [
        "### Checkpoints (pytest-ckpts)",
        "",
        "| name | status | source | bytes | seconds | commit | reason |",
        "|---|---|---|---:|---:|---|---|",
    ]
    for r in rows:
        cells = (
            literal(r["name"]),
            literal(r["status"]),
            literal(str(r.get("source") or "")),
            str(int(r["bytes"] or 0)),
            f"{float(r['seconds'] or 0.0):.2f}",
            literal((r["commit"] or "")[:12]),
            literal(redact(str(r["reason"] or ""))),
        )
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n\n"


def report_option_warning(args: list[str], invocation_dir: Path, rootdir: Path) -> str | None:
    """A warning when ``--ckpts-report PATH`` (space form) names an existing path.

    pytest picks rootdir (and the ini file, conftest cut-off, default manifest) from the
    command line before it loads plugins, when ``--ckpts-report`` is not an option yet:
    an existing PATH after it is taken for a test path, and rootdir moves towards it.
    No plugin can change that decision; ``--ckpts-report=PATH`` is one argument and
    is never mistaken.
    """
    for option, value in itertools.pairwise(args):
        if option == "--ckpts-report" and (invocation_dir / value).exists():
            return (
                f"pytest-ckpts: warning: `--ckpts-report {value}` names an existing path, "
                "which pytest takes for a test path when it picks rootdir, before plugins "
                f"load (rootdir is now {rootdir}); write --ckpts-report={value}"
            )
    return None


def settle(session: CkptsSession) -> None:
    """Complete this process's stats before they are shipped or written.

    A transfer cut short (a test timeout, Ctrl-C) records nothing itself: the bytes the
    hub client actually received are folded in, and a checkpoint with no outcome is
    ``failed``. Rows missing their commit, size or sha256 get what is known without a
    request: the manifest (pinned revision, ``size``, ``sha256``) and this run's probes.
    """
    if session.manifest is None:
        return
    store = session._store
    if store is not None:
        session.stats.add_received(dict(store.hub.received))
    for name in list(session.stats.records):
        spec = session.manifest.entries.get(name)
        if spec is None:
            continue
        commit = store.hub.known_commit(spec) if store is not None else None
        if commit is None and spec.pinned:
            commit = spec.revision
        session.stats.fill(name, commit=commit, size=spec.size, sha256=spec.sha256)


def report_rows(session: CkptsSession) -> list[dict[str, Any]]:
    """The ``checkpoints`` list of the JSON report: sorted by name, secrets scrubbed."""
    rows = session.stats.report_rows()
    for row in rows:
        if row["reason"] is not None:
            row["reason"] = redact(str(row["reason"]))
    return rows


def write_reports(session: CkptsSession) -> list[str]:
    """``--ckpts-report`` JSON (atomic, whole) and the GitHub step summary (appended).

    Returns one warning line per report that could not be written (the run's outcome
    does not change).
    """
    if session.manifest is None:
        return []
    settle(session)
    rows = report_rows(session)
    problems: list[str] = []
    path = session.settings.report
    if path is not None:
        from .integrity import atomic_write_text

        text = json.dumps({"checkpoints": rows}, indent=2) + "\n"
        problem = _attempt(lambda: atomic_write_text(Path(path), text))
        if problem:
            problems.append(f"cannot write the report {path} (--ckpts-report): {problem}")
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary and rows:
        table = markdown_table(rows)
        problem = _attempt(lambda: _append(Path(summary), table))
        if problem:
            problems.append(
                f"cannot append to the step summary {summary} (GITHUB_STEP_SUMMARY): {problem}"
            )
    return [f"pytest-ckpts: warning: {p}" for p in problems]


def _append(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)


def _attempt(write: Callable[[], None]) -> str | None:
    """Run ``write``; why it failed, in a few words, or None."""
    try:
        write()
    except OSError as exc:
        if isinstance(exc, (FileExistsError, NotADirectoryError)):
            return "a part of the path is a file, not a folder"
        why = exc.strerror or type(exc).__name__
        if isinstance(exc, FileNotFoundError):
            why += " (the folder does not exist)"
        return why
    return None
