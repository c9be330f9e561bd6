"""pytest_ckpts.plugin, the module: what importing it costs."""

from __future__ import annotations

import subprocess
import sys


def test_plugin_import_is_cheap() -> None:
    code = (
        "import sys, pytest_ckpts.plugin, pytest_ckpts\n"
        "heavy = sorted(m for m in ('torch', 'mlflow', 'safetensors', 'numpy', 'huggingface_hub')"
        " if m in sys.modules)\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
