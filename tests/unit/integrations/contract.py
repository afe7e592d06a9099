"""What every annotation backend must do, checked the same way on the fake and the real server.

Each ``check_*`` takes a fresh-enough ``Workbench`` (its own project, so xdist-safe) and asserts.
tests/unit/integrations/test_fake_contract.py runs them on ``FakeLabelStudio``;
tests/integration/label_studio/test_contract.py on a real Label Studio 1.23.2.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from integrations.label_studio.workbench import Workbench
from planner.core.counting import count_tasks
from planner.core.labels import parse_label_config
from planner.errors import ConfigError, InputError
from planner.ports import WEBHOOK_SECRET_HEADER, AnnotationBackend, PushBatch

CONFIG = """<View><Image name="image" value="$image"/>
<Choices name="kind" toName="image"><Choice value="Car"/><Choice value="Wheelchair"/></Choices>
</View>"""


def choice(label: str) -> list[dict[str, Any]]:
    return [
        {"from_name": "kind", "to_name": "image", "type": "choices", "value": {"choices": [label]}}
    ]


def project(wb: Workbench, n: int) -> tuple[int, list[int]]:
    pid = wb.create_project(f"contract-{uuid.uuid4().hex[:8]}", CONFIG)
    ids = wb.import_tasks(pid, [{"data": {"image": f"/img/{i}.png"}} for i in range(n)])
    assert len(ids) == n
    return pid, ids


class SkipsOne:
    """A backend whose listing misses one task, as a listing whose pages shift while it runs
    does (a task edited meanwhile moves to the end, the next one slips past a page edge)."""

    def __init__(self, inner: Workbench, skipped: int) -> None:
        self.inner, self.skipped = inner, skipped

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def iter_tasks(self, project_id: int, **kwargs: Any) -> Iterator[Any]:
        return (t for t in self.inner.iter_tasks(project_id, **kwargs) if t.id != self.skipped)


def check_the_ports_are_implemented(wb: Workbench) -> None:
    assert isinstance(wb, AnnotationBackend)
    assert isinstance(wb, Workbench)


def check_project_and_missing_project(wb: Workbench) -> None:
    pid, _ = project(wb, 1)
    got = wb.project(pid)
    assert (got.id, got.title.startswith("contract-")) == (pid, True)
    assert parse_label_config(got.label_config).classes == ("Car", "Wheelchair")
    with pytest.raises(ConfigError, match="does not exist"):
        wb.project(pid + 10_000)


def check_tasks_come_back_as_annotated(wb: Workbench) -> None:
    pid, ids = project(wb, 6)
    second = wb.create_annotator(f"second-{uuid.uuid4().hex[:8]}@example.com")
    wb.annotate(ids[0], choice("Car"))
    wb.annotate(ids[1], [], cancelled=True)  # a skip: annotated, not labelled, counts nothing
    wb.annotate(ids[2], choice("Car"))
    wb.annotate(ids[2], choice("Wheelchair"), annotator=second)
    wb.annotate(ids[2], choice("Wheelchair"), ground_truth=True)
    tasks = list(wb.iter_tasks(pid, page_size=2))  # several pages
    assert sorted(t.id for t in tasks) == sorted(ids)
    assert wb.task_ids(pid) == set(ids)
    stamps = [t.updated_at for t in tasks]
    assert stamps == sorted(stamps)
    assert all(s.tzinfo is not None for s in stamps)
    by_id = {t.id: t for t in tasks}
    assert [by_id[i].is_labeled for i in ids[:4]] == [True, False, True, False]
    assert by_id[ids[1]].annotations[0]["was_cancelled"] is True
    assert {a["completed_by"] for a in by_id[ids[2]].annotations} == {second, _owner(by_id, ids)}
    assert [a["ground_truth"] for a in by_id[ids[2]].annotations].count(True) == 1
    assert by_id[ids[3]].data == {"image": "/img/3.png"}
    schema = parse_label_config(wb.project(pid).label_config)
    table = count_tasks([t.as_task_dict() for t in tasks], schema, split_of="train").table
    assert dict(zip(table.classes, table.totals("images").tolist(), strict=True)) == {
        "Car": 1,
        "Wheelchair": 1,  # the ground truth beats the first annotator's Car
    }


def _owner(by_id: dict[int, Any], ids: list[int]) -> int:
    return int(by_id[ids[0]].annotations[0]["completed_by"])


def check_changes_after_a_watermark(wb: Workbench) -> None:
    pid, ids = project(wb, 4)
    first = wb.annotate(ids[0], choice("Car"))
    wb.annotate(ids[1], choice("Car"))
    watermark = max(t.updated_at for t in wb.iter_tasks(pid))
    assert list(wb.iter_tasks(pid, updated_after=watermark)) == []
    wb.update_annotation(first, choice("Wheelchair"))
    wb.annotate(ids[2], [], cancelled=True)
    wb.delete_task(ids[3])
    changed = list(wb.iter_tasks(pid, updated_after=watermark))
    assert [t.id for t in changed] == [ids[0], ids[2]]  # oldest change first
    assert changed[0].annotations[0]["result"][0]["value"]["choices"] == ["Wheelchair"]
    assert changed[0].updated_at > watermark
    assert wb.task_ids(pid) == {ids[0], ids[1], ids[2]}  # deletions show only here


def check_a_batch_is_served_in_rank_order(wb: Workbench) -> None:
    pid, ids = project(wb, 8)
    annotator = wb.create_annotator(f"annotator-{uuid.uuid4().hex[:8]}@example.com")
    before = _stamps(wb, pid)
    batch = PushBatch("planner-contract-b1", [(ids[6], 1), (ids[2], 2), (ids[5], 3), (ids[1], 4)])
    order = [ids[6], ids[2], ids[5], ids[1]]
    first = wb.push_batch(pid, batch)
    assert (first.created, first.removed) == (4, 0)
    assert first.view_id is not None
    assert wb.view_task_ids(pid, first.view_id) == order
    # the rank written into each batch task re-surfaces it; the other tasks stay put
    pushed = _stamps(wb, pid)
    assert {t for t in ids if pushed[t] != before[t]} == set(order)
    assert all(pushed[t] > before[t] for t in order)
    stored = wb.list_predictions(pid)
    again = wb.push_batch(pid, batch)
    assert (again.created, again.removed, again.view_id) == (0, 0, first.view_id)
    # what the server holds, not what the adapter says it did
    after = wb.list_predictions(pid)
    assert after == stored
    per_version = Counter((task, version) for task, version, _ in after)
    assert per_version == Counter({(t, batch.tag): 1 for t in order})
    assert [task for task, _, _ in sorted(after, key=lambda p: p[2])] == order
    assert _stamps(wb, pid) == pushed, "pushing the same batch again writes nothing"
    task_data = {t.id: dict(t.data) for t in wb.tasks_by_id(pid, order)}
    assert task_data == {t: {"image": f"/img/{ids.index(t)}.png"} for t in order}
    served = []
    for _ in range(4):
        task = wb.next_task(pid, annotator=annotator)  # as the annotator, with their token
        assert task is not None
        served.append(task)
        wb.annotate(task, choice("Car"), annotator=annotator)  # submits, gets the next one
    assert served == order


def check_another_models_predictions_leave_the_order_alone(wb: Workbench) -> None:
    pid, ids = project(wb, 6)
    batch = PushBatch("planner-contract-b1", [(ids[3], 1), (ids[0], 2), (ids[4], 3)])
    view = wb.push_batch(pid, batch).view_id
    assert view is not None
    # another model scores the last-ranked task lowest and the first-ranked highest
    wb.predict(ids[4], 0.0, "someone-elses-model")
    wb.predict(ids[3], 1.0, "someone-elses-model")
    wb.predict(ids[5], 0.0, "someone-elses-model")
    assert wb.view_task_ids(pid, view) == [ids[3], ids[0], ids[4]]
    assert wb.next_task(pid) == ids[3]
    again = wb.push_batch(pid, batch)
    assert (again.created, again.removed) == (0, 0)
    foreign = [p for p in wb.list_predictions(pid) if p[1] == "someone-elses-model"]
    assert sorted(t for t, _, _ in foreign) == sorted([ids[3], ids[4], ids[5]])


def check_a_single_prediction_save_bumps_updated_at(wb: Workbench) -> None:
    pid, ids = project(wb, 3)
    watermark = max(t.updated_at for t in wb.iter_tasks(pid))
    wb.predict(ids[1], 0.4, "someone-elses-model")
    changed = list(wb.iter_tasks(pid, updated_after=watermark))
    assert [t.id for t in changed] == [ids[1]]
    assert list(changed[0].annotations) == []


def check_tasks_are_read_by_id(wb: Workbench) -> None:
    pid, ids = project(wb, 5)
    wb.annotate(ids[3], choice("Wheelchair"))
    wb.delete_task(ids[0])
    got = {t.id: t for t in wb.tasks_by_id(pid, [ids[0], ids[1], ids[3], ids[3]])}
    assert sorted(got) == [ids[1], ids[3]]  # the deleted one is left out
    assert got[ids[1]].data == {"image": "/img/1.png"}
    assert got[ids[3]].annotations[0]["result"][0]["value"]["choices"] == ["Wheelchair"]
    assert list(wb.tasks_by_id(pid, [])) == []
    assert wb.task_stamps(pid) == {t.id: t.updated_at for t in wb.iter_tasks(pid)}


def check_the_webhook_is_registered_once(wb: Workbench) -> None:
    pid, _ = project(wb, 1)
    url = "http://127.0.0.1:9/webhook/label-studio"
    hook = wb.ensure_webhook(pid, url, secret="first-secret")
    assert wb.ensure_webhook(pid, url, secret="first-secret") == hook
    assert wb.list_webhooks(pid) == [(hook, url, {WEBHOOK_SECRET_HEADER: "first-secret"})]
    assert wb.ensure_webhook(pid, url, secret="second-secret") == hook
    assert wb.list_webhooks(pid) == [(hook, url, {WEBHOOK_SECRET_HEADER: "second-secret"})]


def _stamps(wb: Workbench, pid: int) -> dict[int, Any]:
    return {t.id: t.updated_at for t in wb.iter_tasks(pid)}


def check_a_new_batch_supersedes_the_old(wb: Workbench) -> None:
    pid, ids = project(wb, 6)
    old = wb.push_batch(pid, PushBatch("planner-contract-b1", [(ids[0], 1), (ids[1], 2)]))
    new = wb.push_batch(
        pid, PushBatch("planner-contract-b2", [(ids[4], 2), (ids[3], 1), (ids[1], 3)])
    )
    assert (new.created, new.removed, new.view_id) == (3, 2, old.view_id)
    assert new.view_id is not None
    assert wb.view_task_ids(pid, new.view_id) == [ids[3], ids[4], ids[1]]
    assert wb.next_task(pid) == ids[3]


def check_a_bad_batch_changes_nothing(wb: Workbench) -> None:
    pid, ids = project(wb, 3)
    good = wb.push_batch(pid, PushBatch("planner-contract-b1", [(ids[2], 1), (ids[0], 2)]))
    assert good.view_id is not None
    with pytest.raises(ConfigError, match="must start with"):
        wb.push_batch(pid, PushBatch("mine-b2", [(ids[1], 1)]))
    with pytest.raises(InputError, match="more than once"):
        wb.push_batch(pid, PushBatch("planner-contract-b2", [(ids[1], 1), (ids[1], 2)]))
    assert wb.view_task_ids(pid, good.view_id) == [ids[2], ids[0]]
    assert wb.next_task(pid) == ids[2]


def check_deleted_tasks_are_left_out_of_a_push(wb: Workbench) -> None:
    pid, ids = project(wb, 5)
    old = wb.push_batch(pid, PushBatch("planner-contract-b1", [(ids[4], 1), (ids[3], 2)]))
    assert old.view_id is not None
    wb.delete_task(ids[0])
    wb.delete_task(ids[2])
    batch = [(ids[2], 1), (ids[1], 2), (ids[0], 3), (ids[3], 4)]
    pushed = wb.push_batch(pid, PushBatch("planner-contract-b2", batch))
    assert (pushed.created, pushed.removed, pushed.missing) == (2, 2, (ids[0], ids[2]))
    assert pushed.view_id is not None
    assert wb.view_task_ids(pid, pushed.view_id) == [ids[1], ids[3]]
    assert sorted(wb.list_predictions(pid), key=lambda p: p[2]) == [
        (ids[1], "planner-contract-b2", 1 / 3),
        (ids[3], "planner-contract-b2", 2 / 3),
    ]
    # none of the batch is left: nothing is written, the project serves what it served
    wb.delete_task(ids[1])
    wb.delete_task(ids[3])
    before = (wb.list_predictions(pid), _stamps(wb, pid))
    gone = wb.push_batch(pid, PushBatch("planner-contract-b3", [(ids[1], 1), (ids[3], 2)]))
    assert (gone.created, gone.removed, gone.view_id, gone.missing) == (
        0,
        0,
        None,
        (ids[1], ids[3]),
    )
    assert (wb.list_predictions(pid), _stamps(wb, pid)) == before
    assert wb.project(pid).serving == "planner-contract-b2"


def check_a_skip_finishes_a_task_where_skips_are_ignored(wb: Workbench) -> None:
    pid, ids = project(wb, 3)
    wb.set_skip_queue(pid, "IGNORE_SKIPPED")
    annotator = wb.create_annotator(f"skipper-{uuid.uuid4().hex[:8]}@example.com")
    other = wb.create_annotator(f"other-{uuid.uuid4().hex[:8]}@example.com")
    wb.annotate(ids[0], [], cancelled=True, annotator=annotator)
    (task,) = wb.tasks_by_id(pid, [ids[0]])
    assert task.is_labeled, "the skip completed the task"
    served = []
    for _ in range(2):
        served.append(wb.next_task(pid, annotator=other))
        wb.annotate(int(served[-1] or 0), choice("Car"), annotator=other)
    assert sorted(served) == [ids[1], ids[2]], "Label Studio serves it to nobody again"
    assert wb.next_task(pid, annotator=other) is None
    schema = parse_label_config(wb.project(pid).label_config)
    counted = count_tasks([task.as_task_dict()], schema, split_of="train")
    assert counted.status_counts()["skipped"] == 1, "neither labelled nor in the pool"


def check_annotations_made_from_the_planners_predictions_are_named(wb: Workbench) -> None:
    pid, ids = project(wb, 4)
    wb.push_batch(pid, PushBatch("planner-contract-b1", [(ids[0], 1), (ids[1], 2)]))
    wb.predict(ids[2], 0.5, "someone-elses-model")
    wb.annotate(ids[1], choice("Car"))
    assert wb.annotations_from_predictions(pid) == 3
    tasks = {t.id: t for t in wb.iter_tasks(pid)}
    made = {t: [int(a["id"]) for a in tasks[t].annotations if not a["result"]] for t in ids}
    assert [tasks[t].from_own_predictions for t in ids] == [
        tuple(made[ids[0]]),
        tuple(made[ids[1]]),
        (),  # another model's prediction: its annotation is someone else's business
        (),
    ]
    assert len(made[ids[0]]) == len(made[ids[1]]) == 1
    assert tasks[ids[0]].is_labeled, "Label Studio takes the empty annotation for a label"
    assert {t.id: t.from_own_predictions for t in wb.tasks_by_id(pid, ids[:2])} == {
        t: tuple(made[t]) for t in ids[:2]
    }


CHECKS: list[Callable[[Workbench], None]] = [
    check_the_ports_are_implemented,
    check_project_and_missing_project,
    check_tasks_come_back_as_annotated,
    check_changes_after_a_watermark,
    check_a_batch_is_served_in_rank_order,
    check_another_models_predictions_leave_the_order_alone,
    check_a_single_prediction_save_bumps_updated_at,
    check_tasks_are_read_by_id,
    check_the_webhook_is_registered_once,
    check_a_new_batch_supersedes_the_old,
    check_a_bad_batch_changes_nothing,
    check_deleted_tasks_are_left_out_of_a_push,
    check_a_skip_finishes_a_task_where_skips_are_ignored,
    check_annotations_made_from_the_planners_predictions_are_named,
]
