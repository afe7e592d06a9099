"""Pixel areas of Label Studio vector regions, whose coordinates are percent of the image.

A percent ``x`` on an image ``W`` pixels wide is ``x * W / 100`` pixels. Areas are those of the
drawn shapes, not clipped to the image, and rotation (about a corner for boxes, the centre for
ellipses) moves a shape without changing its area.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from planner.errors import AnnotationError


def _finite(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AnnotationError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise AnnotationError(f"{name} must be finite, got {value!r}")
    return number


def _extent(name: str, value: object) -> float:
    number = _finite(name, value)
    if number < 0:
        raise AnnotationError(f"{name} must not be negative, got {value!r}")
    return number


def image_size(width: object, height: object) -> tuple[float, float]:
    """``original_width`` and ``original_height`` checked to be positive finite numbers."""
    w, h = _finite("original_width", width), _finite("original_height", height)
    if w <= 0 or h <= 0:
        raise AnnotationError(f"image size {width}x{height} must be positive")
    return w, h


def rectangle_area(
    width_pct: object, height_pct: object, *, image_width: float, image_height: float
) -> float:
    """Pixel area of a box ``width_pct`` by ``height_pct`` percent of the image."""
    w = _extent("width", width_pct) * image_width / 100.0
    h = _extent("height", height_pct) * image_height / 100.0
    return w * h


def ellipse_area(
    radius_x_pct: object, radius_y_pct: object, *, image_width: float, image_height: float
) -> float:
    """Pixel area π·rx·ry of an ellipse whose radii are percent of width and height."""
    rx = _extent("radiusX", radius_x_pct) * image_width / 100.0
    ry = _extent("radiusY", radius_y_pct) * image_height / 100.0
    return math.pi * rx * ry


def as_points(points: object) -> npt.NDArray[np.float64]:
    """``points: [[x, y], ...]`` in percent as a checked ``(n, 2)`` float array, ``n >= 3``."""
    if not isinstance(points, list | tuple) or not all(
        isinstance(p, list | tuple)
        and len(p) == 2
        and all(isinstance(c, int | float) and not isinstance(c, bool) for c in p)
        for p in points
    ):
        raise AnnotationError("polygon points must be a list of [x, y] number pairs")
    array = np.array(points, dtype=np.float64).reshape(-1, 2)
    if array.shape[0] < 3:
        raise AnnotationError(f"a polygon needs at least 3 points, got {array.shape[0]}")
    if not np.isfinite(array).all():
        raise AnnotationError("polygon points must be finite numbers")
    return array


def polygon_area(
    points_pct: npt.NDArray[np.float64], *, image_width: float, image_height: float
) -> float:
    """Pixel area of a simple polygon, ``points_pct: (n, 2)`` percent, by the shoelace formula.

    A self-crossing outline gives the net of its signed lobes, as the formula does.
    """
    x = points_pct[:, 0] * (image_width / 100.0)
    y = points_pct[:, 1] * (image_height / 100.0)
    twice = float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))
    return abs(twice) / 2.0
