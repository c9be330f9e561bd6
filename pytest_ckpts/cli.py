"""``pytest-ckpts``: list, fetch, verify, lock, upload and prune checkpoints.

A thin caller of ``manifest`` and ``store``: the same engine the plugin uses, so a
``fetch`` before the test run warms exactly the cache the tests will read.
Exit codes: 0 ok, 1 a check failed, 2 usage error (bad manifest, bad arguments).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TextIO

from .errors import CheckpointsError, CheckpointSkipped, ChecksumMismatchError, ManifestError
from .manifest import CheckpointSpec, Manifest, env_value, load_manifest
from .store import Store

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageFailure(Exception):
    """A problem the user fixes by changing the command or the manifest (exit 2)."""


def _size(nbytes: int | None) -> str:
    if nbytes is None:
        return "-"
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def _table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")


def selected(manifest: Manifest, names: Sequence[str]) -> list[CheckpointSpec]:
    """The entries named on the command line (all when none), or a usage error."""
    if not names:
        return list(manifest.entries.values())
    specs = []
    for name in names:
        try:
            specs.append(manifest.get(name))
        except KeyError as exc:
            raise UsageFailure(str(exc.args[0])) from None
    return specs


def _store(args: argparse.Namespace, manifest: Manifest, **kwargs: object) -> Store:
    cache = args.cache_dir or env_value("PYTEST_CKPTS_CACHE_DIR")
    return Store(
        manifest,
        cache_dir=Path(cache).expanduser().absolute() if cache else None,
        **kwargs,  # type: ignore[arg-type]
    )


# --------------------------------------------------------------------------- commands


def cmd_list(args: argparse.Namespace, manifest: Manifest, out: TextIO) -> int:
    store = _store(args, manifest)
    rows = [["NAME", "SIZE", "CACHED", "VERIFIED", "DESCRIPTION"]]
    for spec in selected(manifest, args.names):
        path = store.cached_path(spec)
        size = spec.size
        if path is not None:
            size = path.stat().st_size
            if spec.sha256 is None:
                verified = "unverified"
            else:
                verified = "yes" if store.is_trusted(spec) else "not yet"
        else:
            verified = "unverified" if spec.sha256 is None else "-"
        rows.append([spec.name, _size(size), "yes" if path else "no", verified, spec.description])
    _table(rows, out)
    out.write(f"manifest: {manifest.path}\ncache:    {store.cache}\n")
    return EXIT_OK


def cmd_fetch(args: argparse.Namespace, manifest: Manifest, out: TextIO) -> int:
    store = _store(args, manifest, progress=not args.quiet, rehash=args.rehash)
    failed = 0
    for spec in selected(manifest, args.names):
        try:
            ckpt = store.resolve(spec, force_download=args.force)
        except (CheckpointsError, OSError) as exc:
            failed += 1
            out.write(f"FAILED  {spec.name}: {exc}\n")
            continue
        note = "" if ckpt.verified else "  (unverified: no sha256 in manifest)"
        out.write(f"{ckpt.source:<10}  {spec.name}  {_size(ckpt.size)}  {ckpt.path}{note}\n")
    return EXIT_FAILED if failed else EXIT_OK


def cmd_verify(args: argparse.Namespace, manifest: Manifest, out: TextIO) -> int:
    store = _store(args, manifest, offline=True, rehash=True)
    failed = 0
    for spec in selected(manifest, args.names):
        path = store.cached_path(spec)
        if path is None:
            out.write(
                f"missing     {spec.name}: not cached (run `pytest-ckpts fetch {spec.name}`)\n"
            )
            failed += bool(args.names)
            continue
        try:
            ckpt = store.resolve(spec)
        except ChecksumMismatchError as exc:
            failed += 1
            out.write(
                f"MISMATCH    {spec.name}: {path}\n  expected {exc.expected}\n  actual   {exc.actual}\n"
            )
            continue
        except CheckpointSkipped as exc:  # pragma: no cover - cached_path said it exists
            failed += 1
            out.write(f"missing     {spec.name}: {exc}\n")
            continue
        state = "ok" if ckpt.verified else "unverified"
        out.write(f"{state:<10}  {spec.name}: sha256 {ckpt.sha256}\n")
    return EXIT_FAILED if failed else EXIT_OK


def _walk_files(root: Path) -> Iterable[Path]:
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            yield Path(dirpath) / f


def _cache_repos(cache: Path) -> list[Path]:
    if not cache.is_dir():
        return []
    return sorted(
        p for p in cache.iterdir() if p.is_dir() and p.name.startswith(("models--", "datasets--"))
    )


def cmd_cache(args: argparse.Namespace, manifest: Manifest, out: TextIO) -> int:
    store = _store(args, manifest)
    cache = store.cache
    repos = _cache_repos(cache)
    if args.cache_command == "info":
        total = 0
        for repo in repos:
            size = sum(p.stat().st_size for p in _walk_files(repo / "blobs") if p.is_file())
            total += size
            out.write(f"{repo.name}: {_size(size)}\n")
        cached = sum(1 for s in manifest.entries.values() if store.cached_path(s))
        out.write(
            f"cache: {cache}\ntotal: {_size(total)} in {len(repos)} repos; "
            f"{cached}/{len(manifest)} manifest entries cached\n"
        )
        return EXIT_OK
    # prune: keep exactly the snapshot files (and their blobs) the manifest names now
    keep_links: set[Path] = set()
    keep_blobs: set[Path] = set()
    for spec in manifest.entries.values():
        path = store.cached_path(spec)
        if path is not None:
            keep_links.add(path.absolute())
            keep_blobs.add(path.resolve())
    removed, freed = 0, 0
    for repo in repos:
        for f in sorted(_walk_files(repo / "snapshots")):
            if f.absolute() not in keep_links:
                removed += 1
                if not args.dry_run:
                    f.unlink()
        for blob in sorted(_walk_files(repo / "blobs")):
            if blob.resolve() not in keep_blobs:
                freed += blob.stat().st_size
                out.write(f"{'would remove' if args.dry_run else 'removed'} {blob}\n")
                if not args.dry_run:
                    blob.unlink()
                    stamp = cache / ".ckpts" / "stamps" / repo.name / f"{blob.name}.json"
                    stamp.unlink(missing_ok=True)
        if not args.dry_run:
            _remove_empty_dirs(repo / "snapshots")
            if not any(_walk_files(repo / "blobs")) and not any(_walk_files(repo / "snapshots")):
                shutil.rmtree(repo)
    verb = "would free" if args.dry_run else "freed"
    out.write(f"{verb} {_size(freed)} ({removed} snapshot files)\n")
    return EXIT_OK


def _remove_empty_dirs(root: Path) -> None:
    if not root.is_dir():
        return
    for dirpath, _dirs, _files in sorted(os.walk(root), key=lambda t: -len(t[0])):
        path = Path(dirpath)
        if path != root and not any(path.iterdir()):
            path.rmdir()


def cmd_lock(args: argparse.Namespace, manifest: Manifest, out: TextIO) -> int:
    from .publish import lock

    return lock(
        manifest,
        names=args.names,
        pin=args.pin,
        check=args.check,
        source_dir=Path(args.source) if args.source else None,
        cache_dir=_store(args, manifest).cache,
        out=out,
    )


def cmd_upload(args: argparse.Namespace, manifest: Manifest, out: TextIO) -> int:
    from .publish import upload

    return upload(
        manifest,
        names=args.names,
        source_dir=Path(args.source),
        pin=args.pin,
        message=args.message,
        out=out,
    )


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pytest-ckpts",
        description="Manage the checkpoints named in checkpoints/checkpoints.yaml.",
        epilog="Exit codes: 0 ok, 1 a check failed, 2 usage error. The manifest is "
        "--manifest, else PYTEST_CKPTS_MANIFEST, else the first checkpoints/checkpoints.yaml "
        "found walking up from the current directory.",
    )
    parser.add_argument("--manifest", metavar="PATH", help="checkpoint manifest to use")
    parser.add_argument(
        "--cache-dir", metavar="DIR", help="cache directory (default: the manifest's cache_dir)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="name, size, cached, verified, description")
    p.add_argument("names", nargs="*", metavar="NAME")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("fetch", help="download and verify checkpoints (all by default)")
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("--force", action="store_true", help="download again even if cached")
    p.add_argument("--rehash", action="store_true", help="re-hash cached files")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser("verify", help="re-hash cached checkpoints; exit 1 on mismatch")
    p.add_argument("names", nargs="*", metavar="NAME")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        "lock", help="fill in missing sha256 in the manifest (edits values in place)"
    )
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("--pin", action="store_true", help="also pin revision to the resolved commit")
    p.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 if lock would change the file"
    )
    p.add_argument(
        "--from",
        dest="source",
        metavar="DIR",
        help="hash local files DIR/<hf_path> instead of downloading them",
    )
    p.set_defaults(func=cmd_lock)

    p = sub.add_parser("upload", help="push local files to the hub repo at hf_path, then lock")
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument(
        "--from",
        dest="source",
        metavar="DIR",
        default=".",
        help="directory mirroring hf_path (DIR/<hf_path> is uploaded); default: .",
    )
    p.add_argument("--pin", action="store_true", help="pin revision to the upload commit")
    p.add_argument("-m", "--message", default=None, help="commit message")
    p.set_defaults(func=cmd_upload)

    p = sub.add_parser("cache", help="cache info | prune")
    csub = p.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    csub.add_parser("info", help="cache size and what is cached")
    pp = csub.add_parser("prune", help="remove cached files the manifest no longer names")
    pp.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    p.set_defaults(func=cmd_cache)
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Entry point of the ``pytest-ckpts`` console script."""
    out = out if out is not None else sys.stdout
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        manifest = load_manifest(args.manifest)
        code: int = args.func(args, manifest, out)
    except (ManifestError, UsageFailure) as exc:
        sys.stderr.write(f"{exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:  # pragma: no cover - interactive
        sys.stderr.write("interrupted\n")
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
