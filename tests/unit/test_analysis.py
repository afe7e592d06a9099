"""`analyze`, `planner analyze` and the offline `planner demo` on the bundled example project."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from planner.analysis import AnalysisOptions, analyze
from planner.cli import EXAMPLE_CONFIG, app
from planner.core.quotas import Quota
from planner.demo_offline import run_offline_demo
from planner.examples.traffic import CLASSES, make_example
from planner.settings import load_settings

runner = CliRunner()


@pytest.fixture(scope="module")
def example() -> Any:
    return make_example(labelled=600, pool=2000, seed=3)


def _expected_labels(tasks: list[dict[str, Any]]) -> Counter[str]:
    """Counts by an independent reading of the generator's rules: ground truth, then majority,
    then latest; skipped and unreadable annotations count nothing."""
    found: Counter[str] = Counter()
    for task in tasks:
        live = [a for a in task["annotations"] if not a["was_cancelled"]]
        readable = [a for a in live if all("value" in r for r in a["result"]) and a["result"]]
        if not readable:
            continue
        truth = [a for a in readable if a.get("ground_truth")]
        votes = Counter(a["result"][0]["value"]["choices"][0] for a in truth or readable)
        label, top = votes.most_common(1)[0]
        if list(votes.values()).count(top) > 1:
            label = max(readable, key=lambda a: a["updated_at"])["result"][0]["value"]["choices"][0]
        found["unknown" if label not in CLASSES else label] += 1
    return found


def test_counts_equal_an_independent_reading_of_the_export(example: Any) -> None:
    result = analyze(example.tasks, example.label_config, [])
    expected = _expected_labels(example.tasks)
    table = result.counts.table
    got = dict(zip(table.classes, table.totals("images").tolist(), strict=True))
    assert {k: v for k, v in got.items() if v} == dict(expected)
    assert result.counts.unknown_summary() == {"road_user": {"Scooter": 1}}
    assert {p.task_id for p in result.counts.problems} == {24}


def test_splits_follow_the_ratios_and_keep_existing_assignments(example: Any) -> None:
    tasks = [dict(t) for t in example.tasks]
    tasks[2] = {**tasks[2], "meta": {"split": "test"}}
    tasks[3] = {**tasks[3], "data": {**tasks[3]["data"], "split": "val"}}
    result = analyze(tasks, example.label_config, [], AnalysisOptions(seed=5))
    labelled = result.counts.labelled
    total = sum(labelled.values())
    assert labelled["train"] / total == pytest.approx(0.8, abs=0.02)
    assert labelled["val"] / total == pytest.approx(0.1, abs=0.02)
    assert result.splits[3] == "test"
    assert result.splits[4] == "val"
    again = analyze(tasks, example.label_config, [], AnalysisOptions(seed=5))
    assert again.splits == result.splits


def test_unknown_bucket_stays_out_of_weights_metrics_and_plans(example: Any) -> None:
    result = analyze(
        example.tasks, example.label_config, [], AnalysisOptions(strata_fields=("time",))
    )
    assert "unknown" in result.counts.table.classes
    assert list(result.weights["classes"]) == list(CLASSES)
    assert list(result.resampling["classes"]) == list(CLASSES)
    assert result.strata is not None
    assert result.strata.classes == CLASSES
    counts = result.counts.table.without("unknown").totals("images")
    assert result.imbalance.overall.imbalance_ratio == pytest.approx(counts.max() / counts.min())


def test_hidden_imbalance_of_wheelchairs_at_night_is_flagged(example: Any) -> None:
    result = analyze(
        example.tasks, example.label_config, [], AnalysisOptions(strata_fields=("time",))
    )
    assert result.strata is not None
    flagged = {(f.class_name, f.stratum) for f in result.strata.flags}
    assert ("Wheelchair", "night") in flagged
    assert ("Car", "night") not in flagged


def test_quota_for_a_class_the_config_lacks_is_refused(example: Any) -> None:
    with pytest.raises(ValueError, match="Scooter"):
        analyze(example.tasks, example.label_config, [Quota("Scooter", target=5)])


def test_offline_demo_targets_the_short_classes() -> None:
    settings = load_settings(EXAMPLE_CONFIG, environ=False)
    demo = run_offline_demo(settings)
    batch = demo.batch
    assert len(batch.picks) == settings.planning.batch_size
    assert len(set(batch.ids)) == len(batch.ids)
    labelled_ids = {t["id"] for t in demo.example.tasks}
    assert labelled_ids.isdisjoint(batch.ids)
    truth = demo.batch_truth()
    share = demo.pool_share()
    # Wheelchair is 3% of the pool and the class furthest from its quota.
    assert truth["Wheelchair"] / len(batch.picks) > 5 * share["Wheelchair"]
    assert batch.count("exploration") >= 1
    quota = next(e for e in demo.stop if e.rule == "quota")
    assert not quota.fired
    assert demo.as_dict()["batch"]["selected"] == len(batch.picks)


def test_demo_command_prints_tables_and_json() -> None:
    result = runner.invoke(app, ["demo", "--offline"])
    assert result.exit_code == 0, result.output
    for text in ("Quotas", "Next batch", "likely rare class Wheelchair", "hidden imbalance"):
        assert text in result.output
    data = json.loads(runner.invoke(app, ["demo", "--offline", "--json"]).stdout)
    assert data["analysis"]["quotas"]["all_met"] is False
    assert sum(data["batch_truth"].values()) == data["batch"]["selected"]


def test_the_live_demo_refuses_a_config_it_would_not_read(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("", encoding="utf-8")
    # were the config let through, the demo would stop at once: no folder can be made here
    workdir = blocker / "demo"
    args = ["demo", "-c", str(EXAMPLE_CONFIG), "--workdir", str(workdir)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "is for `planner demo --offline`; the live demo writes its own config" in result.output


def test_the_offline_demo_refuses_live_options_it_would_ignore() -> None:
    args = ["demo", "--offline", "--batch-size", "5", "--port", "9"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "--port, --batch-size only apply to the live demo" in result.output
    assert "Next batch" not in result.output  # nothing run with the wrong sizes


def test_analyze_command_reads_an_export(tmp_path: Path, example: Any) -> None:
    export = tmp_path / "export.json"
    export.write_text(json.dumps(example.tasks), encoding="utf-8")
    config = tmp_path / "config.xml"
    config.write_text(example.label_config, encoding="utf-8")
    args = ["analyze", str(export), "--label-config", str(config), "-c", str(EXAMPLE_CONFIG)]
    data = json.loads(runner.invoke(app, [*args, "--strata", "time,camera", "--json"]).stdout)
    assert (
        data["counts"]["images"]["total"]["Wheelchair"]
        == _expected_labels(example.tasks)["Wheelchair"]
    )
    assert set(data["strata"]["fields"]) == {"time", "camera"}
    assert data["quotas"]["classes"]["Wheelchair"]["target"] == 150
    table = runner.invoke(app, args)
    assert table.exit_code == 0, table.output
    assert "Wheelchair" in table.output


def test_analyze_names_every_quota_the_config_lacks_at_once(
    tmp_path: Path, example: Any, no_planner_env: None
) -> None:
    export = tmp_path / "export.json"
    export.write_text(json.dumps(example.tasks), encoding="utf-8")
    label_config = tmp_path / "config.xml"
    label_config.write_text(example.label_config, encoding="utf-8")
    config = tmp_path / "planner.toml"
    config.write_text(
        "[quotas.Car]\ntarget = 10\n[quotas.car]\ntarget = 10\n[quotas.Wheelchar]\ntarget = 5\n",
        encoding="utf-8",
    )
    args = ["analyze", str(export), "--label-config", str(label_config), "-c", str(config)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "quotas ['car', 'Wheelchar'] name classes the label schema does not define" in (
        result.output
    )
    assert "('car' is 'Car' spelled in another case)" in result.output


@pytest.mark.parametrize(
    ("content", "message"),
    [("{not json", "is not JSON"), ('{"id": 1}', "expected a list of tasks")],
)
def test_analyze_rejects_a_bad_export_clearly(tmp_path: Path, content: str, message: str) -> None:
    export = tmp_path / "export.json"
    export.write_text(content, encoding="utf-8")
    config = tmp_path / "config.xml"
    config.write_text(make_example(labelled=5, pool=5).label_config, encoding="utf-8")
    result = runner.invoke(app, ["analyze", str(export), "--label-config", str(config)])
    assert result.exit_code == 2
    assert message in result.output
    missing = runner.invoke(
        app, ["analyze", str(tmp_path / "nope.json"), "--label-config", str(config)]
    )
    assert missing.exit_code == 2
    assert "cannot read export" in missing.output
