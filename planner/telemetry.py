"""Prometheus metrics of one planner process, in their own registry.

The daemon sets them as it works; the dashboard's ``/metrics`` serves them. A registry per
process (not the library's global one) keeps tests and two daemons in one process apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, generate_latest

from planner.core.stop_policy import StopDecision
from planner.health import STATES, BackendHealth


@dataclass
class Telemetry:
    """The planner's metrics; ``render()`` gives the Prometheus text format."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self._counted: dict[str, set[tuple[str, str]]] = {}
        self.class_count = Gauge(
            "planner_class_count",
            "Labelled count per class and split",
            ["kind", "cls", "split"],
            registry=r,
        )
        self.quota_progress = Gauge(
            "planner_quota_progress", "Share of the class quota reached (0..1)", ["cls"], registry=r
        )
        self.quota_deficit = Gauge(
            "planner_quota_deficit", "Items the class still lacks", ["cls"], registry=r
        )
        self.label_studio_up = Gauge(
            "planner_label_studio_up", "1 when the last Label Studio call succeeded", registry=r
        )
        self.label_studio_state = Enum(
            "planner_label_studio_state",
            "What the daemon last saw of Label Studio (see planner.health)",
            states=list(STATES),
            registry=r,
        )
        self.label_studio_since = Gauge(
            "planner_label_studio_state_since_timestamp_seconds",
            "When Label Studio entered its current state",
            registry=r,
        )
        self.label_studio_failures = Gauge(
            "planner_label_studio_failures", "Label Studio calls failed in a row", registry=r
        )
        self.last_sync = Gauge(
            "planner_last_sync_timestamp_seconds", "End of the last successful sync", registry=r
        )
        self.leader = Gauge("planner_leader", "1 while this daemon leads its project", registry=r)
        self.batches_pushed = Counter(
            "planner_batches_pushed", "Batches pushed to Label Studio", registry=r
        )
        self.tasks_quarantined = Gauge(
            "planner_tasks_quarantined", "Tasks left out for bad data", registry=r
        )
        self.batch_done = Gauge(
            "planner_batch_done_ratio",
            "Share of the active batch labelled (-1: no active batch)",
            registry=r,
        )
        self.stopped = Gauge(
            "planner_stopped", "1 once a stop rule stopped the project", registry=r
        )
        self.stop_rule_fired = Gauge(
            "planner_stop_rule_fired",
            "1 when the stop rule fired at the last evaluation",
            ["rule"],
            registry=r,
        )
        self.errors = Counter(
            "planner_errors", "Errors the daemon survived, by kind", ["kind"], registry=r
        )

    def set_counts(self, kind: str, counts: Mapping[str, Mapping[str, int]]) -> None:
        """``counts``: ``{split: {class: n}}`` as in ``CountTable.as_dict()[kind]``; a class
        or split gone from them (renamed in the label config) leaves the metrics, rather than
        showing its last value for good."""
        now = {(name, split) for split, per_class in counts.items() for name in per_class}
        for name, split in self._counted.get(kind, set()) - now:
            self.class_count.remove(kind, name, split)
        self._counted[kind] = now
        for split, per_class in counts.items():
            for name, value in per_class.items():
                self.class_count.labels(kind=kind, cls=name, split=split).set(value)

    def set_quotas(self, progress: Mapping[str, float], deficit: Mapping[str, int]) -> None:
        """Every quota's progress and deficit; those of quotas no longer given go."""
        self.quota_progress.clear()
        self.quota_deficit.clear()
        for name, value in progress.items():
            self.quota_progress.labels(cls=name).set(value)
        for name, value in deficit.items():
            self.quota_deficit.labels(cls=name).set(value)

    def set_stop(self, decision: StopDecision) -> None:
        """Each evaluated rule's verdict (a per-class rule fired when any class's did)."""
        fired: dict[str, bool] = {}
        for event in decision.events:
            fired[event.rule] = fired.get(event.rule, False) or event.fired
        for rule, value in fired.items():
            self.stop_rule_fired.labels(rule=rule).set(1 if value else 0)

    def synced(self, at: datetime) -> None:
        self.last_sync.set(at.timestamp())
        self.label_studio_up.set(1)

    def failed(self, kind: str) -> None:
        self.errors.labels(kind=kind).inc()
        if kind == "label_studio":
            self.label_studio_up.set(0)

    def set_backend(self, health: BackendHealth) -> None:
        """The Label Studio state of ``planner.health``."""
        self.label_studio_state.state(health.state)
        self.label_studio_up.set(1 if health.state == "ok" else 0)
        self.label_studio_failures.set(health.failures)
        if health.since is not None:
            self.label_studio_since.set(health.since.timestamp())

    def render(self) -> bytes:
        return generate_latest(self.registry)
