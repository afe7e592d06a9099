"""A short soak in CI (``bench/soak.py`` runs the long one): the daemon's cycles in accelerated
time against the real Label Studio lose no annotation, push nothing twice and leak nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.soak import section, soak, write_section
from integrations.label_studio.launcher import ServerState

pytestmark = pytest.mark.integration


def test_twelve_cycles_lose_nothing_and_push_nothing_twice(
    label_studio: ServerState, tmp_path: Path
) -> None:
    result = soak(label_studio.url, label_studio.token, tmp_path, 12, batch=5, seed=3)
    assert result.pushed >= 10, result.outcomes
    assert result.annotations > 0
    assert result.lost == 0, "an annotation made in Label Studio is not labelled in the store"
    assert result.duplicate_predictions == 0
    assert result.double_ranked == 0
    growth = result.growth()
    assert growth["fds_end"] <= growth["fds_warm"] + 3, result.samples
    assert growth["sockets_end"] <= growth["sockets_warm"] + 2, result.samples
    assert growth["threads_end"] <= growth["threads_warm"] + 1, result.samples
    page = tmp_path / "reliability.md"
    page.write_text("# Reliability\n\nintro\n", encoding="utf-8")
    write_section(page, section(result, "python bench/soak.py --cycles 12"))
    write_section(page, section(result, "python bench/soak.py --cycles 12"))
    text = page.read_text(encoding="utf-8")
    assert text.count("## Soak") == 1, "a second write replaces the section"
    assert f"annotations lost: {result.lost}" in text
