"""Builders of Label Studio task JSON for the counting tests (shapes as the API returns them)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt

from planner.core.labels import LabelSchema, parse_label_config
from planner.core.rle_encode import encode_mask

T0 = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
CONFIG = """
<View>
  <Image name="image" value="$image"/>
  <Header value="Scene"/>
  <View>
    <Choices name="time" toName="image" choice="multiple">
      <Choice value="day"/><Choice value="night" alias="n"/>
    </Choices>
  </View>
  <RectangleLabels name="objects" toName="image">
    <Label value="Car"/><Label value="Wheelchair" alias="wc"/>
  </RectangleLabels>
  <PolygonLabels name="areas" toName="image"><Label value="Road"/></PolygonLabels>
  <BrushLabels name="masks" toName="image"><Label value="Road"/><Label value="Lane"/></BrushLabels>
  <EllipseLabels name="blobs" toName="image"><Label value="Sign"/></EllipseLabels>
  <KeyPointLabels name="points" toName="image"><Label value="Head"/></KeyPointLabels>
</View>
"""


def schema(hierarchy: dict[str, str] | None = None) -> LabelSchema:
    return parse_label_config(CONFIG, hierarchy=hierarchy)


def region(kind: str, from_name: str, labels: list[str], rid: str, **value: Any) -> dict[str, Any]:
    return {
        "id": rid,
        "from_name": from_name,
        "to_name": "image",
        "type": kind,
        "original_width": 100,
        "original_height": 50,
        "image_rotation": 0,
        "value": {**value, kind: labels},
    }


def choices(*labels: str, rid: str = "c1") -> dict[str, Any]:
    item = region("choices", "time", list(labels), rid)
    for key in ("original_width", "original_height", "image_rotation"):
        del item[key]
    return item


def box(
    label: str, width: float = 10, height: float = 20, *, rid: str = "b1", **extra: Any
) -> dict[str, Any]:
    return region(
        "rectanglelabels",
        "objects",
        [label],
        rid,
        x=5,
        y=5,
        width=width,
        height=height,
        **{"rotation": 0, **extra},
    )


def polygon(label: str, points: list[list[float]], *, rid: str = "p1") -> dict[str, Any]:
    return region("polygonlabels", "areas", [label], rid, points=points, closed=True)


def brush(label: str, mask: npt.NDArray[np.bool_], *, rid: str = "m1") -> dict[str, Any]:
    item = region("brushlabels", "masks", [label], rid, format="rle", rle=encode_mask(mask))
    item["original_height"], item["original_width"] = mask.shape
    return item


def annotation(
    result: list[Any],
    *,
    ident: int = 1,
    hours: float = 0,
    truth: bool = False,
    cancelled: bool = False,
) -> dict[str, Any]:
    when = (T0 + timedelta(hours=hours)).isoformat().replace("+00:00", "Z")
    return {
        "id": ident,
        "completed_by": 1,
        "result": [] if cancelled else result,
        "was_cancelled": cancelled,
        "ground_truth": truth,
        "created_at": when,
        "updated_at": when,
        "lead_time": 3.5,
    }


def task(ident: int, *annotations: dict[str, Any], split: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"image": f"/data/local-files/?d=img/{ident}.jpg"}
    if split is not None:
        data["split"] = split
    return {
        "id": ident,
        "data": data,
        "meta": {},
        "annotations": list(annotations),
        "predictions": [],
    }
