"""pytest_ckpts.mlflow_fixtures: imports nothing heavy, and restores MLflow's state in a user suite."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_fixtures_module_does_not_import_mlflow() -> None:
    code = (
        "import sys, pytest_ckpts.plugin, pytest_ckpts.mlflow_fixtures, pytest_ckpts.uploads\n"
        "print(sorted(m for m in ('mlflow', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_fixtures_restore_state_in_a_user_suite(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One subprocess run: a user suite on the auto-loaded plugin, no cacheprovider.

    Each fixture's teardown is checked by the test that runs after it.
    """
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        monkeypatch.delenv(name, raising=False)  # the inner run is not an xdist worker
    pytester.makepyfile(
        """
        import os
        from pathlib import Path
        import mlflow
        from mlflow.tracking import fluent
        from pytest_ckpts.uploads import upload_training_artifacts

        BEFORE = {}

        def state():
            return (
                {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"},
                mlflow.get_tracking_uri(),
                mlflow.get_registry_uri(),
                os.getcwd(),
                fluent._active_experiment_id,
            )

        def test_a_record_state():
            BEFORE["state"] = state()

        def test_b_tracking(mlflow_tracking, tmp_path):
            assert os.environ["MLFLOW_TRACKING_URI"] == mlflow_tracking.tracking_uri
            assert mlflow.get_tracking_uri() == mlflow_tracking.tracking_uri
            d = tmp_path / "ckpt"
            d.mkdir()
            (d / "w.pt").write_bytes(b"w" * 100)
            with mlflow.start_run() as run:
                assert upload_training_artifacts(d) == {"checkpoint": True}
            mlflow_tracking.assert_archive_first(run.info.run_id, "training", d)
            mlflow.set_experiment("scratch")
            mlflow.set_registry_uri(mlflow_tracking.tracking_uri)
            mlflow.start_run()  # left active on purpose: the fixture must end it

        def check_restored():
            env, *rest = state()
            before_env, *before_rest = BEFORE["state"]
            changed = {k for k in env.keys() | before_env.keys() if env.get(k) != before_env.get(k)}
            assert changed == set()
            assert rest == before_rest

        def test_c_restored():
            check_restored()
            assert mlflow.active_run() is None

        def test_d_server(mlflow_server, tmp_path):
            assert mlflow.get_tracking_uri().startswith("http://127.0.0.1:")
            with mlflow.start_run() as run:
                assert run.info.experiment_id == mlflow_server.experiment_id
                mlflow.log_text("hi", "hello.txt")
            assert mlflow_server.list_artifacts(run.info.run_id) == ["hello.txt"]
            mlflow.start_run()

        def test_e_restored():
            check_restored()
            assert mlflow.active_run() is None
            assert not Path("mlruns").exists()
        """
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-p", "no:randomly", "-W", "error", timeout=120
    )
    result.assert_outcomes(passed=5)
    assert not (pytester.path / "mlruns").exists()
    assert not (pytester.path / "mlflow.db").exists()
