"""Counts, sync and errors against a real Label Studio 1.23.2 server.

Batch pushes, watermarks and deletions are in the shared contract (test_contract.py).
"""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import httpx
import jwt
import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits
from sqlmodel import select

from integrations.label_studio.client import LabelStudioBackend
from integrations.label_studio.launcher import ServerState
from integrations.label_studio.mapping import RANK_FIELD, VIEW_MARK, VIEW_TITLE, view_data
from integrations.label_studio.workbench import LabelStudioWorkbench
from planner.core.counting import count_tasks
from planner.core.labels import parse_label_config
from planner.core.rle_encode import encode_mask
from planner.errors import AuthError, ConfigError, LabelConfigError, TransientError
from planner.ports import PushBatch
from planner.store import open_store
from planner.store.models import Task
from planner.store.tasks import count_table
from planner.sync import sync_project
from tests.unit.integrations.contract import SkipsOne
from tests.unit.integrations.contract import project as small_project
from tests.unit.integrations.test_client_errors import personal_token

pytestmark = pytest.mark.integration

DIGITS = "".join(f'<Choice value="d{d}"/>' for d in range(10))
CLASSIFY = f"""<View><Image name="image" value="$image"/>
<Choices name="digit" toName="image">{DIGITS}</Choices></View>"""
DETECT = """<View><Image name="image" value="$image"/>
<RectangleLabels name="box" toName="image"><Label value="Car"/><Label value="Wheelchair"/>
</RectangleLabels></View>"""
SEGMENT = """<View><Image name="image" value="$image"/>
<BrushLabels name="mask" toName="image"><Label value="Crack"/></BrushLabels></View>"""


def _choice(label: str) -> list[dict[str, Any]]:
    return [
        {"from_name": "digit", "to_name": "image", "type": "choices", "value": {"choices": [label]}}
    ]


def _project(
    backend: LabelStudioWorkbench, config: str, images: Path, n: int
) -> tuple[int, list[int]]:
    digits = load_digits()
    for i in range(n):
        pixels = (digits.images[i % len(digits.images)] * 16).clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels).resize((32, 32)).save(images / f"{i:04d}.png")
    pid = backend.create_project(f"test-{uuid.uuid4().hex[:8]}", config)
    backend.connect_local_storage(pid, str(images))
    rel = images.name
    tasks = [{"data": {"image": f"/data/local-files/?d={rel}/{i:04d}.png"}} for i in range(n)]
    return pid, backend.import_tasks(pid, tasks)


def test_classification_counts_equal_the_annotations(
    label_studio: ServerState, backend: LabelStudioWorkbench, images: Path, tmp_path: Path
) -> None:
    pid, ids = _project(backend, CLASSIFY, images, 300)
    assert len(ids) == 300
    fifth = next(t for t in backend.iter_tasks(pid) if t.id == ids[5])
    image = httpx.get(
        f"{label_studio.url}{fifth.data['image']}",
        headers={"Authorization": f"Token {label_studio.token}"},
        timeout=30,
    )
    assert image.status_code == 200, "local storage serves the task's PNG"
    assert image.content.startswith(b"\x89PNG")
    second = backend.create_annotator(f"second-{uuid.uuid4().hex[:8]}@example.com")
    digits = load_digits()
    expected: Counter[str] = Counter()
    for k, task in enumerate(ids[:60]):
        label = f"d{digits.target[k]}"
        if k % 10 == 0:  # skipped: counts nothing
            backend.annotate(task, [], cancelled=True)
            continue
        if k % 15 == 1:  # two annotators disagree; the latest wins the tie
            backend.annotate(task, _choice("d9" if label != "d9" else "d8"), annotator=second)
        backend.annotate(task, _choice(label))
        expected[label] += 1
    # a reviewer's ground truth beats two annotators
    backend.annotate(ids[200], _choice("d1"))
    backend.annotate(ids[200], _choice("d1"), annotator=second)
    backend.annotate(ids[200], _choice("d7"), ground_truth=True)
    expected["d7"] += 1
    with open_store(f"sqlite:///{tmp_path / 'p.db'}") as store:
        report = sync_project(backend, store, pid, now=datetime.now(UTC))
        assert report.seen == 300
        with store.session() as session:
            classes = tuple(f"d{d}" for d in range(10))
            table = count_table(session, report.project_id, classes, ("train", "val", "test"))
        got = {c: n for c, n in zip(table.classes, table.totals("images").tolist(), strict=True)}
        assert {c: n for c, n in got.items() if n} == dict(expected)
        again = sync_project(backend, store, pid, now=datetime.now(UTC))
        assert (again.new, again.changed) == (0, 0)
    read_back = [t.as_task_dict() for t in backend.iter_tasks(pid)]
    schema = parse_label_config(backend.project(pid).label_config)
    direct = count_tasks(read_back, schema, split_of="train").table
    images_per_class = dict(zip(direct.classes, direct.totals("images").tolist(), strict=True))
    assert {c: n for c, n in images_per_class.items() if n} == dict(expected)


def _synced_totals(
    backend: LabelStudioWorkbench,
    pid: int,
    tmp_path: Path,
    kind: Literal["images", "instances", "pixels"],
) -> dict[str, int]:
    """Sync the project into a fresh store; its count table's totals of ``kind``."""
    with open_store(f"sqlite:///{tmp_path / f'p{pid}.db'}") as store:
        report = sync_project(backend, store, pid, now=datetime.now(UTC))
        assert report.quarantined == ()
        with store.session() as session:
            classes = tuple(parse_label_config(backend.project(pid).label_config).classes)
            table = count_table(session, report.project_id, classes, ("train", "val", "test"))
    return dict(zip(table.classes, table.totals(kind).tolist(), strict=True))


def test_detection_instances_and_segmentation_pixels(
    backend: LabelStudioWorkbench, images: Path, tmp_path: Path
) -> None:
    pid, ids = _project(backend, DETECT, images, 3)

    def box(label: str, x: float) -> dict[str, Any]:
        return {
            "from_name": "box",
            "to_name": "image",
            "type": "rectanglelabels",
            "original_width": 32,
            "original_height": 32,
            "value": {
                "x": x,
                "y": 10,
                "width": 20,
                "height": 20,
                "rotation": 0,
                "rectanglelabels": [label],
            },
        }

    backend.annotate(ids[0], [box("Car", 0), box("Car", 50), box("Wheelchair", 20)])
    backend.annotate(ids[1], [box("Wheelchair", 5)])
    instances = _synced_totals(backend, pid, tmp_path, "instances")
    assert instances == {"Car": 2, "Wheelchair": 2, "unknown": 0}

    seg_images = images.parent / f"{images.name}-seg"
    seg_images.mkdir(exist_ok=True)
    seg_pid, seg_ids = _project(backend, SEGMENT, seg_images, 2)
    mask = np.zeros((32, 32), dtype=bool)
    mask[4:10, 3:20] = True  # 6 x 17 = 102 pixels
    second = np.zeros((32, 32), dtype=bool)
    second[0:2, 0:5] = True  # 10 more, on another image
    for task, pixels in zip(seg_ids, (mask, second), strict=True):
        region = {
            "from_name": "mask",
            "to_name": "image",
            "type": "brushlabels",
            "original_width": 32,
            "original_height": 32,
            "value": {"format": "rle", "rle": encode_mask(pixels), "brushlabels": ["Crack"]},
        }
        backend.annotate(task, [region])
    assert _synced_totals(backend, seg_pid, tmp_path, "pixels") == {"Crack": 112, "unknown": 0}


def test_deletions_and_edits_reach_the_next_sync(
    backend: LabelStudioWorkbench, images: Path, tmp_path: Path
) -> None:
    pid, ids = _project(backend, CLASSIFY, images, 6)
    annotation = backend.annotate(ids[0], _choice("d3"))
    with open_store(f"sqlite:///{tmp_path / 'p.db'}") as store:
        sync_project(backend, store, pid, now=datetime.now(UTC))
        backend.push_batch(pid, PushBatch("planner-test-b1", [(ids[4], 1)]))
        backend.update_annotation(annotation, _choice("d5"))
        backend.delete_task(ids[1])
        (night,) = backend.tasks_by_id(pid, [ids[2]])
        backend.edit_task_data(ids[2], {**night.data, "time": "night"})
        report = sync_project(
            backend, store, pid, now=datetime.now(UTC) + timedelta(seconds=1), reconcile=True
        )
        assert report.changed == 2  # the edits; the prediction push is not a change
        assert report.deleted == (ids[1],)
        with store.session() as session:
            task = session.exec(select(Task).where(Task.ls_task_id == ids[0])).one()
            gone = session.exec(select(Task).where(Task.ls_task_id == ids[1])).one()
            edited = session.exec(select(Task).where(Task.ls_task_id == ids[2])).one()
        assert task.labels == ["d5"]
        assert gone.state == "deleted"
        assert edited.meta == {**night.data, "time": "night"}, "the data edit reached the store"


def test_connection_errors_say_what_to_fix(label_studio: ServerState) -> None:
    cases = [
        ("http://127.0.0.1:9", label_studio.token, 1, TransientError, "cannot reach Label Studio"),
        (label_studio.url, "not-a-token", 1, ConfigError, "rejected the token.*legacy"),
        (label_studio.url, label_studio.token, 987654, ConfigError, "does not exist"),
    ]
    for url, token, project, error, message in cases:
        with (
            LabelStudioBackend(url, token, timeout_s=5) as connection,
            pytest.raises(error, match=message),
        ):
            connection.project(project)


def test_a_label_config_the_planner_cannot_read(backend: LabelStudioWorkbench) -> None:
    text_only = """<View><Text name="text" value="$text"/>
<TextArea name="answer" toName="text"/></View>"""
    project = backend.sdk.projects.create(
        title=f"text-{uuid.uuid4().hex[:8]}", label_config=text_only
    )
    with pytest.raises(LabelConfigError, match=f"project {project.id} on .*no countable class"):
        backend.check(project.id)


def test_a_personal_access_token_works_like_the_legacy_one(
    label_studio: ServerState, personal_access_token: str, backend: LabelStudioWorkbench
) -> None:
    refresh = personal_access_token
    assert refresh.count(".") == 2, "a personal access token is a JWT"
    pid = backend.create_project(f"pat-{uuid.uuid4().hex[:8]}", CLASSIFY)
    with LabelStudioBackend(label_studio.url, refresh) as personal:
        assert personal.project(pid).id == pid


def test_a_single_prediction_save_is_not_mistaken_for_an_annotation(
    backend: LabelStudioWorkbench, images: Path, tmp_path: Path
) -> None:
    pid, ids = _project(backend, CLASSIFY, images, 4)
    backend.annotate(ids[0], _choice("d2"))
    with open_store(f"sqlite:///{tmp_path / 'p.db'}") as store:
        first = sync_project(backend, store, pid, now=datetime.now(UTC))
        assert first.watermark is not None
        # an ML backend's single prediction save, through the SDK: it bumps updated_at
        backend.predict(ids[0], 0.8, "someone-elses-model")
        backend.predict(ids[1], 0.3, "someone-elses-model")
        bumped = {t.id for t in backend.iter_tasks(pid, updated_after=first.watermark)}
        assert bumped == {ids[0], ids[1]}
        report = sync_project(backend, store, pid, now=datetime.now(UTC))
        assert (report.new, report.changed) == (0, 0)
        assert report.unchanged == report.seen >= 2
        with store.session() as session:
            classes = tuple(f"d{d}" for d in range(10))
            table = count_table(session, report.project_id, classes, ("train", "val", "test"))
        assert int(table.totals("images")[classes.index("d2")]) == 1


def test_the_batch_order_survives_another_model_and_a_changed_model_version(
    backend: LabelStudioWorkbench, images: Path
) -> None:
    pid, ids = _project(backend, CLASSIFY, images, 6)
    old = backend.push_batch(pid, PushBatch("planner-test-b1", [(ids[5], 1), (ids[0], 2)]))
    batch = PushBatch("planner-test-b2", [(ids[3], 1), (ids[1], 2), (ids[4], 3)])
    view = backend.push_batch(pid, batch).view_id
    assert view == old.view_id
    assert view is not None
    order = [ids[3], ids[1], ids[4]]
    # another model, scoring the batch against its rank order
    for task, score in ((ids[3], 0.99), (ids[1], 0.5), (ids[4], 0.01), (ids[2], 0.0)):
        backend.predict(task, score, "someone-elses-model")
    assert backend.view_task_ids(pid, view) == order
    assert backend.next_task(pid) == ids[3]
    # someone points the project at the other model: sampling follows it, the tab does not
    backend.sdk.projects.update(id=pid, model_version="someone-elses-model")
    assert backend.project(pid).serving == "someone-elses-model"
    assert backend.view_task_ids(pid, view) == order
    # the rank lives in the task data on the server, and left the superseded batch's tasks
    data = {t: backend.sdk.tasks.get(id=str(t)).data for t in ids}
    assert {t: d.get(RANK_FIELD) for t, d in data.items() if RANK_FIELD in d} == {
        ids[3]: "000001",
        ids[1]: "000002",
        ids[4]: "000003",
    }
    assert data[ids[5]] == {"image": f"/data/local-files/?d={images.name}/0005.png"}
    again = backend.push_batch(pid, batch)  # takes the project back
    assert (again.created, again.removed) == (0, 0)
    assert backend.project(pid).serving == batch.tag


def test_a_second_next_batch_tab_is_removed_by_the_next_push(
    backend: LabelStudioWorkbench, images: Path
) -> None:
    # a create retried after a timeout the server had committed leaves two tabs of ours
    pid, ids = _project(backend, CLASSIFY, images, 3)
    first = backend.push_batch(pid, PushBatch("planner-test-b1", [(ids[0], 1)])).view_id
    stale = backend.sdk.views.create(project=pid, data=view_data(VIEW_TITLE, [ids[2]]))
    view = backend.push_batch(pid, PushBatch("planner-test-b2", [(ids[1], 1)])).view_id
    titles = [(v.id, (v.data or {}).get("title")) for v in backend.sdk.views.list(project=pid)]
    assert [i for i, title in titles if title == VIEW_TITLE] == [first]
    assert stale.id != first
    assert view == first
    assert backend.view_task_ids(pid, view) == [ids[1]]


def test_a_users_next_batch_tab_survives_a_push(
    backend: LabelStudioWorkbench, images: Path
) -> None:
    # the planner's tab is told by its mark, which Label Studio keeps in the tab's data; a tab
    # of the planner before the mark (exactly its shape) is taken over, a user's is left alone
    pid, ids = _project(backend, CLASSIFY, images, 3)
    users = {"title": VIEW_TITLE, "hiddenColumns": {"explore": ["tasks:data.image"]}}
    users |= {"filters": {"conjunction": "and", "items": []}, "ordering": ["-tasks:id"]}
    user = backend.sdk.views.create(project=pid, data=users)
    legacy = view_data(VIEW_TITLE, [ids[2]])
    del legacy[VIEW_MARK]
    before = backend.sdk.views.create(project=pid, data=legacy)
    first = backend.push_batch(pid, PushBatch("planner-test-b1", [(ids[0], 1)])).view_id
    again = backend.push_batch(pid, PushBatch("planner-test-b2", [(ids[1], 1)])).view_id
    tabs = {v.id: v.data for v in backend.sdk.views.list(project=pid)}
    assert first == again == before.id, "the unmarked tab of an older planner is taken over"
    assert tabs[first][VIEW_MARK], "marked by the push, and the mark read back"
    assert tabs[user.id] == users, "the user's tab is neither deleted nor rewritten"
    assert sorted(tabs) == sorted([user.id, first])
    assert backend.view_task_ids(pid, first) == [ids[1]]


def test_reconciliation_reads_what_a_listing_missed(
    backend: LabelStudioWorkbench, images: Path, tmp_path: Path
) -> None:
    pid, ids = _project(backend, CLASSIFY, images, 5)
    backend.annotate(ids[2], _choice("d4"))
    with open_store(f"sqlite:///{tmp_path / 'p.db'}") as store:
        skipping: Any = SkipsOne(backend, ids[2])
        first = sync_project(skipping, store, pid, now=datetime.now(UTC))
        assert first.recovered == (ids[2],)
        backend.annotate(ids[4], _choice("d6"))  # a change the next listing skips
        skipping = SkipsOne(backend, ids[4])
        later = sync_project(skipping, store, pid, now=datetime.now(UTC), reconcile=True)
        assert later.recovered == (ids[4],)
        with store.session() as session:
            rows = {t.ls_task_id: t for t in session.exec(select(Task)).all()}
        assert (rows[ids[2]].labels, rows[ids[4]].labels) == (["d4"], ["d6"])
        assert len(rows) == 5
        quiet = sync_project(backend, store, pid, now=datetime.now(UTC), reconcile=True)
        assert (quiet.recovered, quiet.new, quiet.changed) == ((), 0, 0)


def test_the_image_is_the_field_the_image_tag_names(
    backend: LabelStudioWorkbench, tmp_path: Path
) -> None:
    config = """<View><Text name="caption" value="$caption"/><Image name="photo" value="$picture"/>
<Choices name="kind" toName="photo"><Choice value="Car"/></Choices></View>"""
    pid = backend.create_project(f"named-{uuid.uuid4().hex[:8]}", config)
    data = {"caption": "a red car", "picture": "/data/upload/1/car.png"}
    (task,) = backend.import_tasks(pid, [{"data": data}])
    with open_store(f"sqlite:///{tmp_path / 'p.db'}") as store:
        sync_project(backend, store, pid, now=datetime.now(UTC))
        with store.session() as session:
            row = session.exec(select(Task).where(Task.ls_task_id == task)).one()
    assert row.image == "/data/upload/1/car.png"


def test_a_push_keeps_the_tasks_own_references(backend: LabelStudioWorkbench) -> None:
    # A listing that resolves URIs (the server's default) rewrites storage references into
    # resolve links and, with task_data_login, every URL into a file-proxy link (community
    # edition has no such route: it answers 500); the push would write them back over the
    # task's own data. No S3 storage here (it checks its bucket online): task_data_login it is.
    pid = backend.create_project(f"refs-{uuid.uuid4().hex[:8]}", CLASSIFY)
    backend.sdk.projects.update(id=pid, task_data_login="reader", task_data_password="secret")
    own = [
        {"image": "s3://bucket/photos/0001.jpg"},
        {"image": "https://images.example.com/0002.jpg", "source": "gs://other/0002.jpg"},
    ]
    ids = backend.import_tasks(pid, [{"data": data} for data in own])
    backend.push_batch(pid, PushBatch("planner-test-b1", [(ids[1], 1), (ids[0], 2)]))
    stored = backend.get("/api/tasks/", params={"project": pid, "resolve_uri": "false"})["tasks"]
    assert {t["id"]: {k: v for k, v in t["data"].items() if k != RANK_FIELD} for t in stored} == {
        ids[0]: own[0],
        ids[1]: own[1],
    }
    assert {t.id: dict(t.data) for t in backend.iter_tasks(pid)} == dict(zip(ids, own, strict=True))


def test_a_push_cut_short_leaves_the_project_serving_the_last_batch(
    backend: LabelStudioWorkbench, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid, ids = small_project(backend, 6)
    old = PushBatch("planner-test-b1", [(ids[4], 1), (ids[2], 2)])
    backend.push_batch(pid, old)
    new = PushBatch("planner-test-b2", [(ids[1], 1), (ids[3], 2)])

    def down(**_: Any) -> None:  # the server gone at this step: no real way to time that
        raise httpx.ConnectError("connection refused")

    monkeypatch.setattr(backend.sdk.projects, "update", down)
    with pytest.raises(TransientError, match="cannot reach"):
        backend.push_batch(pid, new)
    monkeypatch.undo()
    # the project still names b1, and b1's predictions are there to serve it by
    assert backend.project(pid).serving == old.tag
    versions = {(task, version) for task, version, _ in backend.list_predictions(pid)}
    assert {(ids[4], old.tag), (ids[2], old.tag)} <= versions
    # as another user: /next/ locks the task it serves for its user
    annotator = backend.create_annotator(f"meanwhile-{uuid.uuid4().hex[:8]}@example.com")
    assert backend.next_task(pid, annotator=annotator) == ids[4]
    done = backend.push_batch(pid, new)  # the next push finishes it
    assert (done.created, done.removed) == (0, 2)
    assert sorted(backend.list_predictions(pid)) == sorted(
        [(ids[1], new.tag, 1 / 3), (ids[3], new.tag, 2 / 3)]
    )
    assert (backend.project(pid).serving, backend.next_task(pid)) == (new.tag, ids[1])


def test_a_404_inside_a_push_is_one_thing_gone_not_the_project(
    backend: LabelStudioWorkbench, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid, ids = small_project(backend, 5)
    backend.push_batch(pid, PushBatch("planner-test-b1", [(ids[0], 1), (ids[1], 2)]))
    sdk = backend.sdk
    delete, update = sdk.predictions.delete, sdk.tasks.update
    timed_out: list[int] = []

    def delete_then_time_out(*, id: int) -> None:
        delete(id=id)  # the server deletes it; its answer is lost on the way back
        if not timed_out:
            timed_out.append(id)
            raise httpx.ReadTimeout("timed out")

    def deleted_meanwhile(*, id: str, data: Any) -> Any:
        if int(id) == ids[3]:
            backend.delete_task(ids[3])  # someone deletes it between the listing and the PATCH
        return update(id=id, data=data)

    monkeypatch.setattr(sdk.predictions, "delete", delete_then_time_out)
    monkeypatch.setattr(sdk.tasks, "update", deleted_meanwhile)
    batch = PushBatch("planner-test-b2", [(ids[2], 1), (ids[3], 2), (ids[4], 3)])
    pushed = backend.push_batch(pid, batch)
    monkeypatch.undo()
    assert timed_out, "a delete was retried after its first try had committed"
    assert (pushed.removed, pushed.missing) == (2, (ids[3],))
    assert pushed.view_id is not None
    assert backend.view_task_ids(pid, pushed.view_id) == [ids[2], ids[4]]
    assert {v for _, v, _ in backend.list_predictions(pid)} == {batch.tag}
    assert backend.project(pid).serving == batch.tag


def test_a_task_deleted_before_the_prediction_import_leaves_the_batch_without_it(
    backend: LabelStudioWorkbench, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Label Studio refuses the whole bulk import (400 'contains invalid "task" field', data_import
    # /api.py ImportPredictionsAPI) when one task is gone: the push used to expire the batch
    tries: list[int] = []
    pid, ids = small_project(backend, 4)
    projects = backend.sdk.projects
    imports = projects.import_predictions

    def deleted_meanwhile(*, id: int, request: Any) -> Any:
        if not tries:
            backend.delete_task(ids[1])  # deleted between the task listing and the import
        tries.append(len(request))
        return imports(id=id, request=request)

    monkeypatch.setattr(projects, "import_predictions", deleted_meanwhile)
    batch = PushBatch("planner-test-b1", [(ids[0], 1), (ids[1], 2), (ids[2], 3)])
    pushed = backend.push_batch(pid, batch)
    assert tries == [3, 2], "refused with the deleted task, then imported without it"
    assert (pushed.created, pushed.missing) == (2, (ids[1],))
    assert pushed.view_id is not None
    assert backend.view_task_ids(pid, pushed.view_id) == [ids[0], ids[2]]
    assert sorted(t for t, _, _ in backend.list_predictions(pid)) == [ids[0], ids[2]]
    assert backend.project(pid).serving == batch.tag
    # refused again for another reason: raised as before, not tried a third time
    tries.clear()
    backend.delete_task(ids[3])

    def refused(*, id: int, request: Any) -> Any:
        tries.append(len(request))
        return imports(id=id, request=[*request, {"task": ids[3], "result": [], "score": 0.5}])

    monkeypatch.setattr(projects, "import_predictions", refused)
    with pytest.raises(ConfigError, match=r"refused predictions of project .* \(400\)"):
        backend.push_batch(pid, PushBatch("planner-test-b2", [(ids[0], 1), (ids[2], 2)]))
    assert tries == [2]


def _answer_lost(create: Any) -> Any:
    """``create``, whose server commits it and whose answer is then lost on the way back."""

    def landed_then_lost(*args: Any, **kwargs: Any) -> Any:
        create(*args, **kwargs)
        raise httpx.ReadTimeout("timed out")

    return landed_then_lost


def test_a_create_whose_answer_is_lost_is_not_sent_twice(
    backend: LabelStudioWorkbench, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a retry would make a second one
    pid, ids = small_project(backend, 3)
    sdk = backend.sdk
    imports = sdk.projects.import_predictions
    monkeypatch.setattr(sdk.projects, "import_predictions", _answer_lost(imports))
    monkeypatch.setattr(sdk.views, "create", _answer_lost(sdk.views.create))
    monkeypatch.setattr(sdk.webhooks, "create", _answer_lost(sdk.webhooks.create))
    batch = PushBatch("planner-test-b1", [(ids[2], 1), (ids[0], 2)])
    with pytest.raises(TransientError, match=r"not sent again.*next push keeps what landed"):
        backend.push_batch(pid, batch)
    assert sorted(backend.list_predictions(pid)) == [
        (ids[0], batch.tag, 2 / 3),
        (ids[2], batch.tag, 1 / 3),
    ]
    monkeypatch.setattr(sdk.projects, "import_predictions", imports)
    with pytest.raises(TransientError, match="next push finds it"):
        backend.push_batch(pid, batch)
    url = "http://127.0.0.1:9/webhook/label-studio"
    with pytest.raises(TransientError, match="finds it by its URL"):
        backend.ensure_webhook(pid, url, secret="s")
    monkeypatch.undo()
    views = [v for v in sdk.views.list(project=pid) if (v.data or {}).get("title") == VIEW_TITLE]
    assert len(views) == 1
    assert len(backend.list_webhooks(pid)) == 1
    done = backend.push_batch(pid, batch)  # the next push completes what the first left
    assert (done.created, done.view_id) == (0, views[0].id)
    assert len(backend.list_predictions(pid)) == 2
    assert backend.view_task_ids(pid, views[0].id) == [ids[2], ids[0]]
    assert backend.ensure_webhook(pid, url, secret="s") == backend.list_webhooks(pid)[0][0]


def test_a_personal_access_token_the_server_refuses_says_what_to_do(
    label_studio: ServerState,
) -> None:
    forged = personal_token(timedelta(days=1))  # a JWT, not signed by this server
    with (
        LabelStudioBackend(label_studio.url, forged, timeout_s=10) as connection,
        pytest.raises(AuthError, match=r"(?s)rejected the token \(401\).*Personal Access Token"),
    ):
        connection.project(1)


def test_a_refused_access_token_is_refreshed_once(
    label_studio: ServerState, personal_access_token: str, backend: LabelStudioWorkbench
) -> None:
    pid = backend.create_project(f"pat-{uuid.uuid4().hex[:8]}", CLASSIFY)
    with LabelStudioBackend(label_studio.url, personal_access_token) as personal:
        assert personal.project(pid).id == pid
        # an access token the SDK still holds valid but the server no longer takes (its clock
        # ahead of ours, a revoked token): forged here, as neither can be made to order
        claims = {
            "token_type": "access",
            "user_id": 1,
            "exp": datetime.now(UTC) + timedelta(hours=1),
        }
        tokens = personal.sdk._client_wrapper._tokens_client
        tokens._access_token = jwt.encode(claims, "a key this server never signed with, 32+")
        assert personal.project(pid).id == pid
