"""docs/experiments/fidelity.md shows what its script computes from the raw results beside it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "experiments" / "fidelity.md"


def test_the_fidelity_tables_are_the_scripts_output():
    printed = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "fidelity_tables.py"),
         str(PAGE.parent / "fidelity")],
        capture_output=True, text=True, check=True,
    ).stdout
    rows = [line for line in printed.splitlines() if line.startswith("| `")]
    assert len(rows) >= 2 * (5 + 4) + 5  # two studies of 5 variants and 4 contrasts, Adam vs LAMB
    page = PAGE.read_text(encoding="utf-8")
    missing = [row for row in rows if row not in page]
    assert not missing, f"fidelity.md lacks the script's rows {missing[:3]}"
