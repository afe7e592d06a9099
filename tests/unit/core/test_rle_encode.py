"""Writing brush RLE: token splitting and argument checks (round trips live in test_rle)."""

from __future__ import annotations

import numpy as np
import pytest

from planner.core.rle import decode_rle, read_header
from planner.core.rle_encode import encode_mask, encode_rle
from planner.errors import InputError


def test_long_runs_split_into_several_tokens() -> None:
    values = np.full(4 * 70_000, 255, dtype=np.uint8)  # beyond one 16-bit run field
    rle = encode_rle(values)
    assert decode_rle(rle).tolist() == values.tolist()
    small = encode_rle(values[:400], rle_sizes=(1, 1, 1, 2))  # runs of at most 4 values
    assert decode_rle(small).tolist() == values[:400].tolist()


@pytest.mark.parametrize(
    ("values", "kwargs", "message"),
    [
        ([1, 2], {"word_size": 0}, "word_size"),
        ([1, 2], {"rle_sizes": (3, 4, 8)}, "rle_sizes"),
        ([1, 2], {"rle_sizes": (3, 4, 8, 17)}, "rle_sizes"),
        ([1, 256], {}, "0..255"),
        ([1.5], {}, "unsigned integers"),
        ([[1, 2]], {}, "flat"),
    ],
)
def test_encoder_rejects_bad_arguments(
    values: list[object], kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(InputError, match=message):
        encode_rle(values, **kwargs)  # type: ignore[arg-type]


def test_encode_mask_rejects_non_boolean_masks() -> None:
    with pytest.raises(InputError, match="2-D boolean"):
        encode_mask(np.ones((2, 2), dtype=np.uint8))
    with pytest.raises(InputError, match="alpha"):
        encode_mask(np.ones((2, 2), dtype=bool), alpha=0)


def test_header_records_the_chosen_sizes() -> None:
    rle = encode_rle(np.zeros(8, dtype=np.uint16), word_size=12, rle_sizes=(2, 3, 5, 7))
    header = read_header(rle)
    assert (header.num, header.word_size, header.rle_sizes) == (8, 12, (2, 3, 5, 7))
