"""The offline demo: the whole planning core on the bundled traffic project, no server needed.

It counts the generated Label Studio export, measures imbalance and hidden imbalance, compares
the counts with the quotas of the bundled ``planner.toml``, selects the next batch from the
unlabeled pool and derives the weights and resampling plan a training job would get.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from planner.analysis import Analysis, analyze
from planner.core.acquisition import entropy
from planner.core.quota_cycle import cycle_plan
from planner.core.select_result import Batch
from planner.core.selection import SelectionOptions, select_batch
from planner.core.stop_rules import StopEvent, quota_met
from planner.examples.traffic import ExampleProject, make_example
from planner.params import analysis_options, quotas_from_settings
from planner.settings import Settings


@dataclass(frozen=True, slots=True)
class OfflineDemo:
    """What the demo found and chose."""

    example: ExampleProject
    analysis: Analysis
    batch: Batch
    stop: tuple[StopEvent, ...]

    def batch_truth(self) -> dict[str, int]:
        """How many of the batch's images truly hold each class (the example knows)."""
        position = {int(i): k for k, i in enumerate(self.example.pool_ids)}
        truth = [self.example.pool_true[position[int(i)]] for i in self.batch.ids]
        found = np.bincount(np.asarray(truth, dtype=np.int64), minlength=len(self.example.classes))
        return {name: int(n) for name, n in zip(self.example.classes, found, strict=True)}

    def pool_share(self) -> dict[str, float]:
        """Each class's share of the unlabeled pool, for comparison with the batch."""
        found = np.bincount(self.example.pool_true, minlength=len(self.example.classes))
        share = found / max(1, int(found.sum()))
        return {name: float(s) for name, s in zip(self.example.classes, share, strict=True)}

    def as_dict(self) -> dict[str, Any]:
        return {
            "analysis": self.analysis.as_dict(),
            "batch": self.batch.as_dict(),
            "batch_truth": self.batch_truth(),
            "pool_share": self.pool_share(),
            "stop": [event.as_dict() for event in self.stop],
        }


def run_offline_demo(settings: Settings, *, seed: int | None = None) -> OfflineDemo:
    """Run the core end to end on the example project with ``settings``' planning and quotas."""
    planning = settings.planning
    chosen_seed = planning.seed if seed is None else seed
    example = make_example(seed=chosen_seed)
    quotas = quotas_from_settings(settings)
    options = analysis_options(settings, seed=chosen_seed)
    if not options.strata_fields:
        options = replace(options, strata_fields=("time", "camera"))
    analysis = analyze(example.tasks, example.label_config, quotas, options)
    status = analysis.quotas
    plan = cycle_plan(status, batch_size=planning.batch_size)
    by_class = {s.class_name: s for s in status.statuses}
    slots = dict(zip(plan.classes, plan.slots.tolist(), strict=True))
    classes = example.classes
    batch = select_batch(
        example.pool_ids,
        entropy(example.pool_probs),
        example.pool_probs,
        [by_class[c].deficit if c in by_class else 0 for c in classes],
        batch_size=planning.batch_size,
        rng=np.random.default_rng(chosen_seed),
        embeddings=example.pool_embeddings,
        min_slots=[slots.get(c, 0) for c in classes],
        class_weights=[by_class[c].quota.criticality if c in by_class else 1.0 for c in classes],
        classes=classes,
        options=SelectionOptions(
            exploration_share=planning.exploration_share,
            hard_negative_share=planning.hard_negative_share,
            balance_lambda=planning.balance_lambda,
            diversity=planning.diversity,
        ),
    )
    stop = quota_met(deficits={s.class_name: s.deficit for s in status.statuses})
    return OfflineDemo(example=example, analysis=analysis, batch=batch, stop=stop)
