"""Label Studio brush RLE: known answers built bit by bit from the format, round trips, guards."""

from __future__ import annotations

import contextlib

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from planner.core.rle import (
    DEFAULT_RLE_SIZES,
    RleHeader,
    count_mask_pixels,
    decode_mask,
    decode_rle,
    read_header,
)
from planner.core.rle_encode import encode_mask, encode_rle
from planner.errors import AnnotationError, InputError


def bits_to_bytes(bits: str) -> list[int]:
    """A bit string, MSB first, zero-padded to whole bytes: the test's own writer."""
    bits += "0" * (-len(bits) % 8)
    return [int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)]


def header_bits(num: int, word_size: int, sizes: tuple[int, ...]) -> str:
    return f"{num:032b}{word_size - 1:05b}" + "".join(f"{s - 1:04b}" for s in sizes)


# A token: (repeat, size index, words). The oracle knows what each token stands for.
Token = tuple[bool, int, list[int]]


def token_bits(token: Token, word_size: int, sizes: tuple[int, ...]) -> str:
    repeat, index, words = token
    count = len(words) if not repeat else words[1]
    head = f"{int(repeat)}{index:02b}{count - 1:0{sizes[index]}b}"
    body = [words[0]] if repeat else words
    return head + "".join(f"{w:0{word_size}b}" for w in body)


def expand(token: Token) -> list[int]:
    repeat, _, words = token
    return [words[0]] * words[1] if repeat else list(words)


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[int], npt.NDArray[np.int64], RleHeader]:
    """Random valid streams (any word size, field sizes, token mix) and their values."""
    word_size = draw(st.integers(1, 32))
    sizes = tuple(draw(st.lists(st.integers(1, 6), min_size=4, max_size=4)))
    word = st.integers(0, (1 << word_size) - 1)
    tokens: list[Token] = []
    for _ in range(draw(st.integers(0, 12))):
        index = draw(st.integers(0, 3))
        count = draw(st.integers(1, min(1 << sizes[index], 40)))
        if draw(st.booleans()):
            tokens.append((True, index, [draw(word), count]))
        else:
            tokens.append((False, index, draw(st.lists(word, min_size=count, max_size=count))))
    values = [v for t in tokens for v in expand(t)]
    pad = -len(values) % 4  # whole RGBA pixels, as Label Studio writes
    tokens += [(True, 0, [0, 1])] * pad  # count 1 fits any field size
    values += [0] * pad
    bits = header_bits(len(values), word_size, sizes)
    bits += "".join(token_bits(t, word_size, sizes) for t in tokens)
    header = RleHeader(len(values), word_size, (sizes[0], sizes[1], sizes[2], sizes[3]))
    return bits_to_bytes(bits), np.array(values, dtype=np.int64), header


def test_known_answer_two_pixels() -> None:
    # 4 zeros as one repeat token, then a literal token of 4 words: pixel 1 has alpha 200.
    sizes = (3, 4, 8, 16)
    bits = header_bits(8, 8, sizes) + "1" + "00" + "011" + "00000000"
    bits += "0" + "00" + "011" + "".join(f"{v:08b}" for v in (5, 6, 7, 200))
    rle = bits_to_bytes(bits)
    assert decode_rle(rle, width=2, height=1).tolist() == [0, 0, 0, 0, 5, 6, 7, 200]
    assert decode_mask(rle, width=2, height=1).tolist() == [[False, True]]
    assert count_mask_pixels(rle, width=2, height=1) == 1
    assert read_header(rle) == RleHeader(8, 8, sizes)


def test_colour_without_alpha_is_not_in_the_mask() -> None:
    # Legacy exports carry the brush colour in RGB; only alpha decides membership.
    values = np.array([255, 0, 0, 0, 0, 0, 0, 1, 9, 9, 9, 0], dtype=np.uint8)
    rle = encode_rle(values)
    assert decode_mask(rle, width=3, height=1).tolist() == [[False, True, False]]
    assert count_mask_pixels(rle, width=3, height=1) == 1


@settings(max_examples=150, deadline=None)
@given(streams())
def test_decoder_matches_token_oracle(
    case: tuple[list[int], npt.NDArray[np.int64], RleHeader],
) -> None:
    rle, values, header = case
    assert read_header(rle) == header
    decoded = decode_rle(rle)
    assert decoded.tolist() == values.tolist()
    assert decoded.dtype.itemsize == (
        1 if header.word_size <= 8 else 2 if header.word_size <= 16 else 4
    )
    assert count_mask_pixels(rle) == int((values[3::4] > 0).sum())


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 32).flatmap(
        lambda ws: st.tuples(
            st.just(ws),
            st.lists(st.integers(0, (1 << ws) - 1), max_size=300),
            st.lists(st.integers(1, 16), min_size=4, max_size=4),
        )
    )
)
def test_encode_decode_round_trip(case: tuple[int, list[int], list[int]]) -> None:
    word_size, values, sizes = case
    values += [0] * (-len(values) % 4)
    rle = encode_rle(np.array(values, dtype=np.uint64), word_size=word_size, rle_sizes=sizes)
    assert all(0 <= b <= 255 for b in rle)
    assert read_header(rle) == RleHeader(
        len(values), word_size, (sizes[0], sizes[1], sizes[2], sizes[3])
    )
    if values:
        assert decode_rle(rle).tolist() == values


@settings(max_examples=100, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 24), st.integers(1, 24))), st.integers(1, 255))
def test_mask_round_trip_and_pixel_count(mask: npt.NDArray[np.bool_], alpha: int) -> None:
    height, width = mask.shape
    rle = encode_mask(mask, alpha=alpha)
    assert count_mask_pixels(rle, width=width, height=height) == int(mask.sum())
    np.testing.assert_array_equal(decode_mask(rle, width=width, height=height), mask)
    rgba = decode_rle(rle, width=width, height=height).reshape(height, width, 4)
    assert (rgba[mask] == alpha).all()
    assert (rgba[~mask] == 0).all()


def test_large_mask_is_counted_without_decoding_it() -> None:
    mask = np.zeros((1500, 2000), dtype=bool)
    mask[100:900, 300:1700] = True
    mask[1000:1001, :] = True
    rle = encode_mask(mask)
    assert count_mask_pixels(rle, width=2000, height=1500) == 800 * 1400 + 2000


def test_truncated_stream_is_an_annotation_error() -> None:
    rle = encode_mask(np.eye(6, dtype=bool))
    for cut in range(len(rle)):
        with pytest.raises(AnnotationError, match=r"truncated|declares"):
            count_mask_pixels(rle[:cut] or [0], width=6, height=6)
    with pytest.raises(AnnotationError, match="truncated"):
        read_header([1, 2, 3])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 255), min_size=1, max_size=64))
def test_garbage_never_escapes_as_another_error(rle: list[int]) -> None:
    with contextlib.suppress(AnnotationError):
        decode_rle(rle, max_pixels=4096)


def test_size_mismatch_is_refused() -> None:
    rle = encode_mask(np.ones((4, 5), dtype=bool))
    with pytest.raises(AnnotationError, match="declares 80 values but the image needs 84"):
        decode_rle(rle, width=7, height=3)


def test_sizes_beyond_the_limit_are_refused_before_parsing() -> None:
    # A header claiming 2^32 - 4 values (about 1 G pixels) with nothing behind it.
    huge = bits_to_bytes(header_bits((1 << 32) - 4, 8, DEFAULT_RLE_SIZES))
    with pytest.raises(AnnotationError, match="beyond the limit of 100000000"):
        count_mask_pixels(huge)
    with pytest.raises(AnnotationError, match="exceeds the limit of 100"):
        decode_mask(huge, width=20, height=10, max_pixels=100)
    ok = encode_mask(np.ones((10, 20), dtype=bool))
    assert count_mask_pixels(ok, width=20, height=10, max_pixels=200) == 200


def test_run_past_the_declared_size_is_refused() -> None:
    bits = header_bits(4, 8, DEFAULT_RLE_SIZES) + "1" + "00" + "111" + "11111111"  # 8 values
    with pytest.raises(AnnotationError, match="past the declared 4"):
        decode_rle(bits_to_bytes(bits))


@pytest.mark.parametrize(
    "rle",
    ["abc", None, 12, [], [1.5, 2.0], [1, 256], [-1, 3], [[1, 2]], [True, False]],
)
def test_non_byte_input_is_an_annotation_error(rle: object) -> None:
    with pytest.raises(AnnotationError):
        decode_rle(rle)


@pytest.mark.parametrize(("width", "height"), [(0, 5), (-1, 5), (5, None), (2.5, 4), (True, 4)])
def test_bad_image_size_is_an_annotation_error(width: object, height: object) -> None:
    rle = encode_mask(np.ones((4, 5), dtype=bool))
    with pytest.raises(AnnotationError, match="positive integers"):
        decode_rle(rle, width=width, height=height)  # type: ignore[arg-type]


def test_bytes_input_and_bad_limits() -> None:
    rle = encode_mask(np.ones((2, 2), dtype=bool))
    assert count_mask_pixels(bytes(rle), width=2, height=2) == 4
    with pytest.raises(InputError, match="max_pixels"):
        count_mask_pixels(rle, max_pixels=0)
