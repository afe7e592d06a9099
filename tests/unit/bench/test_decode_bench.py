"""The decoding benchmark times both paths on every case and writes only its section."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.decode_bench import CASES, END, START, measure, section
from bench.pages import put_marked


def test_each_case_is_timed_both_ways_and_its_section_replaced(tmp_path: Path) -> None:
    measured = measure(n=2, rounds=2)
    assert list(measured) == list(CASES)
    for times in measured.values():
        assert set(times) == {"pillow", "workers"}
        assert all(len(runs) == 2 and min(runs) > 0 for runs in times.values())
    text = section(measured, argparse.Namespace(n=2, rounds=2))
    assert text.count(" us |") == 2 * len(CASES)
    assert "| 1024x1024 for 224x224 |" in text
    page = tmp_path / "benchmarks.md"
    page.write_text(f"# Benchmarks\n\n{START}\nold\n{END}\n\n## After\n")
    put_marked(page, f"{START}\n{text.strip()}\n{END}", START, END)
    written = page.read_text()
    assert "old" not in written
    assert written.endswith("## After\n")
    assert "## JPEG decoding" in written
