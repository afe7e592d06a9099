"""Building the outside connections of an entry point from the settings, once."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from planner.errors import ConfigError
from planner.settings import Settings
from planner.store import Store, open_existing_store, open_store
from planner.sync import SyncOptions

if TYPE_CHECKING:
    from integrations.label_studio.client import LabelStudioBackend
    from workers.config import BrokerConfig, WorkerConfig, WorkerOwn


def connect(settings: Settings) -> LabelStudioBackend:
    """The Label Studio adapter for ``settings.label_studio`` (token from env or file)."""
    # imported here: the SDK pulls in pandas and friends, which most commands never need
    from integrations.label_studio.client import LabelStudioBackend  # noqa: PLC0415

    section = settings.label_studio
    if section.token is None:
        raise ConfigError(
            "label_studio.token is not set; set PLANNER_LABEL_STUDIO__TOKEN or "
            "label_studio.token_file (a legacy token or a personal access token)"
        )
    return LabelStudioBackend(
        str(section.url), section.token.get_secret_value(), timeout_s=section.timeout_s
    )


def reread_token(settings: Settings) -> str | None:
    """The token in ``label_studio.token_file`` now (a rotated token), None without a file or
    when the token comes from the environment; a daemon calls it after a 401."""
    section = settings.label_studio
    if section.token_file is None or "token" in section.model_fields_set:
        return None
    try:
        return section.token_file.expanduser().read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def open_settings_store(settings: Settings, *, read_only: bool = False) -> Store:
    """The store of ``settings``, migrated; ``read_only``: as it is, nothing created (the
    commands that only read it: ``planner.store.open_existing_store``)."""
    password = settings.store.password
    opener = open_existing_store if read_only else open_store
    return opener(
        settings.store.url, password=None if password is None else password.get_secret_value()
    )


def sync_options(settings: Settings) -> SyncOptions:
    planning = settings.planning
    return SyncOptions(
        split_ratios=dict(planning.split_ratios),
        seed=planning.seed,
        batch_ttl=settings.schedule.batch_ttl,
    )


def worker_config(settings: Settings, classes: tuple[str, ...]) -> WorkerConfig:
    """The workers' view of ``settings`` for a project with ``classes``.

    The secrets are in it for in-process scoring; a task message sent to Celery workers
    leaves them out (``workers.celery_app.config_to_dict``), the workers use their own.
    """
    from workers.config import WorkerConfig  # noqa: PLC0415 - keeps torch out of the daemon

    section, ls = settings.workers, settings.label_studio
    password = settings.store.password
    return WorkerConfig(
        store_url=settings.store.url,
        store_password=None if password is None else password.get_secret_value(),
        classes=classes,
        model=section.model,
        weights=section.weights,
        model_dir=section.model_dir,
        broker_url=section.broker_url,
        label_studio_url=str(ls.url),
        label_studio_token=None if ls.token is None else ls.token.get_secret_value(),
        image_root=section.image_root,
        upload_root=section.upload_root,
        allowed_hosts=tuple(section.allowed_hosts),
        image_size=section.image_size,
        batch_size=section.batch_size,
        chunk_size=section.chunk_size,
        write_rows=section.write_rows,
        num_workers=None if section.num_workers == "auto" else section.num_workers,
        fetches_at_once=section.fetches_at_once,
        mc_passes=section.mc_passes,
        device=section.device,
        precision=section.precision,
        compile=section.compile,
        threads=section.threads,
        bootstrap_dir=bootstrap_dir(settings),
        pixel_cache_dir=pixel_cache_dir(settings),
        pixel_cache_mb=section.pixel_cache_mb,
        retrain_min_new_labels=section.retrain_min_new_labels,
        max_retries=section.max_retries,
        retry_backoff_s=section.retry_backoff_s,
        retry_backoff_max_s=section.retry_backoff_max_s,
        time_limit_s=section.time_limit_s,
        visibility_timeout_s=section.visibility_timeout_s,
    )


def broker_config(settings: Settings, *, default_url: str | None = None) -> BrokerConfig:
    """How a worker process talks to Redis and treats failing chunks (``workers.*``)."""
    from workers.config import DEFAULT_BROKER, BrokerConfig  # noqa: PLC0415

    section = settings.workers
    return BrokerConfig(
        broker_url=section.broker_url or default_url or DEFAULT_BROKER,
        time_limit_s=section.time_limit_s,
        soft_time_limit_s=section.soft_time_limit_s,
        visibility_timeout_s=section.visibility_timeout_s,
        max_retries=section.max_retries,
        retry_backoff_s=section.retry_backoff_s,
        retry_backoff_max_s=section.retry_backoff_max_s,
    )


def worker_own(settings: Settings) -> WorkerOwn:
    """What a worker takes from its own settings: the store password, the Label Studio token,
    where each may be sent, the code a chunk may name as its model, its pixel cache and its
    bootstrap folder."""
    from workers.config import WorkerOwn, is_entry_point  # noqa: PLC0415

    password, token = settings.store.password, settings.label_studio.token
    model = settings.workers.model
    own_model = (model,) if is_entry_point(model) else ()
    return WorkerOwn(
        store_password=None if password is None else password.get_secret_value(),
        label_studio_token=None if token is None else token.get_secret_value(),
        pixel_cache_dir=pixel_cache_dir(settings),
        pixel_cache_mb=settings.workers.pixel_cache_mb,
        bootstrap_dir=bootstrap_dir(settings),
        label_studio_url=str(settings.label_studio.url),
        store_url=settings.store.url,
        entry_points=(*own_model, *settings.workers.entry_points),
    )


def pixel_cache_dir(settings: Settings) -> Path:
    return settings.workers.pixel_cache_dir or settings.artifacts.dir / "pixel-cache"


def bootstrap_dir(settings: Settings) -> Path:
    """Where this process keeps the bootstrap networks, made absolute: a relative path means
    the folder the process was started in (a service's working directory)."""
    folder = settings.workers.bootstrap_dir or settings.artifacts.dir / "bootstrap"
    return folder.expanduser().absolute()
