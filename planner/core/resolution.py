"""Which of a task's annotations counts when several annotators labelled it.

Policies (cancelled/skipped annotations never take part):

* ``ground_truth_majority_latest`` (default): an annotation marked ground truth wins (the latest
  one if several); otherwise the largest group of annotations with the same set of classes
  wins, and a tie between groups goes to the group holding the latest annotation; within the
  winning group the latest annotation is the one counted.
* ``majority``: the same without the ground-truth step.
* ``latest``: the latest annotation.

"Latest" orders by ``updated_at``, then ``created_at``, then ``id`` (then position in the
list), a missing or unreadable time sorting before any real one. Times without a zone are
read as UTC, which is what Label Studio stores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

from planner.errors import InputError

Reason = Literal["ground_truth", "only_annotation", "majority", "tie_latest", "latest"]


class ResolutionPolicy(StrEnum):
    """How one annotation is chosen among several on a task."""

    GROUND_TRUTH_MAJORITY_LATEST = "ground_truth_majority_latest"
    MAJORITY = "majority"
    LATEST = "latest"


def as_policy(policy: ResolutionPolicy | str) -> ResolutionPolicy:
    """A policy from its name; an unknown name is an ``InputError`` listing the choices."""
    try:
        return ResolutionPolicy(policy)
    except ValueError:
        choices = ", ".join(p.value for p in ResolutionPolicy)
        raise InputError(f"resolution policy {policy!r} is not one of: {choices}") from None


def parse_timestamp(value: object) -> datetime | None:
    """An ISO 8601 time as an aware datetime (no zone: UTC), or None if absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Candidate:
    """What the choice needs to know about one non-cancelled annotation."""

    annotation_id: int | str | None
    ground_truth: bool
    updated_at: datetime | None
    created_at: datetime | None
    label_set: frozenset[str]


@dataclass(frozen=True, slots=True)
class Resolution:
    """The index of the chosen candidate and why it was chosen."""

    index: int
    reason: Reason


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


_Recency = tuple[bool, datetime, bool, datetime, bool, tuple[int, int, str], int]


def _recency(candidates: Sequence[Candidate], index: int) -> _Recency:
    c = candidates[index]
    ident = c.annotation_id
    id_key = (0, ident, "") if isinstance(ident, int) else (1, 0, str(ident or ""))
    return (
        c.updated_at is not None,
        c.updated_at or _EPOCH,
        c.created_at is not None,
        c.created_at or _EPOCH,
        ident is not None,
        id_key,
        index,
    )


def _latest(candidates: Sequence[Candidate], indices: Sequence[int]) -> int:
    return max(indices, key=lambda i: _recency(candidates, i))


def resolve(candidates: Sequence[Candidate], policy: ResolutionPolicy | str) -> Resolution:
    """Chooses one of ``candidates`` (non-empty) under ``policy``."""
    chosen_policy = as_policy(policy)
    if not candidates:
        raise InputError("resolve needs at least one non-cancelled annotation")
    everyone = range(len(candidates))
    if len(candidates) == 1:
        return Resolution(0, "only_annotation")
    if chosen_policy is ResolutionPolicy.LATEST:
        return Resolution(_latest(candidates, everyone), "latest")
    if chosen_policy is ResolutionPolicy.GROUND_TRUTH_MAJORITY_LATEST:
        truth = [i for i in everyone if candidates[i].ground_truth]
        if truth:
            return Resolution(_latest(candidates, truth), "ground_truth")
    groups: dict[frozenset[str], list[int]] = {}
    for i in everyone:
        groups.setdefault(candidates[i].label_set, []).append(i)
    largest = max(len(members) for members in groups.values())
    tied = [i for members in groups.values() if len(members) == largest for i in members]
    reason: Reason = "majority" if len(tied) == largest else "tie_latest"
    return Resolution(_latest(candidates, tied), reason)
