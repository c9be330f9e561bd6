"""The header line and the ``checkpoints`` terminal summary section."""

from __future__ import annotations

from .session import CkptsSession, Stats

__all__ = ["header_line", "summary_lines"]


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
    cache = session.cache_dir or session.manifest.cache_dir
    try:
        cache_label = str(cache.relative_to(session.config.rootpath))
    except ValueError:
        cache_label = str(cache)
    unverified = len(session.manifest.unverified)
    extra = f", {unverified} unverified" if unverified else ""
    return (
        f"ckpts: mode={session.policy.mode} ({session.policy.source}), "
        f"manifest={session.manifest_label} ({len(session.manifest)} entries{extra}), "
        f"cache={cache_label}"
    )


def summary_lines(stats: Stats, *, verbose: bool) -> list[str]:
    """Lines of the summary section: one line when quiet, details otherwise."""
    down_bytes = sum(pair[0] for pair in stats.downloaded.values())
    down_secs = sum(pair[1] for pair in stats.downloaded.values())
    cached = stats.cached - set(stats.downloaded)
    parts = [
        f"{len(stats.downloaded)} downloaded ({_size(down_bytes)} in {down_secs:.1f}s)",
        f"{len(cached)} cached",
        f"{len(stats.skipped)} skipped",
    ]
    if stats.errors:
        parts.append(f"{len(stats.errors)} errors")
    if stats.hashed_bytes:
        parts.append(f"{_size(stats.hashed_bytes)} verified in {stats.hash_seconds:.1f}s")
    lines = [", ".join(parts)]
    if not verbose:
        return lines
    for name, (nbytes, secs) in sorted(stats.downloaded.items()):
        lines.append(f"downloaded {name}: {_size(nbytes)} in {secs:.2f}s")
    for name in sorted(cached):
        lines.append(f"cached     {name}")
    for name, reason in sorted(stats.skipped.items()):
        lines.append(f"skipped    {name}: {reason}")
    for name, err in sorted(stats.errors.items()):
        lines.append(f"error      {name}: {err}")
    return lines
