"""A decode process asks for the next batch's images before it works on this one."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
import torch

from planner.errors import AuthError
from tests.unit.workers.conftest import KeptAliveServer
from tests.unit.workers.test_inference import NoDropout, _net
from workers.ahead import Ahead, Fetcher, hinted
from workers.batches import Images
from workers.decode import decode
from workers.decoders import Decoders
from workers.devices import usable_cpus
from workers.images import ImageSource
from workers.inference import score_items


def _digit(i: int) -> str:
    return f"/data/local-files/?d=digits/{i:04d}.png"


@pytest.fixture
def label_studio(digit_files: tuple[Path, list[int]]) -> Iterator[KeptAliveServer]:
    """Serves the digit images, each after 20 ms (a server a round trip away)."""
    root, _ = digit_files

    def body(path: str) -> bytes:
        time.sleep(0.02)
        return (root / parse_qs(urlsplit(path).query)["d"][0]).read_bytes()

    server = KeptAliveServer(body)
    yield server
    server.stop()


def _asked(server: KeptAliveServer) -> Counter[str]:
    return Counter(urlsplit(path).query for path in server.paths)


def _query(reference: str) -> str:
    return urlsplit(reference).query


def test_each_batch_carries_the_next_one_its_process_is_handed() -> None:
    batches = [[(10 * j + k, f"r{j}-{k}", None) for k in range(3)] for j in range(7)]
    out = hinted(batches, 3)
    assert [list(b) for b in out] == batches, "the batches themselves as they were"
    for j, batch in enumerate(out):
        expected = tuple(ref for _, ref, _ in batches[j + 3]) if j + 3 < 7 else ()
        assert getattr(batch, "ahead", None) == expected, j
    assert all(not getattr(b, "ahead", ()) for b in hinted(batches, 0)), "no processes: none"


def test_a_batch_asked_for_ahead_is_read_from_that_fetch(
    label_studio: KeptAliveServer, digit_files: tuple[Path, list[int]]
) -> None:
    root, _ = digit_files
    source = ImageSource(label_studio_url=label_studio.url)
    first = [_digit(i) for i in range(4)]
    second = [_digit(i) for i in range(4, 8)]
    fetcher = Fetcher(source, 4)
    try:
        got = dict(fetcher.take(first))
        fetcher.ask(second)
        deadline = time.monotonic() + 10
        while sum(_asked(label_studio)[_query(r)] for r in second) < 4:
            assert time.monotonic() < deadline, "the next batch was not asked for"
            time.sleep(0.01)
        got_second = dict(fetcher.take(second))
        assert fetcher.started == 2, "the second batch came from the fetch asked ahead"
        assert got == {i: (root / f"digits/{i:04d}.png").read_bytes() for i in range(4)}
        assert got_second == {i: (root / f"digits/{i + 4:04d}.png").read_bytes() for i in range(4)}
        # a batch other than the one asked for is fetched now; the one asked for is dropped
        fetcher.ask(first)
        got_again = dict(fetcher.take(second))
        assert got_again == got_second
        assert fetcher.started == 4
        assert all(n <= 2 for n in _asked(label_studio).values())
    finally:
        fetcher.close()
        source.close()


def test_what_fails_the_batch_is_raised_where_the_batch_is_read() -> None:
    server = KeptAliveServer(lambda path: b"", lambda path, headers: 401)
    source = ImageSource(label_studio_url=server.url, label_studio_token="legacy")
    fetcher = Fetcher(source, 4)
    try:
        fetcher.ask([_digit(0), _digit(1)])
        with pytest.raises(AuthError, match="answered 401"):
            list(fetcher.take([_digit(0), _digit(1)]))
        # and the fetching thread goes on with the next batch
        with pytest.raises(AuthError, match="answered 401"):
            list(fetcher.take([_digit(2), _digit(3)]))
    finally:
        fetcher.close()
        source.close()
        server.stop()


def test_a_decode_process_asks_for_its_next_batch_before_it_returns_this_one(
    label_studio: KeptAliveServer, digit_files: tuple[Path, list[int]]
) -> None:
    root, _ = digit_files
    source = ImageSource(label_studio_url=label_studio.url)
    items = [(i, _digit(i), None) for i in range(12)]
    first, second = Ahead(items[:6]), Ahead(items[6:])
    first.ahead = tuple(ref for _, ref, _ in second)
    images = Images(source, 8, fetchers=4)  # as a decode process has it
    try:
        rows = images.__getitems__(first)
        deadline = time.monotonic() + 10
        while sum(_asked(label_studio)[_query(ref)] for _, ref, _ in second) < 6:
            assert time.monotonic() < deadline, "the next batch was not asked for"
            time.sleep(0.01)
        rows += images.__getitems__(second)
        assert [row[0] for row in rows] == list(range(12))
        for task_id, pixels, reason, _ in rows:
            assert pixels is not None, reason
            expected = decode((root / f"digits/{task_id:04d}.png").read_bytes(), 8)
            assert np.array_equal(pixels.numpy(), expected)
        assert set(_asked(label_studio).values()) == {1}, "each image asked for once"
    finally:
        source.close()


def test_a_bad_image_asked_for_ahead_is_unscorable_and_the_rest_scored(
    digit_files: tuple[Path, list[int]],
) -> None:
    root, _ = digit_files

    def body(path: str) -> bytes:
        name = parse_qs(urlsplit(path).query)["d"][0]
        return b"not an image" if name.endswith("0005.png") else (root / name).read_bytes()

    server = KeptAliveServer(body)
    source = ImageSource(label_studio_url=server.url)
    items = [(i, _digit(i), None) for i in range(8)]
    first, second = Ahead(items[:4]), Ahead(items[4:])
    first.ahead = tuple(ref for _, ref, _ in second)
    images = Images(source, 8, fetchers=4)
    try:
        images.__getitems__(first)
        rows = images.__getitems__(second)
        reasons = {row[0]: row[2] for row in rows if row[1] is None}
        assert list(reasons) == [5], reasons
        assert "corrupt" in reasons[5]
        assert sum(row[1] is not None for row in rows) == 3
    finally:
        source.close()
        server.stop()


def test_replicas_read_each_image_once_across_chunks_and_score_as_one_process(
    label_studio: KeptAliveServer, digit_files: tuple[Path, list[int]]
) -> None:
    """The hints match what the DataLoader hands each process: a batch fetched ahead and
    then not taken would be asked for a second time."""
    root, _ = digit_files
    items = [(i + 1, _digit(i)) for i in range(48)]
    source = ImageSource(label_studio_url=label_studio.url)
    model = _net(NoDropout)
    options = {"batch_size": 4, "device": "cpu", "image_size": 16}
    decoders = Decoders()
    try:
        parts = [
            score_items(
                model, chunk, source, num_workers=usable_cpus(), decoders=decoders, **options
            )
            for chunk in (items[:24], items[24:])
        ]
    finally:
        decoders.close()
    assert decoders.started == 1
    asked = _asked(label_studio)
    assert len(asked) == 48
    assert set(asked.values()) == {1}, asked.most_common(3)
    alone = score_items(model, items, ImageSource(image_root=root), num_workers=0, **options)
    got = {t: p for part in parts for t, p in zip(part.task_ids, part.probs, strict=True)}
    assert sorted(got) == alone.task_ids
    for task_id, probs in zip(alone.task_ids, alone.probs, strict=True):
        assert np.allclose(got[task_id], probs, atol=1e-2), task_id


class Waiting(NoDropout):
    """Each forward pass waits (up to 10 s) for the file ``signal``, and notes in ``log``
    whether it came (files: the pass runs in a forked decode process)."""

    def __init__(self, signal: Path, log: Path) -> None:
        torch.manual_seed(0)
        super().__init__()
        self.signal = signal
        self.log = log

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        deadline = time.monotonic() + 10
        while not self.signal.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        with self.log.open("a") as out:
            out.write(f"{self.signal.exists()}\n")
        return super().forward(x)


def test_a_replica_asks_for_its_next_batch_before_its_forward_pass_ends(
    digit_files: tuple[Path, list[int]], tmp_path: Path
) -> None:
    """The first forward pass of each replica waits until the server has been asked for every
    image of the second batches: they come only if asked for ahead."""
    root, _ = digit_files
    workers = usable_cpus()
    items = [(i + 1, _digit(i)) for i in range(4 * 2 * workers)]  # two batches a process
    second_round = {_query(ref) for _, ref in items[4 * workers :]}
    signal = tmp_path / "all-asked"

    def body(path: str) -> bytes:
        query = urlsplit(path).query
        second_round.discard(query)
        if not second_round:
            signal.touch()
        return (root / parse_qs(query)["d"][0]).read_bytes()

    server = KeptAliveServer(body)
    source = ImageSource(label_studio_url=server.url)
    model = Waiting(signal, tmp_path / "passes.log").eval()
    try:
        scores = score_items(
            model, items, source, batch_size=4, device="cpu", image_size=16, num_workers=workers
        )
    finally:
        server.stop()
    assert len(scores.task_ids) == len(items)
    passes = (tmp_path / "passes.log").read_text().split()
    assert passes == ["True"] * 2 * workers, "a first pass waited in vain: not asked ahead"
