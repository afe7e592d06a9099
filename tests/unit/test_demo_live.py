"""The live demo's pieces that need no server: the long-tailed images, the quotas, its config."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
from PIL import Image

from integrations.label_studio.launcher import ServerState
from planner.demo_display import cycle_line
from planner.demo_live import CycleRow, LiveDemoOptions, default_quotas, write_config
from planner.examples.digits import DIGITS, long_tail_counts, write_digit_images
from planner.params import quotas_from_settings
from planner.settings import load_settings


def test_the_tail_falls_from_head_to_head_over_ratio() -> None:
    counts = long_tail_counts(80, 8.0)
    assert counts[0] == 80
    assert counts[-1] == 10
    assert all(a > b for a, b in itertools.pairwise(counts))


def test_digit_images_are_long_tailed_shuffled_pngs(tmp_path: Path) -> None:
    images = write_digit_images(tmp_path / "digits", head=30, ratio=6.0, size=48)
    assert images.counts() == dict(zip(DIGITS, long_tail_counts(30, 6.0), strict=True))
    assert list(images.digits) != sorted(images.digits), "shuffled: no digit comes in a block"
    first = Image.open(images.folder / images.files[0])
    assert first.size == (48, 48)
    assert np.asarray(first).max() > 0
    task = images.tasks(tmp_path)[0]
    assert task == {"data": {"image": f"/data/local-files/?d=digits/{images.files[0]}"}}


def test_the_quotas_ask_for_part_of_what_the_pool_holds() -> None:
    pool = long_tail_counts(80, 8.0)
    quotas = default_quotas(80, 8.0)
    assert set(quotas) == {"7", "8", "9"}
    assert all(0 < target < pool[int(name)] for name, target in quotas.items())


def test_the_written_config_is_what_the_daemon_reads(tmp_path: Path) -> None:
    root = tmp_path / "images"
    server = ServerState(1, 1, 8080, "http://127.0.0.1:8080", "tok-123456", "u", "d", str(root), "")
    options = LiveDemoOptions(batch_size=12, head=40)
    settings = load_settings(write_config(tmp_path / "p", server, 5, options), environ=False)
    assert settings.label_studio.project_id == 5
    assert settings.label_studio.token is not None
    assert settings.label_studio.token.get_secret_value() == "tok-123456"
    assert settings.planning.batch_size == 12
    assert {q.class_name: q.target for q in quotas_from_settings(settings)} == options.targets()
    assert settings.workers.image_root == root
    assert settings.artifacts.dir == tmp_path / "p" / "artifacts"


def test_a_cycle_line_says_what_the_batch_found() -> None:
    row = CycleRow(2, "planner-p1-b00002", "pushed", 55, {"8": 3}, 25, {"8": 2}, 25, 12.5)
    line = cycle_line(row)
    assert "pushed planner-p1-b00002: 25 tasks, 2 rare (2 of 8)" in line
    assert "left for you" not in line
    last = CycleRow(3, "planner-p1-b00003", "pushed", 80, {"8": 5}, 25, {"8": 0}, 0, 9.0)
    assert cycle_line(last).endswith("left for you to label")
