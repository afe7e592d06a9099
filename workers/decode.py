"""Decoding an image's bytes to the pixels a model takes: ``(size, size, 3)`` uint8 RGB.

A JPEG goes to libjpeg-turbo (``simplejpeg``) at the DCT scale Pillow would draft; anything
else, and any JPEG it does not take as Pillow would, goes to Pillow. What cannot be decoded is
an ``ImageError`` with the reason (see :func:`decode`).
"""

from __future__ import annotations

import io

import numpy as np
import numpy.typing as npt
import simplejpeg
from billiard.exceptions import SoftTimeLimitExceeded, Terminated, TimeLimitExceeded
from PIL import Image

from workers.images import ImageError

NOT_THE_IMAGE = (MemoryError, SoftTimeLimitExceeded, TimeLimitExceeded, Terminated)
"""Raised while Pillow decodes, but not the image's fault: memory, a chunk's time limit, a
signal (billiard's are ``Exception`` subclasses). They propagate; anything else Pillow raises
is the image's (its plugins parse with ``struct`` and meet a malformed file with whichever
error their parser hits: ``OSError``, ``SyntaxError``, ``struct.error``, and, in Pillow 13,
``NotImplementedError``, ``OverflowError``, ``TypeError``), so it is unscorable for good
rather than a chunk failing on it at every cycle."""
MAX_PIXELS = 89_478_485
"""The most pixels Pillow decodes of one image (a JPEG's once its DCT scaling is drawn),
checked before decoding: its own ``MAX_IMAGE_PIXELS`` (this same number) only warns below
twice as many, so a 178-megapixel PNG of a few kilobytes was decoded whole, 534 MB of RGB on
each decoding thread."""
JPEG_AS_PILLOW = frozenset({"YCbCr", "Gray", "RGB"})
"""JPEG colour spaces libjpeg-turbo turns into the RGB Pillow's ``convert("RGB")`` gives (not
CMYK or YCCK, which Pillow converts its own way)."""


def decode(data: bytes, size: int) -> npt.NDArray[np.uint8]:
    """``(size, size, 3)`` uint8 RGB (rows, columns, channels, as decoders write them), or
    ``ImageError`` for a corrupt image.

    Bytes, not floats: a quarter of the memory crosses from the DataLoader workers, and the
    scaling to [0, 1] runs on the model's device. Channels last, as decoded: a batch of them
    is the channels_last layout the forward pass runs in, so no image is transposed (84 us an
    image at 224 px here, a quarter of decoding it). A JPEG at least twice ``size`` each way
    is decoded at 1/2, 1/4 or 1/8 scale (the decoder's DCT scaling, never below ``size``)
    before the resize: a camera photo for a 224 model then decodes in a fraction of the time.

    A JPEG goes straight to libjpeg-turbo (``simplejpeg``): the pixels Pillow gives, in a
    quarter of its CPU time for a 64 px image, under half at 224 px, the transpose included
    (Pillow parses the markers and feeds the decoder in Python; docs/benchmarks.md).
    Anything else, and any JPEG it does not take as Pillow would (CMYK, past Pillow's pixel
    limit, a decoder warning), is decoded by Pillow, whose verdict then stands.
    """
    pixels = _decode_jpeg(data, size)
    return decode_pillow(data, size) if pixels is None else pixels


def _decode_jpeg(data: bytes, size: int) -> npt.NDArray[np.uint8] | None:
    """``(size, size, 3)`` RGB of a JPEG, at the DCT scale Pillow's ``draft`` picks; None
    where Pillow is to decide."""
    if not data.startswith(b"\xff\xd8"):
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        limit = Image.MAX_IMAGE_PIXELS
        if colorspace not in JPEG_AS_PILLOW or (limit is not None and height * width > limit):
            return None
        scale = _draft_scale(width, height, size)
        pixels: npt.NDArray[np.uint8] = simplejpeg.decode_jpeg(
            data,
            colorspace="RGB",
            # the smallest output at least 1/scale each way: exactly 1/scale (libjpeg-turbo
            # also scales by 3/8, 5/8, ...; Pillow only by 1/2, 1/4, 1/8)
            min_height=-(-height // scale),
            min_width=-(-width // scale),
        )
    except ValueError:  # corrupt, truncated, or not a baseline/progressive JPEG
        return None
    if pixels.shape[:2] == (size, size):
        return pixels
    resized = Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR)
    return np.array(resized, dtype=np.uint8)  # a copy of its own: writable


def _draft_scale(width: int, height: int, size: int) -> int:
    """The reduction Pillow's ``draft`` takes for a JPEG ``decode`` shrinks: the largest of
    8, 4, 2 leaving ``size`` each way, 1 for an image under twice ``size`` either way."""
    if min(width, height) < 2 * size:
        return 1
    most = min(width // size, height // size)
    return next(s for s in (8, 4, 2, 1) if most >= s)


def decode_pillow(data: bytes, size: int) -> npt.NDArray[np.uint8]:
    """``(size, size, 3)`` RGB by Pillow, any format it reads: what :func:`decode` falls back
    on (and every image took before 2026-12-06, bench/decode_bench.py)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            # an MPO (a camera's JPEG with a second frame) is a JPEG to the decoder as well
            if image.format in ("JPEG", "MPO") and min(image.size) >= 2 * size:
                image.draft("RGB", (size, size))
            width, height = image.size  # the header's, drafted: nothing decoded yet
            if width * height > MAX_PIXELS:
                raise ImageError(
                    f"image of {width}x{height} pixels is larger than the {MAX_PIXELS} "
                    "pixels decoded of one image"
                )
            image.load()
            rgb = image.convert("RGB")
            if rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    except (ImageError, *NOT_THE_IMAGE):
        raise
    except Exception as exc:
        raise ImageError(f"corrupt or unreadable image: {type(exc).__name__}") from None
    return np.array(rgb, dtype=np.uint8)  # a copy of its own: writable
