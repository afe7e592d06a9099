"""Writing Label Studio brush masks in the ``@thi.ng/rle-pack`` format (see ``rle``).

For tests, fakes and imported predictions: masks written here decode in Label Studio's editor
and with ``planner.core.rle``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from planner.core.rle import DEFAULT_RLE_SIZES
from planner.errors import InputError

_CHANNELS = 4


def _check_encoding(word_size: int, rle_sizes: Sequence[int]) -> tuple[int, ...]:
    if not (isinstance(word_size, int) and 1 <= word_size <= 32):
        raise InputError(f"word_size must be an integer 1-32, got {word_size!r}")
    sizes = tuple(rle_sizes)
    if len(sizes) != 4 or not all(isinstance(s, int) and 1 <= s <= 16 for s in sizes):
        raise InputError(f"rle_sizes must be four integers 1-16, got {rle_sizes!r}")
    return sizes


def _pack(fields: list[int], widths: list[int]) -> list[int]:
    """Concatenates unsigned fields of the given bit widths, MSB first, zero-padded to bytes."""
    value = np.array(fields, dtype=np.uint64)
    width = np.array(widths, dtype=np.int64)
    owner = np.repeat(np.arange(width.size), width)
    first_bit = np.repeat(np.cumsum(width) - width, width)
    shift = (width[owner] - 1 - (np.arange(owner.size) - first_bit)).astype(np.uint64)
    bits = ((value[owner] >> shift) & np.uint64(1)).astype(np.uint8)
    return [int(b) for b in np.packbits(bits)]


class _Writer:
    """Collects bit fields of tokens; ``longest`` is the most values one token can carry."""

    def __init__(self, word_size: int, sizes: tuple[int, ...]) -> None:
        self.word_size = word_size
        self.sizes = sizes
        self.by_width = sorted(range(4), key=lambda i: sizes[i])
        self.longest = 1 << max(sizes)
        self.fields: list[int] = []
        self.widths: list[int] = []

    def _token(self, repeat: int, count: int) -> None:
        index = next(i for i in self.by_width if count - 1 < 1 << self.sizes[i])
        self.fields.extend(((repeat << 2) | index, count - 1))
        self.widths.extend((3, self.sizes[index]))

    def repeat(self, value: int, count: int) -> None:
        while count:
            part = min(count, self.longest)
            self._token(1, part)
            self.fields.append(value)
            self.widths.append(self.word_size)
            count -= part

    def literal(self, values: list[int]) -> None:
        for begin in range(0, len(values), self.longest):
            part = values[begin : begin + self.longest]
            self._token(0, len(part))
            self.fields.extend(part)
            self.widths.extend([self.word_size] * len(part))


def encode_rle(
    values: npt.ArrayLike,
    *,
    word_size: int = 8,
    rle_sizes: Sequence[int] = DEFAULT_RLE_SIZES,
) -> list[int]:
    """Encodes ``values: (n,)`` unsigned integers as a stream of byte values (JSON-ready).

    Runs of two or more equal values become repeat tokens, single values are grouped into
    literal tokens; a run longer than the largest field allows is split.
    """
    sizes = _check_encoding(word_size, rle_sizes)
    array = np.asarray(values)
    if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
        raise InputError("values must be a flat array of unsigned integers")
    if array.size and (int(array.min()) < 0 or int(array.max()) >= 1 << word_size):
        raise InputError(f"values must lie in 0..{(1 << word_size) - 1} for word_size {word_size}")
    if array.size >= 1 << 32:
        raise InputError(f"{array.size} values do not fit the format's 32-bit count")
    writer = _Writer(word_size, sizes)
    starts = np.flatnonzero(np.concatenate(([array.size > 0], array[1:] != array[:-1])))
    lengths = np.diff(np.append(starts, array.size))
    pending: list[int] = []  # single values wait here to share one literal token
    for value, length in zip(array[starts].tolist(), lengths.tolist(), strict=True):
        if length == 1:
            pending.append(value)
            continue
        writer.literal(pending)
        pending = []
        writer.repeat(value, length)
    writer.literal(pending)
    header = [array.size, word_size - 1, *(s - 1 for s in sizes)]
    return _pack(header + writer.fields, [32, 5, 4, 4, 4, 4, *writer.widths])


def encode_mask(mask: npt.ArrayLike, *, alpha: int = 255) -> list[int]:
    """Encodes ``mask: (height, width)`` booleans the way Label Studio's editor does.

    Every channel of a masked pixel is ``alpha`` (grey at the brush opacity), others zero.
    """
    array = np.asarray(mask)
    if array.ndim != 2 or array.dtype != np.bool_:
        raise InputError(f"mask must be a 2-D boolean array, got {array.dtype} {array.shape}")
    if not (isinstance(alpha, int) and 1 <= alpha <= 255):
        raise InputError(f"alpha must be an integer 1-255, got {alpha!r}")
    rgba = np.repeat(array.reshape(-1).astype(np.uint8) * np.uint8(alpha), _CHANNELS)
    return encode_rle(rgba)
