"""Assertions for suites that check their training loop writes what it should."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["assert_experiment_layout"]


def assert_experiment_layout(
    root: str | os.PathLike[str],
    exp_hash: str,
    *,
    steps: Iterable[int] | None = None,
    config: bool = False,
    data_backup: bool = False,
) -> None:
    """Fail with a readable message unless ``root`` holds experiment ``exp_hash`` as expected.

    Checks the seed-002 layout (``checkpoints/{h}/model|hp|data``), the architecture
    files, exactly the given step checkpoints, and that the index lists them with
    matching sizes.
    """
    __tracebackhide__ = True
    base = Path(root)
    d = base / "checkpoints" / exp_hash
    problems: list[str] = []
    for folder in (base / "data", base / "logs", d / "model", d / "hp", d / "data"):
        if not folder.is_dir():
            problems.append(f"missing directory {folder.relative_to(base)}")
    for suffix in ("txt", "pkl"):
        f = d / "model" / f"{exp_hash}_architecture.{suffix}"
        if not f.is_file():
            problems.append(f"missing {f.relative_to(base)}")
    if config and not (d / "hp" / f"{exp_hash}_config.yaml").is_file():
        problems.append(f"missing checkpoints/{exp_hash}/hp/{exp_hash}_config.yaml")
    if data_backup and not list((d / "data").glob(f"{exp_hash}_*")):
        problems.append(f"no data backup in checkpoints/{exp_hash}/data")
    if steps is not None:
        want = sorted(f"{exp_hash}_step_{s:06d}.pt" for s in steps)
        model_dir = d / "model"
        have = (
            sorted(p.name for p in model_dir.glob(f"{exp_hash}_step_*.pt"))
            if model_dir.is_dir()
            else []
        )
        if have != want:
            problems.append(f"step checkpoints: expected {want}, found {have}")
        try:
            index = json.loads((d / "index.json").read_text("utf-8"))
        except (OSError, ValueError) as exc:
            problems.append(f"unreadable index.json: {exc}")
        else:
            for e in index.get("checkpoints", []):
                f = model_dir / e["file"]
                if f.is_file() and f.stat().st_size != e["size"]:
                    problems.append(f"{e['file']}: size {f.stat().st_size} != index {e['size']}")
            indexed = sorted(e["file"] for e in index.get("checkpoints", []))
            if indexed != want:
                problems.append(f"index lists {indexed}, expected {want}")
    if problems:
        raise AssertionError(
            f"experiment {exp_hash} under {base} is not laid out as expected:\n  "
            + "\n  ".join(problems)
        )
