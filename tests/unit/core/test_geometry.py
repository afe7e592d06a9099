"""Region areas from percent coordinates: hand-computed values and a convex-hull oracle."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, reject, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.spatial import ConvexHull, QhullError  # type: ignore[import-untyped]

from planner.core.geometry import (
    as_points,
    ellipse_area,
    image_size,
    polygon_area,
    rectangle_area,
)
from planner.errors import AnnotationError


def test_rectangle_ten_by_twenty_percent_of_100_by_50() -> None:
    # 10 % of 100 px = 10 px wide, 20 % of 50 px = 10 px high.
    assert rectangle_area(10, 20, image_width=100, image_height=50) == 100.0


def test_ellipse_area_uses_each_axis_own_image_side() -> None:
    # radiusX 10 % of 100 = 10 px, radiusY 20 % of 50 = 10 px.
    assert ellipse_area(10, 20, image_width=100, image_height=50) == pytest.approx(math.pi * 100)


def test_triangle_area_by_hand() -> None:
    # (0,0), (50,0), (0,100) percent of 100x50 px -> legs 50 px and 50 px -> 1250 px.
    points = as_points([[0, 0], [50, 0], [0, 100]])
    assert polygon_area(points, image_width=100, image_height=50) == 1250.0


def test_polygon_orientation_does_not_matter() -> None:
    square = as_points([[10, 10], [30, 10], [30, 30], [10, 30]])
    clockwise = square[::-1].copy()
    expected = 20 * 20 * (200 / 100) * (300 / 100)
    assert polygon_area(square, image_width=200, image_height=300) == pytest.approx(expected)
    assert polygon_area(clockwise, image_width=200, image_height=300) == pytest.approx(expected)


@settings(max_examples=100, deadline=None)
@given(
    arrays(np.float64, st.tuples(st.integers(3, 20), st.just(2)), elements=st.floats(0, 100)),
    st.integers(1, 4000),
    st.integers(1, 4000),
)
def test_convex_polygon_matches_hull_area(
    cloud: npt.NDArray[np.float64], width: int, height: int
) -> None:
    pixels = cloud * np.array([width, height]) / 100.0
    try:
        hull = ConvexHull(pixels)
    except QhullError:  # degenerate (collinear) clouds have no 2-D hull
        reject()
    ordered = cloud[hull.vertices]  # counter-clockwise hull vertices, in percent
    area = polygon_area(ordered, image_width=width, image_height=height)
    assert area == pytest.approx(hull.volume, rel=1e-9, abs=1e-6)


@pytest.mark.parametrize(
    "points",
    [
        [[0, 0], [1, 1]],
        "0,0 1,1 2,2",
        [[0, 0], [1], [2, 2]],
        [[0, "1"], [1, 1], [2, 2]],
        [[0, 0], [1, float("nan")], [2, 2]],
        [[0, 0], [True, 1], [2, 2]],
    ],
)
def test_bad_points_are_annotation_errors(points: object) -> None:
    with pytest.raises(AnnotationError):
        as_points(points)


@pytest.mark.parametrize(
    ("width", "height"), [(-1, 10), (10, float("inf")), ("10", 10), (None, 10), (True, 10)]
)
def test_bad_extents_are_annotation_errors(width: object, height: object) -> None:
    with pytest.raises(AnnotationError):
        rectangle_area(width, height, image_width=100, image_height=100)


@pytest.mark.parametrize(("width", "height"), [(0, 10), (10, -5), (float("nan"), 1), ("a", 1)])
def test_bad_image_sizes_are_annotation_errors(width: object, height: object) -> None:
    with pytest.raises(AnnotationError):
        image_size(width, height)
