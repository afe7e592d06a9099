"""bench/score_bench.py --write: its own marked section, one block per run kind, rest kept."""

from __future__ import annotations

from bench.score_bench import SECTION_END, SECTION_START, write_section

OTHER = "# Benchmarks\n\n## Label Studio sync\n\nsync figures\n"


def test_a_run_replaces_its_own_block_and_keeps_everything_else() -> None:
    first = write_section(OTHER, "CPU|small|64", "cpu run 1")
    assert first.startswith(OTHER.rstrip("\n"))
    assert first.count(SECTION_START) == 1
    assert first.rstrip("\n").endswith(SECTION_END)
    with_gpu = write_section(first, "H100|resnet50|224", "gpu run")
    notes = with_gpu.replace(SECTION_END, "What the figures say.\n" + SECTION_END)
    tail = notes + "\n## Later section\n\nlater text\n"
    again = write_section(tail, "CPU|small|64", "cpu run 2")
    assert "cpu run 1" not in again
    assert again.index("cpu run 2") < again.index("gpu run") < again.index("What the figures")
    assert again.startswith(OTHER.rstrip("\n"))
    assert again.endswith("## Later section\n\nlater text\n")
    assert again.count(SECTION_START) == again.count(SECTION_END) == 1
    assert write_section(again, "CPU|small|64", "cpu run 2") == again, "a rerun changes nothing"


def test_an_empty_file_gets_the_section() -> None:
    text = write_section("", "CPU|small|64", "cpu run")
    assert text.startswith(SECTION_START)
    assert "## Scoring throughput" in text
    assert "cpu run" in text
