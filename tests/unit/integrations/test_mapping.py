"""Label Studio JSON into the planner's types, and the batch arithmetic (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from integrations.label_studio.mapping import (
    RANK_FIELD,
    SAMPLING,
    VIEW_MARK,
    VIEW_TITLE,
    batch_scores,
    ls_time,
    parse_time,
    planner_view,
    rank_of,
    rank_value,
    remote_project,
    remote_task,
    view_data,
)
from planner.errors import ConfigError, InputError
from planner.ports import PushBatch, RemoteTask


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2026-11-23T00:45:24.312365Z", datetime(2026, 11, 23, 0, 45, 24, 312365, tzinfo=UTC)),
        ("2026-11-23T01:45:24+01:00", datetime(2026, 11, 23, 0, 45, 24, tzinfo=UTC)),
        ("2026-11-23T00:45:24", datetime(2026, 11, 23, 0, 45, 24, tzinfo=UTC)),  # naive = UTC
    ],
)
def test_times_are_aware(raw: str, expected: datetime) -> None:
    parsed = parse_time(raw)
    assert parsed == expected
    assert parsed.tzinfo is not None


@pytest.mark.parametrize("raw", [None, "", 17])
def test_a_missing_time_is_an_input_error(raw: object) -> None:
    with pytest.raises(InputError, match="timestamp"):
        parse_time(raw)


def test_filter_times_are_utc_with_z() -> None:
    when = datetime(2026, 1, 2, 4, 5, 6, 7, tzinfo=timezone(timedelta(hours=2)))
    assert ls_time(when) == "2026-01-02T02:05:06.000007Z"
    with pytest.raises(InputError, match="timezone-aware"):
        ls_time(datetime(2026, 1, 2))  # noqa: DTZ001 - the naive input under test


def test_a_task_from_label_studio_json() -> None:
    annotation = {"id": 5, "result": [], "was_cancelled": True, "updated_at": "x"}
    task = remote_task(
        {
            "id": "7",
            "data": {"image": "/a.png"},
            "meta": None,
            "annotations": [annotation],
            "is_labeled": False,
            "updated_at": "2026-11-23T00:00:00Z",
        }
    )
    assert task == RemoteTask(
        7, {"image": "/a.png"}, datetime(2026, 11, 23, tzinfo=UTC), [annotation], {}, False
    )
    exported = task.as_task_dict()
    assert exported["annotations"] == [annotation]
    assert exported["updated_at"] == "2026-11-23T00:00:00+00:00"
    assert remote_project({"id": 3, "title": None, "label_config": "<View/>"}).title == ""


def test_a_naive_task_time_is_refused() -> None:
    with pytest.raises(InputError, match="timezone-aware"):
        RemoteTask(1, {}, datetime(2026, 1, 1))  # noqa: DTZ001 - the naive input under test


def test_scores_rise_with_rank_inside_zero_one() -> None:
    batch = PushBatch("planner-b", [(30, 3), (10, 1), (20, 2)])
    scores, missing = batch_scores(batch, {10, 20, 30, 40})
    assert sorted(scores, key=scores.__getitem__) == [10, 20, 30]
    assert (scores, missing) == ({10: 0.25, 20: 0.5, 30: 0.75}, ())


def test_tasks_the_project_lost_are_left_out_and_named() -> None:
    batch = PushBatch("planner-b", [(30, 3), (10, 1), (20, 2), (50, 4)])
    assert batch_scores(batch, {10, 30, 40}) == ({10: 1 / 3, 30: 2 / 3}, (20, 50))
    assert batch_scores(batch, {40}) == ({}, (10, 20, 30, 50))


@pytest.mark.parametrize(
    ("batch", "error", "message"),
    [
        (PushBatch("other-b", [(1, 1)]), ConfigError, "must start with 'planner-'"),
        (PushBatch("planner-b", []), InputError, "empty"),
        (PushBatch("planner-b", [(1, 1), (1, 2)]), InputError, "more than once"),
    ],
)
def test_bad_batches_are_refused(batch: PushBatch, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        batch_scores(batch, {1, 2})


def test_the_view_holds_the_ids_ordered_by_the_planner_rank() -> None:
    data = view_data("Next batch", [3, 1, 2])
    assert data["filters"]["items"][0]["value"] == [3, 1, 2]
    assert data["filters"]["items"][0]["operator"] == "in_list"
    assert data["ordering"] == [f"tasks:data.{RANK_FIELD}"]


def test_the_planners_tab_is_told_by_its_mark_or_its_shape_before_the_mark() -> None:
    ours = view_data(VIEW_TITLE, [3, 1])
    older = {key: value for key, value in ours.items() if key != VIEW_MARK}
    assert planner_view(ours)
    assert planner_view({**ours, "title": "renamed"})
    assert planner_view(older), "written before the mark: still the planner's"
    assert not planner_view({"title": VIEW_TITLE})
    assert not planner_view({**older, "hiddenColumns": {}})
    assert not planner_view({**older, "ordering": ["-tasks:id"]})
    assert not planner_view({**older, "title": "Mine"})
    two = {**older["filters"], "items": older["filters"]["items"] * 2}
    assert not planner_view({**older, "filters": two})
    assert not planner_view(None)


def test_ranks_sort_as_strings_in_rank_order() -> None:
    values = [rank_value(n) for n in (1, 2, 9, 10, 11, 100, 9999)]
    assert sorted(values) == values
    assert rank_value(7) == "000007"
    for bad in (0, 1_000_000):
        with pytest.raises(InputError, match="outside"):
            rank_value(bad)


def test_the_rank_is_bookkeeping_the_planner_does_not_read() -> None:
    raw = {
        "id": 4,
        "data": {"image": "/a.png", RANK_FIELD: "000003"},
        "updated_at": "2026-11-23T00:45:24Z",
    }
    assert rank_of(raw) == "000003"
    assert remote_task(raw).data == {"image": "/a.png"}
    assert rank_of({"id": 4, "data": {"image": "/a.png"}}) is None


def test_the_project_serves_a_model_version_only_under_uncertainty_sampling() -> None:
    base = {"id": 1, "title": "t", "label_config": "<View/>", "model_version": "planner-b1"}
    assert remote_project({**base, "sampling": SAMPLING}).serving == "planner-b1"
    assert remote_project({**base, "sampling": "Sequential sampling"}).serving is None
    assert remote_project({**base, "sampling": SAMPLING, "model_version": ""}).serving is None
