"""Optional extras are imported lazily and a missing one says what to install."""

from __future__ import annotations

import pytest

from pytest_ckpts._extras import require


def test_present_module_is_returned() -> None:
    assert require("json", "tests").dumps([1]) == "[1]"


def test_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if mlflow were not installed
    with pytest.raises(
        ImportError, match=r'uploading artifacts needs mlflow: pip install "pytest-ckpts\[mlflow\]"'
    ):
        require("mlflow", "uploading artifacts")
