"""A benchmark's own part of a Markdown page, between its two marker comments."""

from __future__ import annotations

from pathlib import Path


def put_marked(path: Path, block: str, start: str, end: str) -> None:
    """``block`` (which opens with ``start`` and closes with ``end``) in place of what the page
    at ``path`` holds from ``start`` to ``end``, or appended where the markers are missing; the
    rest of the page is kept. A missing page starts as "# Benchmarks"."""
    page = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    block = block.strip("\n")
    if start in page and end in page:
        head, rest = page.split(start, 1)
        page = head + block + rest.split(end, 1)[1]
    else:
        page = page.rstrip("\n") + "\n\n" + block
    path.write_text(page.rstrip("\n") + "\n", encoding="utf-8")
