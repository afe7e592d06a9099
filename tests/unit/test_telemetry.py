"""The planner's metrics: what a scrape shows after the classes change."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from planner.telemetry import Telemetry


def _series(telemetry: Telemetry, metric: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(telemetry.render().decode())
        for s in family.samples
        if s.name == metric
    }


def test_a_class_gone_from_the_label_config_leaves_the_metrics() -> None:
    telemetry = Telemetry()
    telemetry.set_counts("images", {"train": {"car": 5, "wheelchair": 1}})
    telemetry.set_quotas({"car": 1.0, "wheelchair": 0.1}, {"car": 0, "wheelchair": 9})
    # wheelchair renamed to "wheelchair user"
    telemetry.set_counts("images", {"train": {"car": 6, "wheelchair user": 2}})
    telemetry.set_quotas({"car": 1.0, "wheelchair user": 0.2}, {"car": 0, "wheelchair user": 8})
    counts = _series(telemetry, "planner_class_count")
    assert {dict(k)["cls"]: v for k, v in counts.items()} == {"car": 6, "wheelchair user": 2}
    deficits = _series(telemetry, "planner_quota_deficit")
    assert {dict(k)["cls"] for k in deficits} == {"car", "wheelchair user"}
