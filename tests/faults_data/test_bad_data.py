"""Bad data from a real Label Studio 1.23.2: every bad task is held apart with its id and what to
do, the rest is counted, scored and pushed; a task fixed in Label Studio leaves on the next sync.

The faults are real: Label Studio stores whatever result an annotation is posted with, serves
a 404 for a missing local file and a corrupt file as it is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits
from sqlmodel import select

from integrations.label_studio.launcher import ServerState
from integrations.label_studio.workbench import LabelStudioWorkbench
from planner.connect import connect, open_settings_store
from planner.core.rle_encode import encode_mask
from planner.daemon.run import build_daemon
from planner.daemon.service import ProjectDaemon
from planner.quarantine import held_apart
from planner.settings import load_settings
from planner.store import DatabaseLease
from planner.store.models import BatchItem, QuarantineEntry, ScoreRecord, Task
from planner.store.tasks import count_table
from tests.faults.tally import Tally

pytestmark = [pytest.mark.integration, pytest.mark.fault, pytest.mark.slow]
PLANNER = str(Path(sys.executable).parent / "planner")
DIGITS = tuple(str(d) for d in range(10))
CONFIG = (
    '<View><Image name="image" value="$image"/><Choices name="digit" toName="image">'
    + "".join(f'<Choice value="{d}"/>' for d in DIGITS)
    + '</Choices><BrushLabels name="mask" toName="image"><Label value="Crack"/></BrushLabels>'
    "</View>"
)
SPLITS = ("train", "val", "test")


def choice(labels: object, *, control: str = "digit") -> dict[str, Any]:
    """A Choices result; ``labels`` None leaves out its value."""
    item: dict[str, Any] = {"from_name": control, "to_name": "image", "type": "choices"}
    return item if labels is None else {**item, "value": {"choices": labels}}


def brush(rle: list[int], *, sized: bool) -> dict[str, Any]:
    item: dict[str, Any] = {
        "from_name": "mask",
        "to_name": "image",
        "type": "brushlabels",
        "value": {"format": "rle", "rle": rle, "brushlabels": ["Crack"]},
    }
    if sized:
        item |= {"original_width": 32, "original_height": 32}
    return item


def huge_rle(length: int) -> list[int]:
    """A brush stream declaring 2**32 - 4 values (a 1-gigapixel mask), ``length`` bytes long."""
    stream = encode_mask(np.ones((4, 4), dtype=bool))
    rng = np.random.default_rng(7)
    tail = rng.integers(0, 256, size=max(0, length - len(stream))).tolist()
    return [0xFF, 0xFF, 0xFF, 0xFC, *stream[4:], *tail]


class Live:
    """The project, its planner config and a daemon built from it, as ``planner run`` does."""

    def __init__(
        self, backend: LabelStudioWorkbench, label_studio: ServerState, images: Path, tmp_path: Path
    ) -> None:
        digits = load_digits()
        for i in range(40):
            pixels = (digits.images[i] * 16).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels).resize((32, 32)).save(images / f"{i:04d}.png")
        (images / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
        self.truth = [str(digits.target[i]) for i in range(40)]
        self.backend, self.url, self.token = backend, label_studio.url, label_studio.token
        self.pid = backend.create_project(f"faults-{uuid.uuid4().hex[:8]}", CONFIG)
        backend.connect_local_storage(self.pid, str(images))
        ref = f"/data/local-files/?d={images.name}/"
        self.good_ref = ref + "0000.png"
        data = [{"image": f"{ref}{i:04d}.png"} for i in range(40)]
        data += [
            {"image": ref + "corrupt.png"},
            {"image": ref + "missing.png"},
            {"image": "http://169.254.169.254/latest/meta-data/x.png"},
        ]
        self.ids = backend.import_tasks(self.pid, [{"data": d} for d in data])
        self.corrupt, self.missing, self.forbidden = self.ids[40:43]
        self.config = tmp_path / "planner.toml"
        self.config.write_text(
            f"""[label_studio]
url = "{label_studio.url}"
project_id = {self.pid}
[store]
url = "sqlite:///{tmp_path / "planner.db"}"
[planning]
batch_size = 4
[quotas.3]
target = 20
[workers]
num_workers = 0
[dashboard]
reports_dir = "{tmp_path / "reports"}"
[artifacts]
dir = "{tmp_path / "artifacts"}"
""",
            encoding="utf-8",
        )

    @contextmanager
    def daemon(self) -> Iterator[ProjectDaemon]:
        settings = load_settings(self.config)
        store = open_settings_store(settings)
        backend = connect(settings)
        # no heartbeat thread here: a lease outliving the bootstrap training instead
        lease = DatabaseLease(store.engine, f"project-{self.pid}", ttl_s=900, holder="faults")
        try:
            yield build_daemon(settings, backend=backend, store=store, lease=lease)
        finally:
            backend.close()
            store.dispose()

    def annotation_ids(self, task_id: int) -> list[int]:
        task = httpx.get(f"{self.url}/api/tasks/{task_id}/", headers=self._auth, timeout=30)
        return [int(a["id"]) for a in task.json()["annotations"]]

    @property
    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Token {self.token}"}

    def patch(self, path: str, body: dict[str, Any]) -> None:
        answer = httpx.patch(
            f"{self.url}{path}",
            json=body,
            headers=self._auth,
            timeout=30,
        )
        assert answer.status_code == 200, answer.text


@pytest.fixture
def live(
    backend: LabelStudioWorkbench,
    label_studio: ServerState,
    images: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Live:
    for key in [k for k in os.environ if k.startswith("PLANNER_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PLANNER_LABEL_STUDIO__TOKEN", label_studio.token)
    return Live(backend, label_studio, images, tmp_path)


BAD_TASKS = (
    "unknown_label",
    "result_of_an_unknown_control",
    "result_without_a_value",
    "malformed_result",
    "huge_brush_rle",
    "brush_rle_without_a_size",
    "duplicate_annotation",
    "deleted_task",
    "corrupt_image",
    "missing_image",
    "forbidden_image_host",
)


@contextmanager
def bad_inputs(tally: Tally, names: tuple[str, ...]) -> Iterator[None]:
    """Counts each bad input as injected, and survived when the block passes; an exception
    other than a failed check (the planner raising on the bad data) counts as a crash."""
    with ExitStack() as faults:
        for name in names:
            faults.enter_context(tally.fault(f"bad_data.{name}"))
        try:
            yield
        except AssertionError:
            tally.bad_data_crash(0)
            raise
        except Exception:
            tally.bad_data_crash(1)
            raise
        tally.bad_data_crash(0)


def _held(daemon: ProjectDaemon, project_id: int) -> dict[int, QuarantineEntry]:
    with daemon.store.session() as session:
        rows = session.exec(
            select(QuarantineEntry).where(QuarantineEntry.project_id == project_id)
        ).all()
        return {row.ls_task_id: row for row in rows if row.released_at is None}


def _released(daemon: ProjectDaemon, project_id: int) -> dict[int, str]:
    with daemon.store.session() as session:
        rows = session.exec(
            select(QuarantineEntry).where(QuarantineEntry.project_id == project_id)
        ).all()
        return {row.ls_task_id: str(row.released_why) for row in rows if row.released_at}


def test_bad_tasks_are_held_apart_and_the_rest_is_counted_scored_and_pushed(
    live: Live, backend: LabelStudioWorkbench, tally: Tally
) -> None:
    ids, truth = live.ids, live.truth
    for k in range(24):
        backend.annotate(ids[k], [choice([truth[k]])])
    unknown, ghost, pooled, wrong_type, huge_sized, huge_unsized, dup, gone = ids[24:32]
    unknown_annotation = backend.annotate(unknown, [choice(["Scooter"])])
    backend.annotate(ghost, [choice(["3"], control="ghost")])
    # Label Studio answers 500 to posting a result without a value, but imports it as it is
    no_value = backend.import_tasks(
        live.pid, [{"data": {"image": live.good_ref}, "annotations": [{"result": [choice(None)]}]}]
    )[0]
    # under load the import's answer can come before its annotation is readable (a retried,
    # timed-out import lists the first one's task mid-flight): wait for it, briefly
    deadline = time.monotonic() + 30
    while not live.annotation_ids(no_value) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert live.annotation_ids(no_value), "imported with its annotation"
    backend.annotate(wrong_type, [choice("3")])  # a string, not a list of labels
    backend.annotate(huge_sized, [brush(huge_rle(400_000), sized=True)])
    backend.annotate(huge_unsized, [brush(huge_rle(64), sized=False)])
    backend.annotate(dup, [choice(["3"])])
    backend.annotate(dup, [choice(["3"])])  # the same annotation submitted twice
    backend.annotate(gone, [choice(["3"])])
    data_bad = {unknown, ghost, no_value, wrong_type, huge_sized, huge_unsized}
    image_bad = {live.corrupt, live.missing, live.forbidden}

    with bad_inputs(tally, BAD_TASKS), live.daemon() as daemon:
        first = daemon.cycle()
        assert first.pushed is not None, first.why
        assert first.sync is not None
        assert {task for task, _ in first.sync.quarantined} == data_bad
        backend.delete_task(gone)
        backend.delete_task(wrong_type)
        daemon.housekeeping()  # reconciles the deletions; the unscorable images are held now
        project_id = first.sync.project_id
        held = _held(daemon, project_id)
        assert set(held) == (data_bad - {wrong_type}) | image_bad
        assert "'Scooter' of 'digit' is not in the label config" in held[unknown].problem
        assert (
            "choices result of 'ghost', a control the label config does not" in held[ghost].problem
        )
        assert "no value object" in held[no_value].problem
        assert "declares 4294967292 values but the image needs 4096" in held[huge_sized].problem
        assert "beyond the limit" in held[huge_unsized].problem
        assert "corrupt or unreadable image" in held[live.corrupt].problem
        assert "answered 404" in held[live.missing].problem
        assert "not on the allow-list" in held[live.forbidden].problem
        assert {row.kind for t, row in held.items() if t in image_bad} == {"image"}
        assert all("Label Studio" in row.fix for row in held.values())
        assert _released(daemon, project_id)[wrong_type] == "the task was deleted in Label Studio"

        with daemon.store.session() as session:
            table = count_table(session, project_id, (*DIGITS, "Crack"), SPLITS)
            batch = session.exec(select(BatchItem.ls_task_id)).all()
            states = {t.ls_task_id: t.state for t in session.exec(select(Task)).all()}
        images = dict(zip(table.classes, table.totals("images").tolist(), strict=True))
        expected = {d: truth[:24].count(d) for d in DIGITS}
        expected["3"] += 1  # the duplicated annotation counts its image once
        assert images == {**expected, "Crack": 0, "unknown": 0}
        assert int(table.totals("instances")[table.classes.index("3")]) == expected["3"]
        assert states[dup] == "labelled"
        assert states[gone] == "deleted"
        assert batch, "the batch was pushed"
        assert set(batch) <= {pooled, *ids[32:40]}, "no held-apart task is ever pushed"

        status = subprocess.run(
            [PLANNER, "status", "-c", str(live.config), "--json"],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        shown = json.loads(status.stdout)["projects"][0]
        assert shown["held_apart"] == len(held)
        assert {h["task_id"] for h in shown["latest_held"]} <= set(held)
        assert len(shown["latest_held"]) == 5
        text = subprocess.run(
            [PLANNER, "status", "-c", str(live.config)],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
        assert f"{len(held)} tasks held apart" in text

        folder = daemon.report()
        assert folder is not None
        report = json.loads((folder / "report.json").read_text())
        assert {row["task_id"] for row in report["held_apart"]} == set(held)
        markdown = (folder / "report.md").read_text()
        assert "## Held apart" in markdown
        assert f"| {live.missing} | image |" in markdown
        assert 'id="held_apart"' in (folder / "report.html").read_text()

        # fixed in Label Studio: a re-submitted annotation, another image for the corrupt task
        # (Label Studio answers 500 to editing or deleting the value-less one: it stays held)
        backend.update_annotation(unknown_annotation, [choice(["5"])])
        live.patch(f"/api/tasks/{live.corrupt}/", {"data": {"image": live.good_ref}})
        fixed = daemon.sync()
        assert fixed is not None
        released = _released(daemon, project_id)
        assert released[unknown] == "the annotations are readable again"
        assert released[live.corrupt].startswith("another image was set in Label Studio")
        assert set(_held(daemon, project_id)) == set(held) - {unknown, live.corrupt}
        with daemon.store.session() as session:
            fixed_row = session.exec(select(Task).where(Task.ls_task_id == unknown)).one()
            assert (fixed_row.state, fixed_row.labels) == ("labelled", ["5"])
            assert held_apart(session, project_id, limit=1)

        again = daemon.cycle()  # the corrupt task, now with a good image, is scored
        assert again.model_version is not None
        with daemon.store.session() as session:
            marks = session.exec(
                select(ScoreRecord.unscorable).where(ScoreRecord.ls_task_id == live.corrupt)
            ).all()
        assert marks == [None], "scored once its image was fixed, never marked again"


def test_a_label_config_changed_under_the_planner_holds_the_stale_tasks_apart(
    live: Live, backend: LabelStudioWorkbench, tally: Tally
) -> None:
    """Label Studio lets a class be removed or renamed while annotations still use it."""
    labels = ["1", "8", "9", "1", "8", "2"]
    annotations = [backend.annotate(live.ids[k], [choice([lab])]) for k, lab in enumerate(labels)]
    renamed = CONFIG.replace('<Choice value="9"/>', "").replace('"8"', '"eight"')
    with bad_inputs(tally, ("label_config_changed",)), live.daemon() as daemon:
        first = daemon.sync()
        assert first is not None
        assert first.quarantined == ()
        live.patch(f"/api/projects/{live.pid}/", {"label_config": renamed})
        changed = daemon.sync()
        assert changed is not None
        assert changed.full, "a new label config reads every task again"
        stale = {live.ids[k] for k, lab in enumerate(labels) if lab in ("8", "9")}
        held = _held(daemon, first.project_id)
        assert set(held) == stale
        assert "'8' of 'digit' is not in the label config" in held[live.ids[1]].problem
        assert "'9' of 'digit' is not in the label config" in held[live.ids[2]].problem
        with daemon.store.session() as session:
            table = count_table(session, first.project_id, ("1", "2", "eight"), SPLITS)
        images = dict(zip(table.classes, table.totals("images").tolist(), strict=True))
        assert images == {"1": 2, "2": 1, "eight": 0, "unknown": 0}

        # relabelled under the new name, and 9 put back: both leave on the next sync
        backend.update_annotation(annotations[1], [choice(["eight"])])
        backend.update_annotation(annotations[4], [choice(["eight"])])
        live.patch(
            f"/api/projects/{live.pid}/",
            {
                "label_config": renamed.replace(
                    '<Choice value="eight"/>', '<Choice value="eight"/><Choice value="9"/>'
                )
            },
        )
        assert daemon.sync() is not None
        assert _held(daemon, first.project_id) == {}
        assert set(_released(daemon, first.project_id)) == stale
        with daemon.store.session() as session:
            table = count_table(session, first.project_id, ("1", "2", "eight", "9"), SPLITS)
        images = dict(zip(table.classes, table.totals("images").tolist(), strict=True))
        assert images == {"1": 2, "2": 1, "eight": 2, "9": 1, "unknown": 0}
