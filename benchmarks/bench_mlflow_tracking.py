"""``mlflow_tracking`` set-up cost (issue: uploads). Ratio measured in one run.

Per-test set-up of the fixture (copy a migrated template DB, point mlflow at it, open
a store on it and query it) vs creating a fresh sqlite tracking store (schema
migrations, then the same query). Target: >= 15x. mlflow is imported and the
template built before timing starts, as the session fixture does once per run.

    python benchmarks/bench_mlflow_tracking.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from pytest_ckpts.testing.mlflow import TemplateStore, mlflow_state


def open_store(db: Path, artifacts: Path) -> None:
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore(f"sqlite:///{db}", str(artifacts))
    store.search_experiments()  # the store answers: it is usable
    store.engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_str:
        tmp = Path(tmp_str)
        template = TemplateStore(tmp / "template")  # once per session in the fixture
        fresh, setup, copied = [], [], []
        for i in range(args.repeats):
            t0 = time.perf_counter()
            open_store(tmp / f"fresh{i}.db", tmp / f"fresh{i}")
            fresh.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            db, artifacts = template.copy_to(tmp / f"copy{i}")
            with mlflow_state(f"sqlite:///{db}", str(artifacts)):  # the fixture's whole set-up
                setup.append(time.perf_counter() - t0)
                open_store(db, artifacts)
                copied.append(time.perf_counter() - t0)
        f, s, c = (statistics.median(x) for x in (fresh, setup, copied))
        print(f"fresh sqlite store (migrations + first query) {f * 1000:.0f} ms")
        print(
            f"mlflow_tracking set-up (template copy) {s * 1000:.1f} ms; "
            f"+ opening the store and a first query {c * 1000:.0f} ms"
        )
        print(f"speed-up, like for like (target >= 15x): {f / c:.1f}x")


if __name__ == "__main__":
    main()
