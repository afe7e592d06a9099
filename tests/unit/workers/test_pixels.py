"""The pixel cache: a rescoring reads no image, a changed file is read again, faults turn the
cache off without losing a score, files a crash may have torn are dropped, the folder stays
within its bound."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from PIL import Image

from tests.unit.workers.conftest import CLASSES, KeptAliveServer
from tests.unit.workers.test_inference import ITEMS, NoDropout, ThreadSpy, _net
from workers import devices, pixels
from workers.config import WorkerConfig
from workers.decode import decode
from workers.images import ImageSource
from workers.inference import score_items
from workers.pixels import PixelCache, pixel_key
from workers.scoring import _decode_labelled

MB = 2**20


@pytest.fixture
def label_studio(digit_files: tuple[Path, list[int]]) -> Iterator[KeptAliveServer]:
    """Serves the digit files at their ``/data/local-files/?d=`` references, as Label Studio
    does when the worker has no copy of the images."""
    root, _ = digit_files

    def body(path: str) -> bytes:
        relative = parse_qs(urlsplit(path).query)["d"][0]
        return (root / relative).read_bytes()

    server = KeptAliveServer(body)
    yield server
    server.stop()


def test_a_rescoring_reads_every_image_from_the_cache_and_scores_the_same(
    tmp_path: Path, label_studio: KeptAliveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = ImageSource(label_studio_url=label_studio.url)
    model = _net(NoDropout)
    first = score_items(
        model, ITEMS, source, batch_size=8, num_workers=1, cache=PixelCache(tmp_path, 64 * MB)
    )
    assert len(label_studio.paths) == len(ITEMS), "the first run fetches every image"
    monkeypatch.setattr(devices, "usable_cpus", lambda: 6)
    spy = ThreadSpy()
    spy.load_state_dict(model.state_dict())
    # a new cache object on the same folder: what the next chunk or worker process opens
    again = score_items(
        spy, ITEMS, source, batch_size=8, num_workers=1, cache=PixelCache(tmp_path, 64 * MB)
    )
    assert len(label_studio.paths) == len(ITEMS), "the rescoring fetched nothing"
    assert again.task_ids == first.task_ids
    np.testing.assert_allclose(again.probs, first.probs, rtol=0, atol=1e-6)
    assert spy.seen == [6, 6, 6], "no decoding left: every usable CPU runs the forward pass"
    fresh = score_items(model, ITEMS, source, batch_size=8, num_workers=0)
    np.testing.assert_allclose(fresh.probs, first.probs, rtol=0, atol=1e-6)


def test_only_the_missing_images_are_fetched(tmp_path: Path, label_studio: KeptAliveServer) -> None:
    source = ImageSource(label_studio_url=label_studio.url)
    cache = PixelCache(tmp_path, 64 * MB)
    score_items(_net(NoDropout), ITEMS[:10], source, batch_size=4, cache=cache)
    label_studio.paths.clear()
    scores = score_items(_net(NoDropout), ITEMS, source, batch_size=4, cache=cache)
    assert sorted(scores.task_ids) == [task_id for task_id, _ in ITEMS]
    fetched = sorted(parse_qs(urlsplit(p).query)["d"][0] for p in label_studio.paths)
    assert fetched == sorted(parse_qs(urlsplit(r).query)["d"][0] for _, r in ITEMS[10:])


def test_a_local_file_replaced_in_place_is_decoded_again(tmp_path: Path) -> None:
    root = tmp_path / "images"
    root.mkdir()
    path = root / "one.png"
    Image.fromarray(np.full((32, 32), 10, dtype=np.uint8)).save(path)
    items = [(1, "/data/local-files/?d=one.png")]
    source = ImageSource(image_root=root)
    cache = PixelCache(tmp_path / "cache", 64 * MB)
    model = _net(NoDropout)
    dark = score_items(model, items, source, cache=cache).probs
    key = pixel_key(source, items[0][1], 32)
    assert key is not None
    assert cache.get(key, 32) is not None
    Image.fromarray(np.full((32, 32), 250, dtype=np.uint8)).save(path)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a later write
    light = score_items(model, items, source, cache=cache).probs
    uncached = score_items(model, items, source).probs
    np.testing.assert_allclose(light, uncached, rtol=0, atol=1e-6)
    assert not np.allclose(light, dark, atol=1e-3), "the old pixels were not served"


def test_the_same_reference_under_another_root_or_size_has_its_own_entry(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / name / "x.png")
    reference = "/data/local-files/?d=x.png"
    a = pixel_key(ImageSource(image_root=tmp_path / "a"), reference, 32)
    b = pixel_key(ImageSource(image_root=tmp_path / "b"), reference, 32)
    assert a is not None
    assert b is not None
    assert a != b
    assert pixel_key(ImageSource(image_root=tmp_path / "a"), reference, 64) != a
    served = ImageSource(label_studio_url="http://ls-one:8080")
    other = ImageSource(label_studio_url="http://ls-two:8080")
    assert pixel_key(served, "/data/upload/1/x.png", 32) != pixel_key(
        other, "/data/upload/1/x.png", 32
    )
    assert pixel_key(served, "gopher://x/y.png", 32) is None, "read refuses it: no key"
    missing = pixel_key(ImageSource(image_root=tmp_path / "a"), "/data/local-files/?d=no.png", 32)
    assert missing is None, "a file that is not there has no key; reading it says why"


def test_a_reference_past_lmdbs_key_size_is_cached_under_its_digest(
    tmp_path: Path, label_studio: KeptAliveServer
) -> None:
    """A presigned URL is longer than the 511 bytes LMDB takes for a key: stored under the
    reference itself, the first such image turned the cache off for the run."""
    signature = "&X-Amz-Signature=" + "5f" * 1000
    items = [(task_id, reference + signature) for task_id, reference in ITEMS[:8]]
    assert all(len(reference) > 2000 for _, reference in items)
    source = ImageSource(label_studio_url=label_studio.url)
    cache = PixelCache(tmp_path, 64 * MB)
    try:
        first = score_items(_net(NoDropout), items, source, batch_size=4, cache=cache)
        assert cache.broken is None, cache.broken
        assert not first.warnings, first.warnings
        label_studio.paths.clear()
        again = score_items(_net(NoDropout), items, source, batch_size=4, cache=cache)
    finally:
        cache.close()
    assert label_studio.paths == [], "the rescoring fetched nothing: every image was cached"
    assert sorted(again.task_ids) == sorted(first.task_ids) == [t for t, _ in items]
    key = pixel_key(source, items[0][1], 32)
    assert key is not None
    assert len(key) == 64
    assert pixel_key(source, items[0][1] + "0", 32) != key


def test_a_corrupt_cache_is_turned_off_with_a_warning_and_every_image_is_scored(
    tmp_path: Path, label_studio: KeptAliveServer
) -> None:
    source = ImageSource(label_studio_url=label_studio.url)
    folder = tmp_path / "cache"
    cache = PixelCache(folder, 64 * MB)
    score_items(_net(NoDropout), ITEMS, source, cache=cache)
    cache.close()
    (folder / "data.mdb").write_bytes(b"this is not a database" * 1000)
    label_studio.paths.clear()
    broken = PixelCache(folder, 64 * MB)
    scores = score_items(_net(NoDropout), ITEMS, source, batch_size=8, cache=broken)
    assert sorted(scores.task_ids) == [task_id for task_id, _ in ITEMS]
    assert not scores.unscorable
    assert len(label_studio.paths) == len(ITEMS), "read from Label Studio instead"
    assert broken.broken is not None
    assert any("pixel cache" in w and "turned off" in w for w in scores.warnings)


def test_files_written_under_another_boot_are_dropped_and_this_boots_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    boot = tmp_path / "boot_id"
    monkeypatch.setattr(pixels, "BOOT_ID", str(boot))
    boot.write_text("first-boot\n")
    pixel = np.full((8, 8, 3), 7, np.uint8)
    cache = PixelCache(tmp_path / "cache", 64 * MB)
    cache.put_many([("k", pixel)])
    cache.close()
    again = PixelCache(tmp_path / "cache", 64 * MB)
    stored = again.get("k", 8)
    again.close()
    assert stored is not None, "the same boot: kept"
    np.testing.assert_array_equal(stored, pixel)
    boot.write_text("second-boot\n")  # a crash or a power cut since: stored unflushed
    after = PixelCache(tmp_path / "cache", 64 * MB)
    assert after.get("k", 8) is None, "written before the reboot: dropped"
    assert after.broken is None
    after.put_many([("k2", pixel)])
    assert after.get("k2", 8) is not None
    after.close()


def test_a_decode_process_forked_with_the_cache_open_stores_into_the_same_folder(
    tmp_path: Path,
) -> None:
    cache = PixelCache(tmp_path / "cache", 64 * MB)
    cache.put_many([("parent", np.zeros((8, 8, 3), np.uint8))])  # open here before the fork
    child = multiprocessing.get_context("fork").Process(
        target=cache.put_many, args=([("child", np.ones((8, 8, 3), np.uint8))],)
    )
    child.start()
    child.join(30)
    assert child.exitcode == 0
    stored = cache.get("child", 8)
    assert stored is not None, "the child's entry is in the parent's cache"
    assert int(stored.max()) == 1
    assert cache.get("parent", 8) is not None
    assert cache.broken is None
    cache.close()


def test_the_index_of_the_earlier_format_is_dropped(tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    folder.mkdir()
    for name in ("cache.db", "cache.db-wal", "cache.db-shm"):
        (folder / name).write_bytes(b"diskcache's SQLite index" * 100)
    (folder / "ab" / "cd").mkdir(parents=True)
    (folder / "ab" / "cd" / "0f1e.val").write_bytes(bytes(150_528))  # an entry kept as a file
    (folder / "ab" / "ef").mkdir()
    (folder / "ab" / "ef" / "notes.txt").write_text("not the cache's")
    (folder / "mine.txt").write_text("not the cache's")
    cache = PixelCache(folder, 64 * MB)
    cache.put_many([("k", np.zeros((8, 8, 3), np.uint8))])
    cache.close()
    assert not any((folder / name).exists() for name in ("cache.db", "cache.db-wal"))
    assert not (folder / "ab" / "cd").exists()
    assert (folder / "mine.txt").exists(), "only the old cache's files go"
    assert (folder / "ab" / "ef" / "notes.txt").exists()


def test_the_cache_keeps_within_its_bound(tmp_path: Path) -> None:
    cache = PixelCache(tmp_path, 1 * MB)
    rows = [(f"k{i}", np.full((64, 64, 3), i % 255, np.uint8)) for i in range(300)]
    for start in range(0, len(rows), 16):  # 300 x 12 KB: 3.5 times the bound
        cache.put_many(rows[start : start + 16])
    assert 0.9 * MB <= cache.volume() <= 1 * MB, "entries, in whole pages"
    assert cache.disk_bytes() <= 2 * MB, "the file: entries, B-tree, pages freed for reuse"
    kept = [key for key, _ in rows if cache.get(key, 64) is not None]
    cache.put_many(rows[290:])  # stored again: replaced, not counted twice
    assert [key for key, _ in rows if cache.get(key, 64) is not None] == kept
    assert 0.9 * MB <= cache.volume() <= 1 * MB
    assert cache.get("k299", 64) is not None, "the most recent entries stay"
    assert cache.get("k0", 64) is None, "the oldest went first"
    assert cache.get("k299", 32) is None, "an entry of another size is a miss"
    stored = cache.get("k299", 64)
    assert stored is not None
    assert int(stored[0, 0, 0]) == 299 % 255


def test_an_unwritable_folder_turns_the_cache_off_not_the_scoring(
    tmp_path: Path, digit_files: tuple[Path, list[int]]
) -> None:
    root, _ = digit_files
    blocked = tmp_path / "cache"
    blocked.write_text("a file where the cache folder should be")
    cache = PixelCache(blocked, 64 * MB)
    scores = score_items(_net(NoDropout), ITEMS, ImageSource(image_root=root), cache=cache)
    assert len(scores.task_ids) == len(ITEMS)
    assert cache.broken is not None
    assert "delete the folder" in cache.broken


def test_the_bootstrap_reads_its_labelled_images_through_the_cache_in_their_order(
    tmp_path: Path, digit_files: tuple[Path, list[int]]
) -> None:
    root, targets = digit_files
    in_flight, most = [0], [0]
    lock = threading.Lock()

    def body(path: str) -> bytes:
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        time.sleep(0.02)  # a server a little way off: the reads should overlap
        with lock:
            in_flight[0] -= 1
        return (root / parse_qs(urlsplit(path).query)["d"][0]).read_bytes()

    server = KeptAliveServer(body, lambda path, _: 404 if "missing" in path else 200)
    try:
        rows = [(f"/data/local-files/?d=digits/{i:04d}.png", targets[i]) for i in range(40)]
        rows.insert(7, ("/data/local-files/?d=digits/missing.png", 3))
        cfg = WorkerConfig(store_url="sqlite://", classes=CLASSES, label_studio_url=server.url)
        cache = PixelCache(tmp_path, 64 * MB)
        _decode_labelled(cfg, rows[::3], cache)  # a third of them cached by an earlier training
        asked = len(server.paths)
        images, labels = _decode_labelled(cfg, rows, cache)
    finally:
        server.stop()
    readable = [row for row in rows if "missing" not in row[0]]
    # the cached rows came first from the cache, yet every image sits beside its own label
    assert labels.tolist() == [label for _, label in readable]
    expected = [
        decode((root / parse_qs(urlsplit(ref).query)["d"][0]).read_bytes(), 32)
        for ref, _ in readable
    ]
    channels_first = np.stack(expected).transpose(0, 3, 1, 2)  # what the network is fed
    np.testing.assert_array_equal(images, channels_first.astype(np.float32) / 255.0)
    cached = len([row for row in rows[::3] if "missing" not in row[0]])
    assert len(server.paths) - asked == len(rows) - cached, "only the uncached were fetched"
    assert most[0] > 1, "the labelled images were fetched one round trip after another"
    assert most[0] <= 8, "no more at once than twice workers.fetches_at_once (4)"
    server = KeptAliveServer(body)
    try:
        most[0] = 0
        fewer = replace(cfg, fetches_at_once=1, label_studio_url=server.url)
        _decode_labelled(fewer, [row for row in rows if "missing" not in row[0]], None)
    finally:
        server.stop()
    assert most[0] == 2, f"{most[0]} at once: the bootstrap's reads ignore fetches_at_once"


def test_an_image_whose_host_left_the_allow_list_is_not_served_from_the_cache() -> None:
    reference = "https://cdn.example.org/a/x.jpg"
    allowed = ImageSource(allowed_hosts=("CDN.example.org",))
    assert pixel_key(allowed, reference, 32) is not None
    # no key: the cached pixels are not looked up, and read refuses the host, saying why
    assert pixel_key(ImageSource(allowed_hosts=("other.example.org",)), reference, 32) is None
    assert pixel_key(ImageSource(), reference, 32) is None
