"""The planner's configuration: a TOML file plus ``PLANNER_*`` environment overrides.

Built once per entry point with :func:`load_settings` and passed down; the core never sees it.
Secrets (API tokens, passwords) are read only from the environment or from a file path named in
the config, never from the TOML file itself, and they never appear in ``repr``, ``str`` or
:meth:`Settings.public_dict`.

Environment overrides use ``PLANNER_`` and ``__`` between levels, e.g.
``PLANNER_PLANNING__BATCH_SIZE=200`` or ``PLANNER_LABEL_STUDIO__TOKEN=...``.

The modules: :mod:`.loading` (``Settings``, its sources, ``load_settings``), :mod:`.sections`
(one model per ``[table]``), :mod:`.workers` (the scoring workers' section and chunk time
limits), :mod:`.secret_keys` (where secrets may come from) and :mod:`.base` (what sections share).
Where a value came from and how a bad one is worded is :mod:`planner.config_sources`.
"""

from planner.config_sources import ENV_PREFIX
from planner.settings.loading import CONFIG_ENV, Settings, load_settings
from planner.settings.secret_keys import SECRET_KEYS
from planner.settings.sections import (
    ArtifactSettings,
    DashboardSettings,
    LabelStudioSettings,
    PlanningSettings,
    QuotaSettings,
    ScheduleSettings,
    StopSettings,
    StoreSettings,
)
from planner.settings.workers import (
    BROKER_SCHEMES,
    COMPILE_MODES,
    PRECISIONS,
    CompileMode,
    Precision,
    WorkerLimitError,
    WorkerSettings,
    worker_time_limits,
)

__all__ = [
    "BROKER_SCHEMES",
    "COMPILE_MODES",
    "CONFIG_ENV",
    "ENV_PREFIX",
    "PRECISIONS",
    "SECRET_KEYS",
    "ArtifactSettings",
    "CompileMode",
    "DashboardSettings",
    "LabelStudioSettings",
    "PlanningSettings",
    "Precision",
    "QuotaSettings",
    "ScheduleSettings",
    "Settings",
    "StopSettings",
    "StoreSettings",
    "WorkerLimitError",
    "WorkerSettings",
    "load_settings",
    "worker_time_limits",
]
