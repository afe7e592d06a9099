"""Label Studio brush masks: the ``@thi.ng/rle-pack`` bit-packed run-length format.

The stream is read most significant bit first: 32 bits ``num`` (how many values it holds),
5 bits ``word_size - 1``, four 4-bit run-length field sizes (each minus one), then tokens until
``num`` values are out. A token is 1 bit repeat flag, 2 bits choosing one of the four field
sizes, that many bits ``n - 1``; a repeat token is followed by one word used ``n`` times, a
literal token by ``n`` words. Label Studio encodes the RGBA canvas of the original image
(``width * height * 4`` values, row-major, channels interleaved); a pixel is in the mask when
its alpha value is above zero, which is how Label Studio's own editor reads it back.

Streams come from annotators' browsers, so the decoder refuses what it cannot trust: a
declared size other than the image's, one beyond ``max_pixels`` (before allocating), runs
that overflow the declared size and truncated streams all raise ``AnnotationError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

import numpy as np
import numpy.typing as npt

from planner.errors import AnnotationError, InputError

DEFAULT_MAX_PIXELS = 100_000_000
"""Largest mask (width x height) decoded by default: 100 megapixels, 400 MB of RGBA."""
DEFAULT_RLE_SIZES = (3, 4, 8, 16)
"""Run-length field sizes of the thi.ng encoder's defaults, which Label Studio uses."""
_CHANNELS = 4
_VECTOR_LITERALS = 16  # literal groups at least this long are unpacked with numpy


@dataclass(frozen=True, slots=True)
class RleHeader:
    """The fixed part of a stream: value count, bits per value, the four run-length sizes."""

    num: int
    word_size: int
    rle_sizes: tuple[int, int, int, int]


class _BitReader:
    """Reads unsigned big-endian bit fields; running past the end is a truncated stream."""

    __slots__ = ("_data", "_nbits", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data + bytes(5)  # zero tail: every 5-byte window below is whole
        self._nbits = len(data) * 8
        self._pos = 0

    def _advance(self, nbits: int) -> None:
        self._pos += nbits
        if self._pos > self._nbits:
            raise AnnotationError(
                f"brush RLE is truncated: needs {self._pos} bits, has {self._nbits}; "
                "re-save the mask in Label Studio or re-import it"
            )

    def read(self, nbits: int) -> int:
        """One field of at most 32 bits."""
        pos = self._pos
        window = int.from_bytes(self._data[pos >> 3 : (pos >> 3) + 5], "big")
        self._advance(nbits)
        return (window >> (40 - (pos & 7) - nbits)) & ((1 << nbits) - 1)

    def token(self, sizes: tuple[int, int, int, int]) -> tuple[bool, int]:
        """A token's repeat flag and value count, read from one window (3 + 16 bits at most)."""
        pos = self._pos
        window = int.from_bytes(self._data[pos >> 3 : (pos >> 3) + 5], "big")
        shift = 37 - (pos & 7)
        head = (window >> shift) & 7
        size = sizes[head & 3]
        self._advance(3 + size)
        return head > 3, ((window >> (shift - size)) & ((1 << size) - 1)) + 1

    def read_words(self, count: int, size: int) -> list[int]:
        """``count`` consecutive ``size``-bit words, unpacked in one numpy pass."""
        pos = self._pos
        self._advance(count * size)
        first = pos >> 3
        raw = np.frombuffer(self._data[first : (self._pos + 7) >> 3], dtype=np.uint8)
        offset = pos - first * 8
        bits = np.unpackbits(raw)[offset : offset + count * size].reshape(count, size)
        weights = np.left_shift(np.uint64(1), np.arange(size - 1, -1, -1, dtype=np.uint64))
        words: npt.NDArray[np.uint64] = (bits.astype(np.uint64) * weights).sum(axis=1)
        return [int(w) for w in words]


def _as_bytes(rle: object) -> bytes:
    if isinstance(rle, bytes | bytearray):
        return bytes(rle)
    if isinstance(rle, str) or not isinstance(rle, Sequence | np.ndarray):
        raise AnnotationError(
            f"brush RLE must be a list of byte values, got {type(rle).__name__}; "
            "export the annotation as Label Studio JSON (value.rle)"
        )
    array = np.asarray(rle)
    if array.ndim != 1 or array.size == 0 or array.dtype.kind not in "iu":
        raise AnnotationError(
            "brush RLE must be a non-empty flat list of integers 0-255; "
            "the stored mask is damaged: re-save it in Label Studio"
        )
    if int(array.min()) < 0 or int(array.max()) > 255:
        raise AnnotationError(
            "brush RLE holds values outside 0-255; the stored mask is damaged: re-save it"
        )
    return array.astype(np.uint8).tobytes()


def _positive_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _expected_values(width: int | None, height: int | None, max_pixels: int) -> int | None:
    """Checks the image size against the limit; returns the value count it implies."""
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise InputError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    if width is None and height is None:
        return None
    if not (_positive_int(width) and _positive_int(height)):
        raise AnnotationError(
            f"brush mask size {width}x{height} is not two positive integers; "
            "the region needs original_width and original_height"
        )
    if width * height > max_pixels:
        raise AnnotationError(
            f"brush mask of {width}x{height} = {width * height} pixels exceeds the limit of "
            f"{max_pixels}; raise max_pixels if such images are expected"
        )
    return width * height * _CHANNELS


def _read_header(reader: _BitReader) -> RleHeader:
    num = reader.read(32)
    word_size = reader.read(5) + 1
    a, b, c, d = (reader.read(4) + 1 for _ in range(4))
    return RleHeader(num=num, word_size=word_size, rle_sizes=(a, b, c, d))


def _check_header(header: RleHeader, expected: int | None, max_pixels: int) -> None:
    if expected is not None and header.num != expected:
        raise AnnotationError(
            f"brush RLE declares {header.num} values but the image needs {expected} "
            "(width * height * 4); the mask belongs to another image size: re-save it"
        )
    if header.num % _CHANNELS:
        raise AnnotationError(
            f"brush RLE declares {header.num} values, not a whole number of RGBA pixels"
        )
    if header.num // _CHANNELS > max_pixels:
        raise AnnotationError(
            f"brush RLE declares {header.num // _CHANNELS} pixels, beyond the limit of "
            f"{max_pixels}; raise max_pixels if such images are expected"
        )


def _runs(
    rle: object, width: int | None, height: int | None, max_pixels: int
) -> tuple[RleHeader, npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Parses a stream into runs: ``values: (r,)``, ``lengths: (r,)`` summing to ``num``."""
    expected = _expected_values(width, height, max_pixels)
    reader = _BitReader(_as_bytes(rle))
    header = _read_header(reader)
    _check_header(header, expected, max_pixels)
    sizes, word = header.rle_sizes, header.word_size
    values: list[int] = []
    lengths: list[int] = []
    done = 0
    while done < header.num:
        repeat, count = reader.token(sizes)
        if done + count > header.num:
            raise AnnotationError(
                f"brush RLE run ends at value {done + count}, past the declared "
                f"{header.num}; the stored mask is damaged: re-save it"
            )
        if repeat:
            values.append(reader.read(word))
            lengths.append(count)
        elif count >= _VECTOR_LITERALS:
            values.extend(reader.read_words(count, word))
            lengths.extend([1] * count)
        else:
            values.extend(reader.read(word) for _ in range(count))
            lengths.extend([1] * count)
        done += count
    return header, np.array(values, dtype=np.int64), np.array(lengths, dtype=np.int64)


def read_header(rle: object) -> RleHeader:
    """The header of a stream, without decoding the values."""
    return _read_header(_BitReader(_as_bytes(rle)))


def decode_rle(
    rle: object,
    *,
    width: int | None = None,
    height: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> npt.NDArray[Any]:
    """All values of a stream: ``(num,)`` uint8 (uint16/uint32 for wider words).

    With ``width`` and ``height`` the stream must hold exactly ``width * height * 4`` values.
    """
    header, values, lengths = _runs(rle, width, height, max_pixels)
    dtype = (
        np.uint8 if header.word_size <= 8 else np.uint16 if header.word_size <= 16 else np.uint32
    )
    out: npt.NDArray[Any] = np.repeat(values.astype(dtype), lengths)
    return out


def _alpha_spans(
    values: npt.NDArray[np.int64], lengths: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Pixel spans ``[start, stop)`` covered by runs with a non-zero value at alpha positions."""
    ends = np.cumsum(lengths)
    starts = ends - lengths
    on = values > 0
    # Value k is the alpha of pixel k // 4 when k % 4 == 3, and [s, e) holds the alphas of
    # pixels s // 4 .. e // 4 - 1 (the same floor identity counts k % 4 == 3 below n as n // 4).
    return starts[on] // _CHANNELS, ends[on] // _CHANNELS


def count_mask_pixels(
    rle: object,
    *,
    width: int | None = None,
    height: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> int:
    """Pixels whose alpha is above zero, counted from the runs without decoding the image."""
    _, values, lengths = _runs(rle, width, height, max_pixels)
    first, stop = _alpha_spans(values, lengths)
    return int((stop - first).sum())


def decode_mask(
    rle: object, *, width: int, height: int, max_pixels: int = DEFAULT_MAX_PIXELS
) -> npt.NDArray[np.bool_]:
    """The mask as ``(height, width)`` booleans: alpha above zero."""
    _, values, lengths = _runs(rle, width, height, max_pixels)
    first, stop = _alpha_spans(values, lengths)
    edges = np.zeros(width * height + 1, dtype=np.int32)
    np.add.at(edges, first, 1)
    np.add.at(edges, stop, -1)
    inside = np.cumsum(edges[:-1], dtype=np.int32) > 0
    mask: npt.NDArray[np.bool_] = inside.reshape(height, width)
    return mask
