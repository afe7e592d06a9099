"""The chunk-size benchmark scores the whole pool at every size and writes only its block."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from bench.chunk_bench import table

SCRIPT = Path(__file__).resolve().parents[3] / "bench" / "chunk_bench.py"


def _args(**extra: object) -> argparse.Namespace:
    values = {"model": "small", "size": 64, "n": 64, "batch": 16, "rounds": 2}
    return argparse.Namespace(**{**values, "source": "files", "store_url": None, **extra})


def test_each_size_is_set_against_the_first_in_its_own_round() -> None:
    # round 1: 100 and 300 (3.0x); round 2: 200 and 200 (1.0x): the ratio's median is 2.0x,
    # not the medians' ratio (250 / 150)
    measured = {256: [(100.0, 0.5), (200.0, 0.3)], 1024: [(300.0, 0.2), (200.0, 0.1)]}
    block = table(_args(), measured)
    assert "| 256 | 150 (100-200) | 1.00x | 0.400 |" in block
    assert "| 1,024 | 250 (200-300) | 2.00x | 0.150 |" in block
    assert block.startswith("<!-- chunk_bench:block small|64|files -->")
    assert block.endswith("<!-- chunk_bench:/block -->")
    assert "SQLite in a temporary folder" in block
    assert "postgresql+psycopg" in table(_args(store_url="postgresql+psycopg://h/db"), measured)


def test_the_script_scores_every_chunk_size_and_replaces_only_its_block(tmp_path: Path) -> None:
    page = tmp_path / "benchmarks.md"
    other = "<!-- chunk_bench:block small|64|http -->\nKEPT-CONTENT\n<!-- chunk_bench:/block -->"
    old = "<!-- chunk_bench:block bootstrap|16|files -->\nOLD-CONTENT\n<!-- chunk_bench:/block -->"
    page.write_text(f"# Benchmarks\n\n{old}\n\n{other}\n\n## After\n")
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--model", "bootstrap", "--size", "16", "--n", "48",
         "--batch", "8", "--chunks", "16,48", "--rounds", "1", "--write", str(page)],
        capture_output=True, text=True, check=True, timeout=300,
    ).stdout  # fmt: skip
    # a run a size after the warm-up, each scoring all 48 images (the bench raises otherwise)
    assert out.count("chunks of 16:") == 1
    assert out.count("chunks of 48:") == 1
    written = page.read_text()
    assert "OLD-CONTENT" not in written
    assert "KEPT-CONTENT" in written
    assert written.endswith("## After\n")
    rows = [line for line in written.splitlines() if line.startswith(("| 16 |", "| 48 |"))]
    assert len(rows) == 2
    assert rows[0].split(" | ")[2] == "1.00x"
