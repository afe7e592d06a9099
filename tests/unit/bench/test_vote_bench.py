"""The vote benchmark's quick run: both calls measured, the vote taken, only its section written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.vote_bench import MARKERS

SCRIPT = Path(__file__).resolve().parents[3] / "bench" / "vote_bench.py"


def test_a_quick_run_measures_both_calls_and_writes_its_section_only(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    start, end, notes = MARKERS
    other = "# Benchmarks\n\n## Batch selection\n\nselection figures\n"
    doc.write_text(f"{other}\n{start}\nold\n{notes}\nby hand\n{end}\n", encoding="utf-8")
    cmd = [sys.executable, str(SCRIPT), "--quick", "--write", str(doc)]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300)
    text = doc.read_text(encoding="utf-8")
    assert text.startswith(other)
    assert "old" not in text
    assert "by hand" in text
    assert "| `plan_batch` without the vote, baseline |" in text
    assert "| `plan_batch` with the vote |" in text
    assert "the quota term read the vote of the 5 nearest of 500 labelled images" in text
