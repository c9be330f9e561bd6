"""``pytest-ckpts mirror push|verify URL [NAME...]``: fill a mirror, check a mirror.

Argument parsing and printing only; the work is :mod:`pytest_ckpts.sources.push`.
Exit codes as the other commands: 0 ok, 1 a check failed (an upload failed, an object
missing or not matching), 2 usage (a bad URL, a read-only HTTP mirror, a missing backend).
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TextIO

from .errors import CheckpointsError, MirrorUnavailable
from .manifest import CheckpointSpec, Manifest
from .settings import count_option

__all__ = ["add_mirror_parser", "cmd_mirror"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_mirror_parser(sub: Any) -> None:
    """Register ``mirror push`` and ``mirror verify`` on the CLI's subparsers."""
    p = sub.add_parser("mirror", help="push verified checkpoints to a mirror, or verify one")
    msub = p.add_subparsers(dest="mirror_command", required=True, metavar="ACTION")
    url_help = (
        "mirror URL template: a folder, file://, s3://, gs:// (any fsspec URL) with "
        "{sha256} {name} {repo} {revision} {path} {filename}; default layout {sha256}"
    )
    push = msub.add_parser(
        "push",
        help="upload verified cached files (fetching what is missing); objects already "
        "present with the right size are skipped; atomic writes",
    )
    push.add_argument("url", metavar="URL", help=url_help)
    push.add_argument("names", nargs="*", metavar="NAME")
    push.add_argument(
        "-j", "--jobs", type=count_option, default=4, metavar="N", help="N uploads at a time"
    )
    push.add_argument("--json", action="store_true", help="JSON for scripts")
    verify = msub.add_parser(
        "verify", help="read every object back and hash it; exit 1 if one is missing or wrong"
    )
    verify.add_argument("url", metavar="URL", help=url_help)
    verify.add_argument("names", nargs="*", metavar="NAME")
    verify.add_argument("--quick", action="store_true", help="presence and size only, no hashing")
    verify.add_argument(
        "-j", "--jobs", type=count_option, default=4, metavar="N", help="N objects at a time"
    )
    verify.add_argument("--json", action="store_true", help="JSON for scripts")
    p.set_defaults(func=cmd_mirror)


def cmd_mirror(args: argparse.Namespace, manifest: Manifest, out: TextIO) -> int:
    from .cli import _store, cli_words
    from .sources.backends import FolderBackend
    from .sources.fetch import MirrorSet
    from .sources.push import Outcome, push_one, verify_one
    from .sources.template import Storage
    from .stats import human_size as _size

    store = _store(args, manifest, progress=False)
    mirrors = MirrorSet.parse(
        [args.url],
        source="the command line",
        budget=store.hub.budget,
        run_state=store.run_state,
    )
    mirror = mirrors.mirrors[0]
    pushing = args.mirror_command == "push"
    try:
        backend = mirrors.backend(mirror)
        if pushing and isinstance(backend, FolderBackend):
            backend.root.mkdir(parents=True, exist_ok=True)  # a new folder mirror
    except MirrorUnavailable as exc:
        sys.stderr.write(f"pytest-ckpts: {exc.text}\n")
        return EXIT_USAGE
    except OSError as exc:
        sys.stderr.write(f"pytest-ckpts: cannot create {mirror.label}: {exc.strerror or exc}\n")
        return EXIT_USAGE
    if pushing and mirror.kind is Storage.HTTP:
        sys.stderr.write(
            f"pytest-ckpts: cannot push to {mirror.label}: HTTP mirrors are read-only. Push to "
            "a folder and upload it (a GitHub Release: `gh release upload TAG DIR/*`), or "
            "push to s3:// or gs://.\n"
        )
        return EXIT_USAGE

    def one(spec: CheckpointSpec) -> Outcome:
        if spec.sha256 is None:
            return Outcome(spec.name, "skipped", None, error="no sha256 in the manifest")
        if not pushing:
            return verify_one(mirrors, mirror, spec, quick=args.quick)
        try:
            ckpt = store.resolve(spec)
        except (CheckpointsError, OSError) as exc:
            if isinstance(exc, CheckpointsError):
                text = exc.one_line(cli_words(args.settings))
            else:
                text = str(exc)
            return Outcome(spec.name, "failed", spec.sha256, error=text)
        return push_one(mirrors, mirror, spec, ckpt.path.resolve(), ckpt.size)

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(one, manifest.select(args.names)))
    bad = ("failed",) if pushing else ("failed", "missing", "mismatch")
    failed = sum(1 for r in results if r.status in bad)
    if args.json:
        rows = [r.to_json() for r in results]
        json.dump({"mirror": mirror.label, "checkpoints": rows}, out, indent=2)
        out.write("\n")
    else:
        for r in results:
            if r.status in bad or r.status == "skipped":
                out.write(f"{r.status.upper() if r.status in bad else r.status:<10}  ")
                out.write(f"{r.name}: {r.error}\n")
            else:
                out.write(f"{r.status:<10}  {r.name}  {_size(r.size)}  {r.url}\n")
        counts: dict[str, int] = {}
        for r in results:
            counts[r.status] = counts.get(r.status, 0) + 1
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        out.write(f"mirror: {mirror.label}: {summary or 'nothing to do'}\n")
    return EXIT_FAILED if failed else EXIT_OK
