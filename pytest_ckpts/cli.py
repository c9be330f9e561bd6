"""``pytest-ckpts``: list, fetch, verify, lock, upload and prune checkpoints.

A thin caller of ``manifest`` and ``store``: the same engine the plugin uses, so a
``fetch`` before the test run warms exactly the cache the tests will read.
Exit codes: 0 ok, 1 a check failed, 2 usage error (bad manifest, bad arguments).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TextIO

from ._text import plural
from .errors import (
    CacheError,
    CheckpointsError,
    ChecksumMismatchError,
    Fix,
    ManifestError,
    ManifestNotFoundError,
    UsageFailure,
    Words,
    env_words,
)
from .manifest import CheckpointSpec, Manifest, load_manifest
from .settings import ENV, SETTINGS, Settings, count_option, env_true
from .stats import human_size as _size
from .store import Store

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def cli_words(settings: Settings | None = None) -> Words:
    """The CLI's words for fixes: its own options (``--offline``, ``--cache-dir``,
    ``--manifest``); settings it has no option for as environment variables. Whether
    "run without --offline" is true depends on where the mode came from."""

    def words(fix: Fix) -> str:
        phrase = None
        if fix.setting == "mode" and fix.value == "offline":
            phrase = "use --offline"
        elif fix.setting == "mode" and fix.value == "auto":
            if settings is None or settings.source("mode") == "--offline":
                phrase = "run without --offline"
        elif fix.setting in SETTINGS and SETTINGS[fix.setting].cli not in (None, "--offline"):
            phrase = f"use {SETTINGS[fix.setting].cli} {fix.shown_value}"
        if phrase is None:
            return env_words(fix)
        return f"{phrase} {fix.why}" if fix.why else phrase

    return words


def _text(exc: BaseException, settings: Settings | None = None) -> str:
    """An error's whole message in the CLI's words."""
    return exc.render(cli_words(settings)) if isinstance(exc, CheckpointsError) else str(exc)


def _table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")


def _store(args: argparse.Namespace, manifest: Manifest, **kwargs: Any) -> Store:
    return Store.from_settings(manifest, args.settings, **kwargs)


def _state(store: Store, spec: CheckpointSpec) -> dict[str, Any]:
    """One entry of ``list --json`` / ``verify --json`` (the run report's shape)."""
    path = store.layout.cached_path(spec)
    size = path.stat().st_size if path is not None else spec.size
    return {
        "name": spec.name,
        "cached": path is not None,
        "verified": spec.sha256 is not None and path is not None and store.is_trusted(spec),
        "sha256": spec.sha256,
        "size": size,
        "path": str(path) if path is not None else None,
        "revision": spec.revision,
        "description": spec.description,
    }


def _json(data: dict[str, Any], out: TextIO) -> None:
    """Every ``--json`` output: one indented object and a newline."""
    json.dump(data, out, indent=2)
    out.write("\n")


def _progress(args: argparse.Namespace) -> bool:
    """Progress bars only on a terminal (tqdm's ``\\r`` and escapes fill CI logs), and not
    with ``-q`` or ``HF_HUB_DISABLE_PROGRESS_BARS`` (read now, as huggingface_hub reads it)."""
    if getattr(args, "quiet", False) or getattr(args, "json", False):
        return False
    if env_true("HF_HUB_DISABLE_PROGRESS_BARS"):
        return False
    return sys.stderr.isatty()  # where tqdm draws


# --------------------------------------------------------------------------- commands


def cmd_list(args: argparse.Namespace, manifest: Manifest, out: TextIO) -> int:
    store = _store(args, manifest)
    states = [_state(store, spec) for spec in manifest.select(args.names)]
    if args.json:
        _json({"checkpoints": states}, out)
        return EXIT_OK
    rows = [["NAME", "SIZE", "CACHED", "VERIFIED", "DESCRIPTION"]]
    for st in states:
        if st["sha256"] is None:
            verified = "unverified"
        elif not st["cached"]:
            verified = "-"
        else:
            verified = "yes" if st["verified"] else "not yet"
        rows.append(
            [
                st["name"],
                _size(st["size"]),
                "yes" if st["cached"] else "no",
                verified,
                st["description"],
            ]
        )
    _table(rows, out)
    out.write(f"manifest: {manifest.path}\ncache:    {store.layout.root}\n")
    return EXIT_OK


def cmd_fetch(args: argparse.Namespace, manifest: Manifest, out: TextIO) -> int:
    store = _store(args, manifest, progress=_progress(args), rehash=args.rehash)
    specs = manifest.select(args.names)

    def one(spec: CheckpointSpec) -> tuple[str, dict[str, Any]]:
        """The text line and the ``--json`` entry of one checkpoint."""
        try:
            ckpt = store.resolve(spec, force_download=args.force)
        except CheckpointsError as exc:
            return _failed(store, spec, exc.render(cli_words(args.settings), prefix=False))
        except OSError as exc:
            return _failed(store, spec, str(exc))
        if args.force and ckpt.source == "stale":  # --force asked for a new download
            failure = store.stale_errors.get(spec.name)
            why = (failure.cause or failure.summary) if failure is not None else None
            return _failed(
                store,
                spec,
                f"not downloaded again, the cached copy is kept ({ckpt.path}): "
                f"{why or 'the hub failed'}",
            )
        note = "" if ckpt.verified else "  (unverified: no sha256 in the manifest)"
        note += f"  (from mirror {ckpt.mirror})" if ckpt.mirror else ""
        line = f"{ckpt.source:<10}  {spec.name}  {_size(ckpt.size)}  {ckpt.path}{note}"
        state = {
            "name": spec.name,
            "status": ckpt.source,
            "cached": True,
            "verified": ckpt.verified,
            "sha256": ckpt.sha256,
            "size": ckpt.size,
            "path": str(ckpt.path),
            "revision": ckpt.revision,
            "description": spec.description,
            "mirror": ckpt.mirror,
        }
        return line, state

    if args.jobs <= 1:  # sequential: no thread to hand each file to and back
        results = [one(spec) for spec in specs]
    else:
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            results = list(pool.map(one, specs))  # in manifest order, whatever finishes first
    failed = any(state["status"] == "failed" for _, state in results)
    if args.json:
        _json({"checkpoints": [state for _, state in results]}, out)
    else:
        for line, _ in results:
            out.write(line + "\n")
    return EXIT_FAILED if failed else EXIT_OK


def _failed(store: Store, spec: CheckpointSpec, error: str) -> tuple[str, dict[str, Any]]:
    """The ``fetch`` line and ``--json`` entry of a checkpoint that failed (with what is
    cached of it)."""
    state = _state(store, spec)
    state["status"] = "failed"
    state["error"] = error
    return f"FAILED      {spec.name}: {error}", state


def cmd_verify(args: argparse.Namespace, manifest: Manifest, out: TextIO) -> int:
    store = _store(args, manifest, offline=True, rehash=True)
    failed = 0
    states: list[dict[str, Any]] = []
    for spec in manifest.select(args.names):
        state = _state(store, spec)
        state["verified"] = False
        states.append(state)
        path = store.layout.cached_path(spec)
        if path is None:
            failed += 1
            state["error"] = "not cached"
            if not args.json:
                fetch = store.run_fix("fetch", spec.name).command_line
                out.write(f"missing     {spec.name}: not cached (run `{fetch}`)\n")
            continue
        try:
            ckpt = store.resolve(spec)
        except ChecksumMismatchError as exc:
            failed += 1
            state["error"] = f"checksum mismatch: actual sha256 {exc.actual}"
            if not args.json:
                out.write(
                    f"MISMATCH    {spec.name}: {path}\n  expected {exc.expected}\n"
                    f"  actual   {exc.actual}\n"
                )
            continue
        state["verified"] = ckpt.verified
        if not args.json:
            label = "ok" if ckpt.verified else "unverified"
            note = "" if ckpt.verified else " (no sha256 in the manifest: hashed, not verified)"
            out.write(f"{label:<10}  {spec.name}: sha256 {ckpt.sha256}{note}\n")
    if args.json:
        _json({"checkpoints": states}, out)
    return EXIT_FAILED if failed else EXIT_OK


def cmd_cache(args: argparse.Namespace, manifest: Manifest, out: TextIO) -> int:
    store = _store(args, manifest)
    if args.cache_command == "key":  # the same wherever the cache lives: no disk, no network
        from .cachekey import cache_key

        out.write(cache_key(manifest, manifest.select(args.names), store.hub.base_url) + "\n")
        return EXIT_OK
    layout = store.layout
    if args.cache_command == "info":
        info = layout.info(manifest)
        if args.json:
            _json(
                {
                    "cache": str(layout.root),
                    "hub_cache": str(layout.hub),
                    "total": info.total,
                    "repos": info.repos,
                    "incomplete": [str(f) for f in info.incomplete],
                    "tensor_pieces": {"files": info.tensor_files, "bytes": info.tensor_bytes},
                    "checkpoints": [_state(store, spec) for spec in manifest.select([])],
                },
                out,
            )
            return EXIT_OK
        for repo, size in info.repos.items():
            out.write(f"{repo}: {_size(size)}\n")
        for f in info.incomplete:
            out.write(f"incomplete download: {f}\n")
        if info.tensor_files:
            out.write(
                f"tensor pieces (partial reads): {_size(info.tensor_bytes)} in "
                f"{plural(info.tensor_files, 'file')}\n"
            )
        out.write(
            f"cache: {layout.root}\nhub cache: {layout.hub} (huggingface_hub's tools read it: "
            f"hf cache ls --cache-dir {layout.hub}, or HF_HUB_CACHE={layout.hub})\n"
            f"total: {_size(info.total)} in "
            f"{plural(len(info.repos), 'repo')}; {len(info.cached)}/{len(manifest)} "
            "manifest entries cached\n"
        )
        return EXIT_OK
    result = layout.prune(manifest, dry_run=args.dry_run)
    if args.json:
        _json(
            {
                "cache": str(layout.root),
                "dry_run": args.dry_run,
                "removed": [
                    str(f)
                    for f in [
                        *result.removed_blobs,
                        *result.removed_incomplete,
                        *result.removed_tensors,
                    ]
                ],
                "snapshot_files": result.removed_links,
                "freed": result.freed,
            },
            out,
        )
        return EXIT_OK
    verb = "would remove" if args.dry_run else "removed"
    for blob in [*result.removed_blobs, *result.removed_incomplete, *result.removed_tensors]:
        out.write(f"{verb} {blob}\n")
    out.write(
        f"{'would free' if args.dry_run else 'freed'} {_size(result.freed)} "
        f"({plural(result.removed_links, 'snapshot file')})\n"
    )
    return EXIT_OK


def cmd_lock(args: argparse.Namespace, manifest: Manifest, out: TextIO) -> int:
    from .publish import lock, lock_tensors

    if args.tensors and not args.check:
        return lock_tensors(
            manifest,
            names=args.names,
            source_dir=Path(args.source) if args.source else None,
            store=_store(args, manifest, progress=_progress(args)),
            out=out,
        )
    return lock(
        manifest,
        names=args.names,
        pin=args.pin,
        check=args.check,
        update=args.update,
        source_dir=Path(args.source) if args.source else None,
        store=_store(args, manifest, progress=_progress(args)),
        out=out,
        as_json=args.json,
    )


def cmd_upload(args: argparse.Namespace, manifest: Manifest, out: TextIO) -> int:
    from .publish import upload

    return upload(
        manifest,
        names=args.names,
        source_dir=Path(args.source),
        pin=args.pin,
        message=args.message,
        store=_store(args, manifest, progress=_progress(args)),
        out=out,
    )


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pytest-ckpts",
        description="Manage the checkpoints named in checkpoints/checkpoints.yaml.",
        epilog="Exit codes: 0 ok, 1 a check failed, 2 usage error. The manifest is "
        f"--manifest, else {ENV['manifest']}, else the first checkpoints/checkpoints.yaml "
        "found walking up from the current directory.",
    )
    parser.add_argument("-V", "--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--manifest", metavar="PATH", help="checkpoint manifest to use")
    parser.add_argument(
        "--cache-dir",
        metavar="DIR",
        help=f"cache directory (default: {ENV['cache_dir']}, else the manifest's cache_dir)",
    )
    parser.add_argument(
        "--offline",
        action="store_true",
        help="never touch the network: only what is cached (like pytest's --ckpts=offline)",
    )
    parser.add_argument(
        "--mirror",
        metavar="URL",
        action="append",
        default=None,
        help=f"fetch from this mirror before the hub (repeatable; replaces {ENV['mirrors']} "
        'and config.mirrors; --mirror "" turns mirrors off)',
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="name, size, cached, verified, description")
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("--json", action="store_true", help="JSON for scripts: {checkpoints: [...]}")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("fetch", help="download and verify checkpoints (all by default)")
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument(
        "--force",
        action="store_true",
        help="download again even if cached (the hub failing: exit 1, the cached copy is kept)",
    )
    p.add_argument("--rehash", action="store_true", help="re-hash cached files")
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress bars (they are drawn only on a terminal; "
        "HF_HUB_DISABLE_PROGRESS_BARS=1 also turns them off)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="JSON for scripts: {checkpoints: [...]} with status and error (no progress bars)",
    )
    p.add_argument(
        "-j",
        "--jobs",
        type=count_option,
        default=4,
        metavar="N",
        help="download N checkpoints at a time (default 4); output keeps manifest order",
    )
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser(
        "verify", help="re-hash cached checkpoints; exit 1 on a mismatch or one not cached"
    )
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("--json", action="store_true", help="JSON for scripts: {checkpoints: [...]}")
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
        "--update",
        action="store_true",
        help="replace the existing sha256 of the NAMEs given (names required): for a hash "
        "you have confirmed is wrong or out of date",
    )
    p.add_argument(
        "--from",
        dest="source",
        metavar="DIR",
        help="hash local files DIR/<hf_path> instead of downloading them",
    )
    p.add_argument(
        "--tensors",
        action="store_true",
        help="write checkpoints/tensors/<NAME>.json (sha256 and offsets of every tensor of a "
        ".safetensors) and record it as tensor_index, for partial reads (names required)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="with --check: JSON for scripts: {checkpoints: [{name, locked, needs, ...}]}",
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

    p = sub.add_parser("cache", help="cache info | prune | key")
    csub = p.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    ip = csub.add_parser("info", help="cache size and what is cached")
    ip.add_argument(
        "--json",
        action="store_true",
        help="JSON for scripts: {cache, hub_cache, total, repos, incomplete, tensor_pieces, "
        "checkpoints}",
    )
    kp = csub.add_parser(
        "key",
        help="one-line digest of what the cache will hold (for actions/cache keys; no network; "
        "the same wherever the cache lives)",
    )
    kp.add_argument("names", nargs="*", metavar="NAME")
    pp = csub.add_parser("prune", help="remove cached files the manifest no longer names")
    pp.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    pp.add_argument(
        "--json",
        action="store_true",
        help="JSON for scripts: {cache, dry_run, removed, snapshot_files, freed}",
    )
    p.set_defaults(func=cmd_cache)
    from .cli_mirror import add_mirror_parser

    add_mirror_parser(sub)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pytest-ckpts")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def _manifest_text(exc: ManifestError, settings: Settings | None) -> str:
    """A manifest named on the command line that is not there: say so in the CLI's words."""
    if isinstance(exc, ManifestNotFoundError) and exc.path is not None:
        return (
            f"pytest-ckpts: manifest {exc.path} not found. Pass --manifest PATH or set "
            f"{ENV['manifest']} to the right file."
        )
    return _text(exc, settings)


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Entry point of the ``pytest-ckpts`` console script."""
    out = out if out is not None else sys.stdout
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "lock" and args.update and not args.names:
        parser.error("lock --update needs the NAMEs whose sha256 to replace")
    if args.command == "lock" and args.json and not args.check:
        parser.error("lock --json goes with --check (lock itself prints what it changed)")
    if args.command == "lock" and args.tensors and not args.names:
        parser.error("lock --tensors needs the NAMEs of the .safetensors entries to index")
    try:
        args.settings = Settings.from_args(args)
        manifest = load_manifest(args.settings.manifest)
        code: int = args.func(args, manifest, out)
    except ManifestError as exc:
        sys.stderr.write(f"{_manifest_text(exc, getattr(args, 'settings', None))}\n")
        return EXIT_USAGE
    except UsageFailure as exc:
        sys.stderr.write(f"{_text(exc, getattr(args, 'settings', None))}\n")
        return EXIT_USAGE
    except KeyError as exc:  # an unknown NAME (with did-you-mean)
        sys.stderr.write(f"pytest-ckpts: {exc.args[0]}\n")
        return EXIT_USAGE
    except (CheckpointsError, CacheError) as exc:  # a check failed: mismatch, hub, cache
        sys.stderr.write(f"{_text(exc, getattr(args, 'settings', None))}\n")
        return EXIT_FAILED
    except ValueError as exc:  # a bad setting, named by Settings
        sys.stderr.write(f"{exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:  # pragma: no cover - interactive
        sys.stderr.write("interrupted\n")
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
