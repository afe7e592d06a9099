"""The history records: stop events, artifacts, count snapshots, model versions."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from planner.errors import InputError
from planner.store import Store
from planner.store.events import (
    artifacts,
    count_snapshots,
    model_versions,
    record_artifact,
    record_counts,
    record_model_version,
    record_stop_event,
    stop_events,
)
from tests.unit.store.conftest import T0


def test_stop_events_read_back_in_order(store: Store, project_id: int) -> None:
    with store.session() as session:
        for minutes, fired in ((10, True), (0, False), (20, False)):
            record_stop_event(
                session,
                project_id=project_id,
                rule="quota_met",
                fired=fired,
                reason=f"after {minutes} min",
                numbers={"missing": {"Bus": minutes}},
                at=T0 + timedelta(minutes=minutes),
            )
    with store.session() as session:
        every = stop_events(session, project_id)
        fired = stop_events(session, project_id, fired_only=True)
        recent = stop_events(session, project_id, since=T0 + timedelta(minutes=5))
    assert [e.reason for e in every] == ["after 0 min", "after 10 min", "after 20 min"]
    assert [e.reason for e in fired] == ["after 10 min"]
    assert [e.reason for e in recent] == ["after 10 min", "after 20 min"]
    assert every[1].numbers == {"missing": {"Bus": 10}}
    assert every[1].at.tzinfo is not None


def test_artifacts_newest_first(store: Store, project_id: int) -> None:
    with store.session() as session:
        for version in ("v1", "v2"):
            record_artifact(
                session,
                project_id=project_id,
                version=version,
                path=f"out/weights-{version}.json",
                checksum="sha256:" + version,
                reason="counts changed",
                at=T0 + timedelta(days=int(version[1])),
            )
    with store.session() as session:
        assert [a.version for a in artifacts(session, project_id)] == ["v2", "v1"]
        assert artifacts(session, project_id + 1) == []


def test_count_snapshots_make_a_burn_up_series(store: Store, project_id: int) -> None:
    with store.session() as session:
        for day in (2, 0, 1):
            record_counts(
                session,
                project_id=project_id,
                counts={"train": {"Bus": day * 5}},
                annotations=day * 7,
                at=T0 + timedelta(days=day),
            )
    with store.session() as session:
        series = count_snapshots(session, project_id)
        tail = count_snapshots(session, project_id, since=T0 + timedelta(days=1))
    assert [s.annotations for s in series] == [0, 7, 14]
    assert [s.counts["train"]["Bus"] for s in tail] == [5, 10]
    assert series[0].taken_at == T0


def test_model_versions_are_recorded_once(store: Store, project_id: int) -> None:
    with store.session() as session:
        one = record_model_version(
            session, project_id=project_id, version="m1", source="models/m1.pt", at=T0
        )
        again = record_model_version(
            session, project_id=project_id, version="m1", source="other", at=T0
        )
        record_model_version(
            session, project_id=project_id, version="m2", source="", at=T0 + timedelta(1)
        )
        assert again.id == one.id
        assert again.source == "models/m1.pt"
        assert [m.version for m in model_versions(session, project_id)] == ["m2", "m1"]


def test_naive_times_are_refused_with_a_hint(store: Store, project_id: int) -> None:
    naive = datetime(2026, 1, 1)  # noqa: DTZ001 - the point of the check
    with store.session() as session, pytest.raises(InputError, match=r"datetime.now\(UTC\)"):
        record_counts(session, project_id=project_id, counts={}, annotations=0, at=naive)
