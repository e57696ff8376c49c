"""The engine A/B harness runs both sides and pairs their runs (loadtests/engine_ab.py)."""

from __future__ import annotations

import subprocess
import sys

from loadtests.engine_ab import compare
from tests.conftest import ROOT


def test_a_checkout_against_itself() -> None:
    found = compare([ROOT, ROOT], pairs=2)
    assert found["a_median"] > 0 and found["b_median"] > 0
    assert found["b_over_a_min"] <= found["b_over_a_paired_median"] <= found["b_over_a_max"]
    # Each side says what it ran: this suite refuses stale machine code, so compiled or interpreted.
    assert found["a_hot_path"] == found["b_hot_path"] and found["a_hot_path"].startswith(("compiled", "interpreted"))


def test_help_and_a_missing_side() -> None:
    shown = subprocess.run([sys.executable, "-m", "loadtests.engine_ab", "--help"], cwd=ROOT, capture_output=True,
                           text=True, check=True)
    assert "--pairs" in shown.stdout
    refused = subprocess.run([sys.executable, "-m", "loadtests.engine_ab", str(ROOT)], cwd=ROOT, capture_output=True,
                             text=True)
    assert refused.returncode == 2 and "two checkouts" in refused.stderr
