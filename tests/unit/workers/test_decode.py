"""Decoding an image's bytes: the pixels Pillow gives, JPEGs through libjpeg-turbo at a reduced
scale, and corrupt or oversized images refused with a reason."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import simplejpeg
from billiard.exceptions import SoftTimeLimitExceeded
from PIL import Image

from tests.unit.workers.conftest import broken_png, pillow_crashers
from workers.decode import decode, decode_pillow
from workers.images import ImageError


def test_decode_gives_channels_last_bytes_and_refuses_corrupt_bytes(png: Path) -> None:
    array = decode(png.read_bytes(), 16)
    assert array.shape == (16, 16, 3), "rows, columns, channels: as decoded"
    assert array.dtype == np.uint8
    assert int(array.max()) == 200
    with pytest.raises(ImageError, match="corrupt"):
        decode(b"\x89PNG\r\n\x1a\nnot really", 16)


def test_an_image_over_the_pixel_limit_is_refused_before_it_is_decoded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("workers.decode.MAX_PIXELS", 32 * 32)
    for width, height in ((33, 32), (40, 40), (1025, 1)):
        buffer = io.BytesIO()
        Image.fromarray(np.zeros((height, width), np.uint8)).save(buffer, "PNG")
        with pytest.raises(ImageError, match=rf"{width}x{height} pixels is larger") as refused:
            decode(buffer.getvalue(), 16)
        assert not refused.value.transient
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(buffer, "PNG")
    assert decode(buffer.getvalue(), 16).shape == (16, 16, 3), "at the limit: decoded"
    # a large JPEG counts what its DCT scaling decodes: 1/8 of 256 each way
    assert decode_pillow(_jpeg(256, 256), 32).shape == (32, 32, 3)


def test_a_png_broken_past_its_header_is_corrupt_not_a_crash() -> None:
    with pytest.raises(ImageError, match=r"corrupt or unreadable image: SyntaxError"):
        decode(broken_png(), 16)


def test_whatever_pillow_raises_for_a_file_is_corrupt_but_a_time_limit_propagates(
    png: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for raised, data in pillow_crashers().items():
        with pytest.raises(ImageError, match=rf"corrupt or unreadable image: {raised}$"):
            decode(data, 16)

    def interrupted(*args: object, **kwargs: object) -> Image.Image:
        raise SoftTimeLimitExceeded  # as billiard's signal handler raises it mid-decode

    # an Exception subclass: caught as the image's fault, the chunk would not be retried
    monkeypatch.setattr(Image.Image, "convert", interrupted)
    with pytest.raises(SoftTimeLimitExceeded):
        decode(png.read_bytes(), 16)


def _photo_pixels(width: int, height: int) -> bytes:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    pixels = np.stack(
        [255 * x / width, 255 * y / height, 128 + 100 * np.sin((x + y) / 40)], axis=-1
    )
    return pixels.clip(0, 255).astype(np.uint8).tobytes()


def _photo(width: int, height: int) -> bytes:
    """A smooth JPEG photo-alike (gradients), as a camera's frame is at a small scale."""
    pixels = np.frombuffer(_photo_pixels(width, height), np.uint8).reshape(height, width, 3)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def _full_decode(data: bytes, size: int) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        rgb = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.float32)


def _pillow_decode(data: bytes, size: int) -> np.ndarray:
    """What Pillow alone gives: a JPEG twice the size each way drafted, then RGB, resized."""
    with Image.open(io.BytesIO(data)) as image:
        if image.format in ("JPEG", "MPO") and min(image.size) >= 2 * size:
            image.draft("RGB", (size, size))
        rgb = image.convert("RGB")
        if rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def _jpeg(width: int, height: int, mode: str = "RGB", **options: object) -> bytes:
    rng = np.random.default_rng(width * 1000 + height)
    grain = rng.normal(0, 12, (height, width, 3))
    pixels = np.frombuffer(_photo_pixels(width, height), np.uint8).reshape(height, width, 3)
    noisy = np.clip(pixels + grain, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noisy).convert(mode).save(buffer, "JPEG", **options)
    return buffer.getvalue()


@pytest.fixture
def decoded_scales(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The (height, width) libjpeg-turbo decoded each JPEG at."""
    scales: list[tuple[int, int]] = []
    real = simplejpeg.decode_jpeg

    def spy(data: bytes, *args: Any, **kwargs: Any) -> np.ndarray:
        pixels = real(data, *args, **kwargs)
        scales.append(pixels.shape[:2])
        return pixels

    monkeypatch.setattr(simplejpeg, "decode_jpeg", spy)
    return scales


def test_a_large_jpeg_is_decoded_at_reduced_scale_and_looks_the_same(
    decoded_scales: list[tuple[int, int]],
) -> None:
    photo = _photo(640, 480)
    array = decode(photo, 64)
    assert array.shape == (64, 64, 3)
    # 1/8 would give 80x60, under 64 in height: 1/4 is the smallest scale that keeps 64x64
    assert decoded_scales == [(120, 160)], "640x480 for 64x64: decoded at 1/4 scale"
    assert np.abs(array.astype(np.float32) - _full_decode(photo, 64)).mean() < 3.0
    decode(_photo(100, 100), 64)
    assert decoded_scales[1] == (100, 100), "less than twice the size: decoded whole"
    # libjpeg-turbo also scales by 3/8, 5/8, ...: 400x400 for 128 is 1/2 (200), not 3/8 (150)
    decode(_photo(400, 400), 128)
    assert decoded_scales[2] == (200, 200)


@pytest.mark.parametrize(
    ("width", "height", "mode", "options", "size"),
    [
        (64, 64, "RGB", {"quality": 90}, 64),  # the model's size: no resize
        (65, 63, "RGB", {}, 32),  # odd sizes, under twice the size: whole, then resized
        (640, 480, "RGB", {}, 64),  # 1/4
        (129, 1025, "RGB", {"subsampling": 0}, 16),  # 4:4:4, tall, 1/8
        (513, 257, "RGB", {"subsampling": 1}, 64),  # 4:2:2, 1/4 across, not below 64
        (450, 450, "RGB", {"progressive": True}, 224),  # progressive, whole
        (300, 200, "L", {}, 32),  # greyscale: the grey in all three channels
        (1000, 90, "RGB", {"quality": 30}, 8),
    ],
)
def test_a_jpeg_decodes_to_the_pixels_pillow_gives(
    width: int, height: int, mode: str, options: dict[str, object], size: int
) -> None:
    data = _jpeg(width, height, mode, **options)
    assert np.array_equal(decode(data, size), _pillow_decode(data, size))


def test_jpegs_libjpeg_turbo_would_take_otherwise_are_left_to_pillow(
    decoded_scales: list[tuple[int, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    cmyk = _jpeg(64, 64, "CMYK")  # Pillow turns CMYK into RGB its own way
    assert np.array_equal(decode(cmyk, 32), _pillow_decode(cmyk, 32))
    truncated = _jpeg(200, 200)[:-500]
    with pytest.raises(ImageError, match="corrupt or unreadable image: OSError"):
        decode(truncated, 32)  # Pillow's verdict: "image file is truncated"
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageError, match="DecompressionBombError"):
        decode(_jpeg(64, 64), 32)  # over twice Pillow's limit: refused, as Pillow refuses it
    assert decoded_scales == [], "none of them went to libjpeg-turbo directly"


def test_an_mpo_photo_is_decoded_as_its_first_jpeg_frame() -> None:
    frames = [
        Image.open(io.BytesIO(_jpeg(640, 480))),
        Image.open(io.BytesIO(_jpeg(640, 480, quality=50))),
    ]
    buffer = io.BytesIO()
    frames[0].save(buffer, "MPO", save_all=True, append_images=frames[1:])
    mpo = buffer.getvalue()
    with Image.open(io.BytesIO(mpo)) as image:
        assert image.format == "MPO"
    assert np.array_equal(decode(mpo, 64), _pillow_decode(mpo, 64))


def test_an_image_of_the_model_size_is_not_resampled(png: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    assert np.array_equal(decode(buffer.getvalue(), 16), pixels)
