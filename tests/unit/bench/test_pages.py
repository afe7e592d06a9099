"""bench/pages.py: a benchmark's block between its markers, the rest of the page kept."""

from __future__ import annotations

from pathlib import Path

from bench.pages import put_marked

START, END = "<!-- x:start -->", "<!-- x:end -->"


def test_a_block_is_appended_then_replaced_and_the_rest_kept(tmp_path: Path) -> None:
    page = tmp_path / "benchmarks.md"
    put_marked(page, f"{START}\nrun 1\n{END}\n", START, END)
    assert page.read_text() == f"# Benchmarks\n\n{START}\nrun 1\n{END}\n"
    page.write_text(page.read_text() + "\n## Later\n\nkept\n")
    put_marked(page, f"{START}\nrun 2\n{END}", START, END)
    assert page.read_text() == f"# Benchmarks\n\n{START}\nrun 2\n{END}\n\n## Later\n\nkept\n"
    before = page.read_text()
    put_marked(page, f"{START}\nrun 2\n{END}", START, END)
    assert page.read_text() == before, "a rerun changes nothing"
