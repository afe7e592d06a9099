"""The selection benchmark survives a child that dies for memory and writes only its section."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench.select_bench import END, NOTES, START, why_failed

SCRIPT = Path(__file__).resolve().parents[3] / "bench" / "select_bench.py"
OTHER = (
    "# Benchmarks\n\n## Label Studio sync\n\nsync figures\n\n"
    "<!-- score_bench:start -->\n## Scoring throughput\n\nscore figures\n<!-- score_bench:end -->\n"
)


def test_a_child_killed_by_the_kernel_reads_killed_memory() -> None:
    child = subprocess.run(
        [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"],
        check=False,
        capture_output=True,
        text=True,
    )
    assert child.returncode == -signal.SIGKILL
    assert why_failed(child.returncode, child.stderr) == "killed (memory)"


def test_other_failures_say_what_happened() -> None:
    child = subprocess.run(
        [sys.executable, "-c", "raise SystemExit('no pool here')"],
        check=False,
        capture_output=True,
        text=True,
    )
    assert why_failed(child.returncode, child.stderr) == "failed (exit 1: no pool here)"
    assert why_failed(0, "") is None


@pytest.mark.slow
def test_a_run_over_its_memory_cap_is_reported_and_the_section_still_written(
    tmp_path: Path,
) -> None:
    doc = tmp_path / "benchmarks.md"
    notes = f"{NOTES}\nA reading written by hand.\n"
    doc.write_text(
        f"{OTHER}\n{START}\n## Batch selection\n\nold figures\n\n{notes}{END}\n", encoding="utf-8"
    )
    # 3,000,000 candidates need 1.5 GiB of embeddings alone: over a 1 GiB address-space cap
    cmd = [sys.executable, str(SCRIPT), "--n", "3000000", "--b", "50", "--peer-sizes", "500"]
    cmd += ["--mem-limit-gb", "1", "--write", str(doc)]
    for _ in range(2):  # the second run replaces the section, nothing else
        run = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300)
        assert "RESULT select 50 of 3,000,000: did not finish: killed (memory)" in run.stdout
    text = doc.read_text(encoding="utf-8")
    assert text.startswith(OTHER)
    assert text.count(START) == 1
    assert text.count(END) == 1
    section = text[text.index(START) : text.index(END)]
    assert "Our run did not finish: killed (memory)." in section
    assert "--mem-limit-gb 1" in section
    assert "old figures" not in section
    assert section.count(NOTES) == 1
    assert section.endswith(notes)  # the hand-written notes stay, below the new figures
