"""pytest_ckpts.report: the summary lines and the report rows the plugin prints and writes."""

from __future__ import annotations

from pytest_ckpts.report import summary_lines
from pytest_ckpts.stats import Stats


def test_summary_says_1_error_not_1_errors() -> None:
    stats = Stats()
    stats.record("vae", "failed", reason="hub down")
    stats.record("ldm", "skipped", reason="offline")
    line = summary_lines(stats, verbose=False)[0]
    assert "1 error" in line
    assert "1 errors" not in line
    stats.record("enc", "failed", reason="hub down")
    assert "2 errors" in summary_lines(stats, verbose=False)[0]
