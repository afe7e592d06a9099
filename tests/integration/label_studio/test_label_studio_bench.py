"""bench/label_studio_bench.py against a Label Studio of its own: every reading is timed and
its section written where the markers are."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bench.label_studio_bench import END, START, measure, section
from bench.pages import put_marked

pytestmark = pytest.mark.integration


def test_a_quick_run_times_the_server_and_writes_its_section(tmp_path: Path) -> None:
    measured = measure(16, 32, 1)
    assert set(measured) == {"stand_in", "one", "at_once", "disk"}
    for name in ("one", "at_once"):  # the stand-in's few ms may fall under a clock tick
        server, client, wall = measured[name][0]
        assert server > 0, f"{name}: no server CPU counted"
        assert client > 0
        assert wall > 0
    assert measured["disk"][0][0] == 0.0  # no server asked
    args = argparse.Namespace(n=16, size=32, rounds=1)
    page = tmp_path / "benchmarks.md"
    page.write_text("# Benchmarks\n\nkept\n")
    put_marked(page, f"{START}\n{section(measured, args).strip()}\n{END}", START, END)
    text = page.read_text()
    assert "kept" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 5, rows  # the header and four readings
    assert "--n 16 --size 32 --rounds 1 --write docs/benchmarks.md" in text
