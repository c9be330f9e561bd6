"""``python -m pytest_ckpts.testing.hub``: serve local directories as hub repos."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from ..._text import plural
from .server import LocalHub


def _parse_repo(value: str) -> tuple[str, str, Path]:
    repo, sep, directory = value.partition("=")
    repo_type = "model"
    for prefix, kind in (("datasets/", "dataset"), ("spaces/", "space")):
        if repo.startswith(prefix):
            repo, repo_type = repo.removeprefix(prefix), kind
    if not sep or not repo or not directory:
        raise argparse.ArgumentTypeError(f"expected [datasets/]ORG/NAME=DIR, got {value!r}")
    path = Path(directory)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{directory!r} is not a directory")
    return repo_type, repo, path


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Serve directories as hub repos until interrupted (for demos and manual checks)."""
    parser = argparse.ArgumentParser(
        prog="python -m pytest_ckpts.testing.hub",
        description="Serve local directories as Hugging Face Hub repos (one commit each).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    parser.add_argument(
        "--repo",
        type=_parse_repo,
        action="append",
        default=[],
        metavar="[datasets/]ORG/NAME=DIR",
        help="serve every file under DIR (dot-files skipped) as one commit on main",
    )
    parser.add_argument("--token", default=None, help="require this bearer token")
    args = parser.parse_args(argv)
    hub = LocalHub(token=args.token, host=args.host, port=args.port).start()
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` cleans up like Ctrl-C
    try:
        for repo_type, repo_id, directory in args.repo:
            files = {
                p.relative_to(directory).as_posix(): p
                for p in sorted(directory.rglob("*"))
                if p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(directory).parts)
            }
            commit = hub.add_files(repo_id, files, repo_type=repo_type)
            print(f"{repo_id}: {plural(len(files), 'file')} at commit {commit}", flush=True)
        print(f"endpoint: {hub.endpoint}", flush=True)
        print(f"export HF_ENDPOINT={hub.endpoint}", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        hub.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
