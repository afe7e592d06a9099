"""Two writers creating the same row at once, on SQLite and the real PostgreSQL: the second
waits for the first and finds its row (each read first, inserted after, and the second
insert failed with IntegrityError)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from sqlmodel import Session, select

from planner.store import Store, ensure_project
from planner.store.batches import PlannedItem, create_batch
from planner.store.models import Batch, Project
from planner.store.sync_state import sync_state
from tests.unit.store.conftest import T0


def _crossing(store: Store, write: Callable[[Session], int]) -> tuple[int, int | BaseException]:
    """``write`` in a transaction held open while a second thread runs it too, then committed;
    what each returned (or what the second raised)."""
    second: list[int | BaseException] = []

    def run() -> None:
        try:
            with store.session() as session:
                second.append(write(session))
        except Exception as exc:
            second.append(exc)

    thread = threading.Thread(target=run)
    with store.session() as session:
        first = write(session)
        thread.start()
        time.sleep(0.5)  # the second has read (nothing yet) and waits for this transaction
    thread.join(60)
    assert not thread.is_alive()
    return first, second[0]


def test_two_writers_ensure_one_project(store: Store) -> None:
    first, second = _crossing(store, lambda s: int(ensure_project(s, ls_project_id=40).id or 0))
    assert second == first
    with store.session() as session:
        assert len(session.exec(select(Project)).all()) == 1


def test_two_writers_create_one_sync_state(store: Store, project_id: int) -> None:
    first, second = _crossing(store, lambda s: sync_state(s, project_id).project_id)
    assert first == second == project_id


def test_two_writers_number_their_batches_one_after_the_other(
    store: Store, project_id: int
) -> None:
    def plan(session: Session) -> int:
        return create_batch(session, project_id, [PlannedItem(1, 1, "uncertain")], {}, at=T0).number

    assert _crossing(store, plan) == (1, 2)
    with store.session() as session:
        tags = session.exec(select(Batch.tag).order_by(Batch.number)).all()
    assert tags == [f"planner-p{project_id}-b00001", f"planner-p{project_id}-b00002"]
