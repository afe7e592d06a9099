"""The effectiveness benchmark's quick mode: output structure, and the planner meets quotas."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sklearn")

from bench.effectiveness.__main__ import results
from bench.effectiveness.datasets import digits, shapes
from bench.effectiveness.models import fit
from bench.effectiveness.simulate import Run, Settings, run
from bench.effectiveness.strategies import Context, planner

TINY = Settings(batch_size=10, initial=10, cap=200, budgets=(60,), curve_every=30)


@pytest.mark.slow
def test_planner_meets_quotas_on_a_small_detection_set() -> None:
    data = shapes(seed=0, n_pool=400, n_test=120, quota=3)
    planner = run(data, "planner", seed=0, settings=TINY)
    rand = run(data, "random", seed=0, settings=TINY)
    assert planner.labels_needed is not None
    assert rand.labels_needed is not None
    assert planner.labels_needed < rand.labels_needed
    assert set(planner.at_budget) == {60}
    assert set(planner.at_budget[60]) == {"macro_f1", "recall", "rare_pr_auc"}
    assert len(planner.at_budget[60]["recall"]) == len(data.classes)
    assert planner.quota_curve[-1][1] == 1.0
    assert planner.select_seconds

    text, summary = results({"shapes": [planner, rand]}, TINY, img=None)
    assert "| **planner** |" in text
    assert "| random |" in text
    assert summary["shapes"]["summary"]["planner"]["runs"] == 1
    assert set(summary["shapes"]["targets"]) >= {"vs_random", "vs_best", "f1_ok"}


def test_a_planner_only_run_has_a_table_but_no_target_line() -> None:
    at = {"macro_f1": 0.5, "recall": [0.5, 0.5], "rare_pr_auc": 0.4}
    planner = Run("planner", 0, 80, f1_curve=[(60, 0.5)], at_budget={60: at})
    planner.yields, planner.select_seconds = [0.5], [0.01]
    text, summary = results({"digits-10": [planner]}, TINY, img=None)
    assert "| **planner** | 80 ± 0 |" in text
    assert "Planner vs random" not in text
    assert summary["digits-10"]["targets"] is None


def test_strategies_option_limits_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.effectiveness import __main__ as cli

    seen: list[tuple[str, ...]] = []

    def fake(sets: list[str], seeds: int, strategies: tuple[str, ...], *_: object) -> dict:
        seen.append(strategies)
        return {name: [] for name in sets}

    monkeypatch.setattr(cli, "benchmark", fake)
    monkeypatch.setattr(cli, "results", lambda *_: ("", {}))
    assert cli.main(["--sets", "digits-10", "--strategies", "planner", "random"]) == 0
    assert seen == [("planner", "random")]


def test_planner_options_reach_the_planner_and_bad_ones_are_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from bench.effectiveness import __main__ as cli

    assert cli.planner_options('{"vote_neighbours": 0, "shortfall_factor": 1}') == (
        ("shortfall_factor", 1),
        ("vote_neighbours", 0),
    )
    for bad, why in [
        ("[1]", "JSON object"),
        ('{"no_such": 1}', "not a PlanOptions field"),
        ('{"batch_size": 5}', "set by the run"),
        ('{"shortfall_factor": 0.5}', "shortfall_factor must be >= 1"),
        ("{", "not JSON"),
    ]:
        with pytest.raises(SystemExit):
            cli.main(["--planner-options", bad])
        assert why in capsys.readouterr().err
    # the options change the planner's picks: discovery as by default, or none
    data = digits(10, seed=0)
    labelled = np.zeros(data.y_pool.shape[0], bool)
    labelled[:40] = True
    fitted = fit(data, np.flatnonzero(labelled), seed=0)

    def batch(options: dict[str, object]) -> set[int]:
        ctx = Context(data, fitted, labelled, 20, np.random.default_rng(0), options)
        return set(planner(ctx).tolist())

    assert batch({"discovery_share": 0.0, "discovery_known_share": 0.0}) != batch({})
