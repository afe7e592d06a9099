"""Settings turned into the small frozen parameter objects the core takes.

The core never sees the settings (STYLE 8); every entry point builds its parameters here once.
"""

from __future__ import annotations

from planner.analysis import AnalysisOptions
from planner.core.quotas import Quota
from planner.settings import Settings


def quotas_from_settings(settings: Settings) -> tuple[Quota, ...]:
    """One core ``Quota`` per ``[quotas.<Class>]`` section, counting ``planning.count_kind``."""
    return tuple(
        Quota(
            class_name=name,
            target=section.target,
            split_targets=dict(section.splits),
            per_cycle_min=section.min_per_cycle,
            criticality=section.criticality,
            kind=settings.planning.count_kind,
        )
        for name, section in settings.quotas.items()
    )


def analysis_options(
    settings: Settings, *, strata_fields: tuple[str, ...] | None = None, seed: int | None = None
) -> AnalysisOptions:
    """The ``analyze`` options of ``settings.planning``; arguments override the settings."""
    planning = settings.planning
    return AnalysisOptions(
        count_kind=planning.count_kind,
        split_ratios=dict(planning.split_ratios),
        strata_fields=tuple(planning.strata_fields) if strata_fields is None else strata_fields,
        weight_scheme=planning.weight_scheme,
        max_oversample=planning.max_oversample,
        hierarchy=dict(planning.hierarchy),
        merge_min_count=planning.merge_min_count,
        seed=planning.seed if seed is None else seed,
    )
