"""Manifest parsing benchmark (issue "CI reality": every process parses the manifest).

A fleet-sized manifest (``--entries``, default 1000) is parsed by

1. ``yaml.safe_load`` with PyYAML's pure-Python loader (what a naive parser pays),
2. ``yaml.load`` with libyaml's ``CSafeLoader`` (the baseline: target ours <= 2x),
3. ``load_manifest`` cold: read, bounded compose, full validation, no cache,
4. ``load_manifest`` warm: the same file again in the same process (the plugin, the
   fixtures and the library API share one parse).

Each repeat runs all of them back to back; ratios are taken within a repeat, and the
min and median over repeats are printed (the machine is noisy).

    python benchmarks/bench_manifest.py [--entries 1000] [--repeats 7]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from pytest_ckpts import manifest as manifest_module
from pytest_ckpts.manifest import load_manifest


def fleet_manifest(entries: int) -> str:
    lines = ["config:", '  hf_repo: "org/fleet-checkpoints"', '  cache_dir: "./checkpoints"']
    lines.append("checkpoints:")
    for i in range(entries):
        digest = hashlib.sha256(str(i).encode()).hexdigest()
        lines += [
            f"  model_{i:05d}:",
            f"    filename: model_{i:05d}.ckpt",
            f"    hf_path: group_{i % 17}/vae/model_{i:05d}.ckpt",
            f'    sha256: "{digest}"',
            f'    description: "Model {i} of the fleet"',
            f"    size: {1_000_000 + i}",
        ]
    return "\n".join(lines) + "\n"


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    c_loader = getattr(yaml, "CSafeLoader", None)
    if c_loader is None:
        raise SystemExit("PyYAML was built without libyaml: no CSafeLoader baseline to compare")

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "checkpoints" / "checkpoints.yaml"
        path.parent.mkdir()
        text = fleet_manifest(args.entries)
        path.write_text(text, encoding="utf-8")
        assert len(load_manifest(path)) == args.entries  # warm imports, check the file

        def cold() -> None:
            manifest_module._CACHE.clear()
            load_manifest(path)

        runs: dict[str, list[float]] = {"pure": [], "c": [], "cold": [], "warm": []}
        for _ in range(args.repeats):
            runs["pure"].append(timed(lambda: yaml.load(text, Loader=yaml.SafeLoader)))
            runs["c"].append(timed(lambda: yaml.load(text, Loader=c_loader)))
            runs["cold"].append(timed(cold))
            runs["warm"].append(timed(lambda: load_manifest(path)))

    print(f"{args.entries} entries, {len(text) / 1024:.0f} KiB, {args.repeats} repeats")
    for key, label in (
        ("pure", "yaml.safe_load, pure-Python loader"),
        ("c", "yaml.load, CSafeLoader (baseline)"),
        ("cold", "load_manifest, first parse"),
        ("warm", "load_manifest, same file again"),
    ):
        ms = [t * 1e3 for t in runs[key]]
        print(f"  {label:38s} min {min(ms):8.2f} ms  median {statistics.median(ms):8.2f} ms")
    for key, label in (("cold", "first parse"), ("pure", "pure safe_load"), ("warm", "cached")):
        ratios = [a / b for a, b in zip(runs[key], runs["c"], strict=True)]
        target = "  (target <= 2)" if key == "cold" else ""
        print(
            f"ratio {label} / CSafeLoader: min {min(ratios):.2f}  "
            f"median {statistics.median(ratios):.2f}{target}"
        )


if __name__ == "__main__":
    main()
