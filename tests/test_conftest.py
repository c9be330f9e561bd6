"""The suite's own isolation: a result must not depend on which test imported torch first.

pytester drops from sys.modules what an in-process run imported; ``tests/conftest.py``
imports the modules that cannot be imported twice before pytester snapshots. This checks
it in a fresh process, where nothing else has imported them yet.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

INNER = """
def test_two_in_process_runs(pytester):
    # torch.optim imports torch._dynamo on first use; numpy refuses a second import
    pytester.makepyfile("import numpy, torch._dynamo\\n\\ndef test_x():\\n    pass\\n")
    for _ in range(2):
        result = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:randomly")
        result.assert_outcomes(passed=1)
"""


@pytest.mark.slow
def test_in_process_runs_may_import_torch_and_numpy_again(tmp_path: Path) -> None:
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_inner.py").write_text(INNER, encoding="utf-8")
    args = ["-p", "pytester", "-p", "no:cacheprovider", "-p", "no:randomly", "-q"]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", *args, "test_inner.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
