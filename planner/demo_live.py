"""``planner demo``: the daemon's real cycles against a local Label Studio, start to finish.

From nothing it installs (once per machine) and starts a local Label Studio, writes long-tailed
digit images (``planner.examples.digits``) into its document root, creates a project over them
with a Local storage, writes a ``planner.toml`` with quotas on the rare digits, and then runs
what ``planner run`` runs (``build_daemon``, ``ProjectDaemon.cycle``: sync, stop rules, scoring
in a child process, selection, push) with SQLite and in-process scoring. A simulated annotator
labels through Label Studio's API with the true digit: a first handful at random before any
model exists, then each pushed batch. The loop ends when a stop
rule fires (the daemon emits the weights and the resampling plan then) or after
``max_cycles``; in that case the last batch is left unlabelled for a person to look at and the
artifacts are emitted on demand. The daily report is written last.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlmodel import select

from integrations.label_studio import launcher
from integrations.label_studio.workbench import LabelStudioWorkbench
from planner.artifacts import EmitReason
from planner.daemon.run import build_daemon, keep_lease, make_lease
from planner.daemon.service import ProjectDaemon
from planner.demo_driver import label_tasks
from planner.examples.digits import (
    LABEL_CONFIG,
    DigitImages,
    long_tail_counts,
    write_digit_images,
)
from planner.outputs import emit_artifacts, emit_options, project_row
from planner.settings import Settings, load_settings
from planner.store import Store, open_store
from planner.store.batches import items_of
from planner.store.models import Batch
from planner.store.tasks import count_table, labelled_ids

MAX_FAILURES = 2
"""Cycles in a row that push nothing (and did not stop) before the demo gives up."""
RARE = ("7", "8", "9")
START_TIMEOUT_S = 900.0
"""A first start on a busy two-CPU machine took over four minutes (migrations)."""
QUOTA_SHARE = 0.4
"""Each rare digit's quota: this share of what the pool holds of it, so it can be met."""


def default_quotas(head: int, ratio: float) -> dict[str, int]:
    """Quotas on the three rarest digits: 6, 5 and 4 images with the default sizes."""
    pool = long_tail_counts(head, ratio)
    return {name: max(1, round(QUOTA_SHARE * pool[int(name)])) for name in RARE}


@dataclass(frozen=True, slots=True)
class LiveDemoOptions:
    """Sizes of the demo; the defaults finish in a few minutes on two CPUs."""

    workdir: Path = Path("var/demo")
    port: int = launcher.DEFAULT_PORT
    head: int = 80
    """Images of the commonest digit (0); digit 9 gets ``head / ratio``."""
    ratio: float = 8.0
    batch_size: int = 25
    first_labels: int = 30
    """Tasks the annotator labels before the first cycle (a model needs some to learn from)."""
    max_cycles: int = 8
    quotas: Mapping[str, int] | None = None
    """Target per digit; None: ``default_quotas(head, ratio)``."""
    seed: int = 0

    def targets(self) -> dict[str, int]:
        return dict(self.quotas) if self.quotas else default_quotas(self.head, self.ratio)


@dataclass(frozen=True, slots=True)
class CycleRow:
    """One cycle as the display shows it."""

    number: int
    batch: str | None
    why: str
    labelled_before: int
    """Labelled tasks in the store after the cycle's sync (before this batch is labelled)."""
    quota_counts: Mapping[str, int]
    """Each quota class's count in the store after the cycle's sync."""
    batch_size: int
    rare_found: Mapping[str, int]
    """How many of the batch's images truly show each quota class."""
    annotated: int
    """Tasks the annotator labelled after this cycle (0 for the batch left for a person)."""
    seconds: float


@dataclass(frozen=True, slots=True)
class LiveDemoResult:
    """Where to look afterwards."""

    label_studio_url: str
    project_id: int
    next_batch_url: str | None
    next_batch_tasks: tuple[int, ...]
    next_batch_labelled: bool
    config: Path
    report: Path | None
    artifact: Path | None
    artifact_reason: str
    stopped: bool
    stop_reason: str
    pool: Mapping[str, int]
    quotas: Mapping[str, int]
    final_counts: Mapping[str, int]
    labelled: int
    cycles: tuple[CycleRow, ...]
    data_dir: Path

    def as_dict(self) -> dict[str, object]:
        return {
            "label_studio_url": self.label_studio_url,
            "project_id": self.project_id,
            "next_batch_url": self.next_batch_url,
            "next_batch_tasks": list(self.next_batch_tasks),
            "next_batch_labelled": self.next_batch_labelled,
            "config": str(self.config),
            "report": None if self.report is None else str(self.report),
            "artifact": None if self.artifact is None else str(self.artifact),
            "artifact_reason": self.artifact_reason,
            "stopped": self.stopped,
            "stop_reason": self.stop_reason,
            "pool": dict(self.pool),
            "quotas": dict(self.quotas),
            "final_counts": dict(self.final_counts),
            "labelled": self.labelled,
            "cycles": [
                {
                    "number": c.number,
                    "batch": c.batch,
                    "why": c.why,
                    "labelled_before": c.labelled_before,
                    "quota_counts": dict(c.quota_counts),
                    "batch_size": c.batch_size,
                    "rare_found": dict(c.rare_found),
                    "annotated": c.annotated,
                    "seconds": round(c.seconds, 1),
                }
                for c in self.cycles
            ],
            "label_studio_data": str(self.data_dir),
        }


Step = Callable[[str], None]
"""Told what the demo is doing now (one short line)."""
OnCycle = Callable[[CycleRow], None]


def run_live_demo(
    options: LiveDemoOptions,
    *,
    step: Step = lambda _: None,
    on_cycle: OnCycle = lambda _: None,
) -> LiveDemoResult:
    """Run the demo; the Label Studio it started keeps running for a person to look at."""
    workdir = options.workdir.resolve()
    data_dir, document_root = workdir / "label-studio", workdir / "images"
    if not launcher.installed():
        step(f"installing Label Studio {launcher.VERSION} (once per machine, ~2.5 min)")
        launcher.install()
    step("starting Label Studio (its first start migrates a database: a minute or more)")
    server = launcher.start(
        data_dir, document_root=document_root, port=options.port, timeout_s=START_TIMEOUT_S
    )
    run = uuid.uuid4().hex[:8]
    step("writing long-tailed digit images")
    images = write_digit_images(
        document_root / f"digits-{run}", head=options.head, ratio=options.ratio, seed=options.seed
    )
    bench = LabelStudioWorkbench(server.url, server.token)
    with bench:
        step("creating the Label Studio project")
        pid = bench.create_project(f"Planner demo: long-tailed digits ({run})", LABEL_CONFIG)
        bench.connect_local_storage(pid, str(images.folder))
        ids = bench.import_tasks(pid, images.tasks(document_root))
        truth = dict(zip(ids, images.digits, strict=True))
        folder = workdir / f"project-{pid}"
        config = write_config(folder, server, pid, options)
        settings = load_settings(config, environ=False)
        step(f"labelling {options.first_labels} tasks at random before the first cycle")
        label_tasks(bench, ids[: options.first_labels], truth)  # the images are shuffled
        with open_store(settings.store.url) as store:
            name = f"project-{pid}"
            lease = make_lease(settings, store, name)
            daemon = build_daemon(settings, backend=bench, store=store, lease=lease)
            with keep_lease(lease):
                cycles = _cycles(daemon, store, bench, truth, options, step, on_cycle)
            return _finish(daemon, store, settings, options, server, images, cycles, config, step)


def write_config(
    folder: Path, server: launcher.ServerState, pid: int, options: LiveDemoOptions
) -> Path:
    """The demo project's ``planner.toml`` (the token in a file beside it), for the CLI too."""
    folder.mkdir(parents=True, exist_ok=True)
    token = folder / "label-studio.token"
    token.write_text(server.token, encoding="utf-8")
    token.chmod(0o600)
    quotas = "".join(
        f'[quotas."{name}"]\ntarget = {target}\ncriticality = 2.0\n'
        for name, target in options.targets().items()
    )
    config = folder / "planner.toml"
    config.write_text(
        f"""# Written by `planner demo`: the live demo's project; try `planner status -c {config}`.
[label_studio]
url = "{server.url}"
project_id = {pid}
token_file = "{token}"

[store]
url = "sqlite:///{folder / "planner.db"}"

[planning]
batch_size = {options.batch_size}
seed = {options.seed}

{quotas}
[workers]
image_root = "{server.document_root}"
num_workers = 0
# retrain the bootstrap network on every batch: the demo's batches are small
retrain_min_new_labels = {options.batch_size}

[dashboard]
reports_dir = "{folder / "reports"}"
metrics_port = 0

[artifacts]
dir = "{folder / "artifacts"}"
""",
        encoding="utf-8",
    )
    return config


def _cycles(  # noqa: PLR0917 - the demo's loop needs all of them
    daemon: ProjectDaemon,
    store: Store,
    bench: LabelStudioWorkbench,
    truth: Mapping[int, int],
    options: LiveDemoOptions,
    step: Step,
    on_cycle: OnCycle,
) -> list[CycleRow]:
    rows: list[CycleRow] = []
    failures = 0
    for number in range(1, options.max_cycles + 1):
        step(f"cycle {number}: sync, stop rules, scoring, selection, push")
        started = time.monotonic()
        outcome = daemon.cycle()
        labelled, quota_counts = _store_counts(
            store, daemon.ls_project_id, options.targets(), tuple(daemon.sync_options.split_ratios)
        )
        tasks = _batch_tasks(store, outcome.pushed) if outcome.pushed else []
        rare = {q: sum(1 for t in tasks if str(truth[t]) == q) for q in options.targets()}
        annotated = 0
        last = number == options.max_cycles
        if tasks and not last:  # the last batch is left for a person to look at
            step(f"cycle {number}: the annotator labels batch {outcome.pushed}")
            annotated = label_tasks(bench, tasks, truth)
        row = CycleRow(
            number,
            outcome.pushed,
            outcome.why,
            labelled,
            quota_counts,
            len(tasks),
            rare,
            annotated,
            time.monotonic() - started,
        )
        rows.append(row)
        on_cycle(row)
        if outcome.pushed is None and (daemon.stopped or "no unlabelled" in outcome.why):
            break
        failures = 0 if outcome.pushed else failures + 1
        if failures >= MAX_FAILURES:
            break  # the rows show why; the next `planner cycle --once` tries again
    return rows


def _finish(  # noqa: PLR0917
    daemon: ProjectDaemon,
    store: Store,
    settings: Settings,
    options: LiveDemoOptions,
    server: launcher.ServerState,
    images: DigitImages,
    cycles: Sequence[CycleRow],
    config: Path,
    step: Step,
) -> LiveDemoResult:
    pid = daemon.ls_project_id
    stopped = daemon.stopped
    decision = daemon.last_decision
    artifact, why = _artifact(store, pid, settings, stopped, decision.reason if decision else "")
    step("writing the daily report")
    report = daemon.report()
    splits = tuple(settings.planning.split_ratios)
    labelled, final = _store_counts(store, pid, options.targets(), splits)
    view_id, tasks = _last_batch(store, pid)
    last_labelled = bool(cycles) and cycles[-1].annotated > 0
    url = None if view_id is None else f"{server.url}/projects/{pid}/data?tab={view_id}"
    return LiveDemoResult(
        label_studio_url=server.url,
        project_id=pid,
        next_batch_url=url,
        next_batch_tasks=tuple(tasks),
        next_batch_labelled=stopped or last_labelled,
        config=config,
        report=None if report is None else report / "report.html",
        artifact=artifact,
        artifact_reason=why,
        stopped=stopped,
        stop_reason=decision.reason if decision and stopped else "",
        pool=images.counts(),
        quotas=dict(options.targets()),
        final_counts=final,
        labelled=labelled,
        cycles=tuple(cycles),
        data_dir=Path(server.data_dir),
    )


def _artifact(
    store: Store, pid: int, settings: Settings, stopped: bool, reason: str
) -> tuple[Path | None, str]:
    """The artifact the daemon emitted when the stop rule fired; else one emitted now."""
    folder = settings.artifacts.dir
    latest = folder / "LATEST"
    if stopped and latest.is_file():
        return folder / latest.read_text(
            encoding="utf-8"
        ).strip(), f"stop rule that fired: {reason}"
    written = emit_artifacts(
        store,
        pid,
        emit_options(settings),
        splits=tuple(settings.planning.split_ratios),
        reason=EmitReason("on_demand", "the demo's last cycle; the quotas are not met yet"),
        now=datetime.now(UTC),
    )
    return written.path, "demo on demand: it ran out of cycles before the quotas were met"


def _store_counts(
    store: Store, ls_project_id: int, quotas: Mapping[str, int], splits: Sequence[str]
) -> tuple[int, dict[str, int]]:
    """Labelled tasks and each quota class's total count, as the store has them."""
    with store.session() as session:
        project = project_row(session, ls_project_id)
        table = count_table(session, int(project.id or 0), tuple(project.classes), tuple(splits))
        totals = dict(zip(table.classes, (int(n) for n in table.totals("images")), strict=True))
        labelled = len(labelled_ids(session, int(project.id or 0)))
    return labelled, {name: totals.get(name, 0) for name in quotas}


def _batch_tasks(store: Store, tag: str | None) -> list[int]:
    with store.session() as session:
        batch = session.exec(select(Batch).where(Batch.tag == tag)).first()
        return (
            [] if batch is None else [i.ls_task_id for i in items_of(session, int(batch.id or 0))]
        )


def _last_batch(store: Store, ls_project_id: int) -> tuple[int | None, list[int]]:
    """The view id and tasks of the newest pushed batch (what the Next batch tab holds)."""
    with store.session() as session:
        pid = int(project_row(session, ls_project_id).id or 0)
        query = select(Batch).where(Batch.project_id == pid, Batch.view_id.is_not(None))  # type: ignore[union-attr]
        newest = max(session.exec(query).all(), key=lambda b: b.number, default=None)
        if newest is None:
            return None, []
        return newest.view_id, [i.ls_task_id for i in items_of(session, int(newest.id or 0))]
