"""Scoring one chunk of the pool into the store: the plain function every task calls.

Safe to run twice: items already scored for the current model version are skipped, and the
store ignores rows it already has, so a redelivered chunk writes no duplicates. Each forward
batch is written as soon as it is scored, so a chunk cut short (a killed worker, a soft time
limit) leaves its finished batches stored and its next delivery scores only the rest.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from sqlmodel import select

from planner.errors import ConfigError, TransientError
from planner.model_versions import scored_version
from planner.store import Store, open_existing_store
from planner.store.models import Task
from planner.store.scores import unscored, write_scores
from workers.batches import read_pixels
from workers.bootstrap import (
    Trained,
    latest_saved,
    load_saved,
    needs_training,
    save_bootstrap,
    saved_labelled,
    train_bootstrap,
)
from workers.compiling import Compiler
from workers.config import WorkerConfig
from workers.decoders import Decoders, keep_heap
from workers.dropout import mc_problem
from workers.images import ImageSource
from workers.inference import Scores, iter_scores, merge
from workers.models import ScoringModel, choose_model, load_model
from workers.pixels import PixelCache
from workers.references import through_label_studio

log = logging.getLogger("planner.workers")

WRITE_S = 10.0
"""A chunk writes the scores it holds once ``workers.write_rows`` have come, or once this many
seconds have passed since its last write, so a worker that dies loses little of a slow
model's work (what was written is not scored again). A transaction a batch of 64 cost the
scoring process as much CPU again as the rows' own writing (docs/benchmarks.md, *Scoring a
pool by chunks*)."""


@dataclass(frozen=True, slots=True)
class ChunkResult:
    """What one run of a chunk did.

    ``scored``: rows this run computed and sent to the store; ``written``: rows the store
    inserted (fewer only when another run wrote the same item first); ``redelivered``: the
    broker handed this chunk out again after its worker was lost; ``retries``: earlier
    attempts of this chunk; ``warnings``: what the run could not do (no BALD, skipped files).
    """

    model_version: str
    scored: int
    unscorable: int
    skipped: int
    deferred: int = 0
    written: int = 0
    redelivered: bool = False
    retries: int = 0
    batch_size: int = 0
    warnings: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        data: dict[str, object] = {f.name: getattr(self, f.name) for f in fields(self)}
        data["warnings"] = list(self.warnings)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> ChunkResult:
        values = dict(data)
        values["warnings"] = tuple(str(w) for w in values.get("warnings") or ())  # type: ignore[attr-defined]
        return cls(**values)  # type: ignore[arg-type]


class ChunkDeferredError(TransientError):
    """Some images of a chunk could not be fetched for now; the rest were written."""

    def __init__(self, message: str, *, scored: int, unscorable: int) -> None:
        super().__init__(message)
        self.scored = scored
        self.unscorable = unscorable


@dataclass
class Resources:
    """What a worker process keeps between chunks: open stores, each project's current model
    (an older version is let go once a newer one is in use, see :meth:`use`) and what was
    compiled of it, the pixel cache and the decode processes.

    Owned by the Celery app (or by one embedded ``score_pool`` call), never a module global.
    """

    stores: dict[tuple[str, str | None], Store] = field(default_factory=dict)
    models: dict[tuple[object, ...], ScoringModel] = field(default_factory=dict)
    current: dict[tuple[str, int], tuple[object, ...] | None] = field(default_factory=dict)
    """Each project's (store, project id) model now: its key in ``models``, None for its
    bootstrap network."""
    bootstraps: dict[int, Trained] = field(default_factory=dict)
    unsaved: dict[int, str] = field(default_factory=dict)
    """Why a project's bootstrap network is kept in memory only (its folder failed)."""
    caches: dict[tuple[Path, int], PixelCache] = field(default_factory=dict)
    decoders: Decoders = field(default_factory=Decoders)
    compiler: Compiler = field(default_factory=Compiler)

    def store(self, cfg: WorkerConfig) -> Store:
        key = (cfg.store_url, cfg.store_password)
        if key not in self.stores:
            self.stores[key] = open_existing_store(cfg.store_url, password=cfg.store_password)
        return self.stores[key]

    def pixels(self, cfg: WorkerConfig) -> PixelCache | None:
        """The worker's pixel cache (None when off); one that broke is tried afresh here,
        at the next chunk."""
        if cfg.pixel_cache_dir is None or cfg.pixel_cache_mb == 0:
            return None
        key = (cfg.pixel_cache_dir, cfg.pixel_cache_mb)
        if key not in self.caches or self.caches[key].broken is not None:
            self.caches[key] = PixelCache(cfg.pixel_cache_dir, cfg.pixel_cache_mb * 2**20)
        return self.caches[key]

    def use(self, project: tuple[str, int], key: tuple[object, ...] | None) -> None:
        """``project`` scores with the model ``key`` now (None: its bootstrap network). The
        one it scored with before is let go, unless another project scores with it, and so
        is what was compiled of it: a worker kept every version a watched folder handed it
        (on the GPU, once scored with)."""
        old = self.current.get(project)
        self.current[project] = key
        if old is None or old == key or old in self.current.values():
            return
        dropped = self.models.pop(old, None)
        if dropped is not None:
            self.compiler.forget(dropped.module)
            del dropped  # the last reference: its tensors are freed here, then handed back
            torch.cuda.empty_cache()  # nothing where CUDA was never initialised

    def keep_bootstrap(self, project_id: int, trained: Trained) -> None:
        """``trained`` is the project's bootstrap network now; the one before is let go with
        what was compiled of it (the compiler's entry alone kept every network trained)."""
        before = self.bootstraps.get(project_id)
        self.bootstraps[project_id] = trained
        if before is not None and before.model.module is not trained.model.module:
            self.compiler.forget(before.model.module)
            del before
            torch.cuda.empty_cache()

    def close(self) -> None:
        self.decoders.close()
        for store in self.stores.values():
            store.engine.dispose()
        self.stores.clear()
        for cache in self.caches.values():
            cache.close()
        self.caches.clear()


def image_source(cfg: WorkerConfig) -> ImageSource:
    return ImageSource(
        label_studio_url=cfg.label_studio_url,
        label_studio_token=cfg.label_studio_token,
        image_root=cfg.image_root,
        upload_root=cfg.upload_root,
        allowed_hosts=cfg.allowed_hosts,
    )


def current_model(
    cfg: WorkerConfig, project_id: int, resources: Resources, *, now_s: float | None = None
) -> ScoringModel:
    """The model to score with now: the watched folder's newest settled file, the configured
    model, or the bootstrap network (trained again once enough new labels have arrived);
    its version the one its scores are stored under (see :func:`scored_version`)."""
    choice, _ = pin_model(cfg, now_s=now_s)
    project = (cfg.store_url, project_id)
    if choice.model == "bootstrap":
        resources.use(project, None)
        model = _bootstrap(choice, project_id, resources)
    else:
        key: tuple[object, ...] = (choice.model, choice.weights, _mtime(choice.model))
        key += (_mtime(choice.weights),)
        resources.use(project, key)  # before loading: the old version's memory is free for it
        if key not in resources.models:
            resources.models[key] = load_model(choice.model, weights=choice.weights)
        model = resources.models[key]
    # passes that cannot run (a .pt2 program, no dropout) give no BALD: no version of their own
    passes = cfg.mc_passes if cfg.mc_passes and not mc_problem(model.module, model.kind) else 0
    version = scored_version(model.version, image_size=cfg.image_size, mc_passes=passes)
    return replace(model, version=version)


def pin_model(
    cfg: WorkerConfig, *, now_s: float | None = None
) -> tuple[WorkerConfig, tuple[str, ...]]:
    """``cfg`` with the watched folder's choice made: ``model``/``weights`` name the file to
    score with and ``model_dir`` is cleared, so every chunk of a pool uses the same one; and
    the folder's files passed over, each with the reason."""
    if cfg.model_dir is None:
        return cfg, ()
    choice = choose_model(
        cfg.model_dir, cfg.model, cfg.weights, now_s=time.time() if now_s is None else now_s
    )
    notes = tuple(f"model folder {cfg.model_dir}: passed over {why}" for why in choice.skipped)
    for note in notes:
        log.warning("%s", note)
    return replace(cfg, model=choice.spec, weights=choice.weights, model_dir=None), notes


def halved(batch_size: int) -> int | None:
    """The batch size to retry with after running out of memory or time (None: at 1)."""
    return batch_size // 2 if batch_size > 1 else None


def out_of_memory(exc: BaseException) -> bool:
    """A CUDA (or MPS/XPU) allocator failure, which a smaller batch may avoid."""
    return isinstance(exc, torch.OutOfMemoryError)


def _bootstrap(cfg: WorkerConfig, project_id: int, resources: Resources) -> ScoringModel:
    rows = _labelled_rows(cfg, project_id, resources)
    known = resources.bootstraps.get(project_id)
    if known is not None and known.classes != cfg.classes:
        # its columns are other classes (or these in another order): never score with it,
        # and train at once rather than wait for new labels that no batch would bring
        known = None
    saved = _latest_saved(cfg, project_id, resources)
    if saved is not None and (known is None or saved_labelled(saved) > known.labelled):
        # another worker trained on more labels: use its network (at the same count the
        # network held is the saved one: the first saved for a count is every worker's)
        known = load_saved(saved)
        resources.unsaved.pop(project_id, None)
        if known.classes != cfg.classes:  # a file renamed by hand
            known = None
    trained_on = None if known is None else known.labelled
    if needs_training(trained_on, len(rows), cfg.retrain_min_new_labels):
        images, labels = _decode_labelled(cfg, rows, resources.pixels(cfg))
        known = train_bootstrap(images, labels, cfg.classes, labelled=len(rows))
        if cfg.bootstrap_dir is not None:
            # another worker may have trained for this state meanwhile: the first saved wins
            try:
                known = save_bootstrap(known, cfg.bootstrap_dir, project_id)
                resources.unsaved.pop(project_id, None)
            except OSError as exc:  # scored with all the same, kept for the next chunks
                _unsaved(resources, project_id, f"could not be saved in {cfg.bootstrap_dir}", exc)
    if known is None:
        raise ConfigError(
            "the bootstrap model has no labelled images to learn from yet; label a first batch"
        )
    resources.keep_bootstrap(project_id, known)
    return known.model


def _latest_saved(cfg: WorkerConfig, project_id: int, resources: Resources) -> Path | None:
    try:
        return latest_saved(cfg.bootstrap_dir, project_id, cfg.classes)
    except OSError as exc:
        _unsaved(resources, project_id, f"could not be looked for in {cfg.bootstrap_dir}", exc)
        return None


def _unsaved(resources: Resources, project_id: int, what: str, exc: OSError) -> None:
    why = (
        f"the bootstrap network {what} ({exc.strerror or exc}); it is kept in this worker's "
        "memory only, so workers not sharing it train their own: give every worker a "
        "writable workers.bootstrap_dir on a shared folder"
    )
    log.warning("%s", why)
    resources.unsaved[project_id] = why


def _mtime(path: str | Path | None) -> int:
    if path is None or not Path(path).is_file():
        return 0
    return Path(path).stat().st_mtime_ns


def _labelled_rows(
    cfg: WorkerConfig, project_id: int, resources: Resources
) -> list[tuple[str, int]]:
    """``(image reference, class index)`` of the labelled tasks with exactly one known class."""
    with resources.store(cfg).session() as session:
        tasks = session.exec(
            select(Task).where(Task.project_id == project_id, Task.state == "labelled")
        ).all()
    rows = []
    for task in sorted(tasks, key=lambda t: t.ls_task_id):
        known = [name for name in task.labels if name in cfg.classes]
        if len(known) == 1:
            image = through_label_studio(task.ls_task_id, task.image or "")
            rows.append((image, cfg.classes.index(known[0])))
    return rows


def _decode_labelled(
    cfg: WorkerConfig, rows: list[tuple[str, int]], cache: PixelCache | None
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """The labelled images' pixels in ``[0, 1]`` and their classes, in ``rows``' order; an
    image that cannot be read is left out (it teaches nothing; the rest still do)."""
    source = image_source(cfg)
    items = [(row, reference) for row, (reference, _) in enumerate(rows)]
    read: dict[int, npt.NDArray[np.uint8]] = {}
    try:
        labelled = read_pixels(items, source, cfg.image_size, cache, fetches=cfg.fetches_at_once)
        for ids, pixels, *_ in labelled:
            if pixels is not None:
                read.update(zip(ids, pixels.numpy(), strict=True))
    finally:
        source.close()
    if not read:
        raise ConfigError(
            f"none of the {len(rows)} labelled images could be read; check workers.image_root, "
            "label_studio.url and the token"
        )
    order = sorted(read)  # the rows' order, whichever came from the cache
    images = np.stack([read[row] for row in order]).astype(np.float32) / 255.0
    return images, np.asarray([rows[row][1] for row in order], dtype=np.int64)


def score_chunk(
    cfg: WorkerConfig,
    project_id: int,
    items: Sequence[tuple[int, str]],
    *,
    resources: Resources,
    final_attempt: bool = True,
) -> ChunkResult:
    """Score the items of ``items`` not yet scored by the current model; write them batch
    by batch.

    Images that could not be fetched for now (timeouts, 5xx) are left unscored; unless this is
    the ``final_attempt`` the chunk then raises ``TransientError`` after writing the rest, so
    the retry fetches only those.
    """
    keep_heap()  # before the bootstrap network's training, which runs here too
    model = current_model(cfg, project_id, resources)
    store = resources.store(cfg)
    wanted = {int(task_id): ref for task_id, ref in items}
    with store.session() as session:
        todo = unscored(
            session, project_id=project_id, model_version=model.version, task_ids=list(wanted)
        )
    scored = unscorable = written = 0
    deferred: dict[int, str] = {}
    notes: dict[str, None] = {}
    held = resources.bootstraps.get(project_id)
    if held is not None and held.model.module is model.module and project_id in resources.unsaved:
        notes[resources.unsaved[project_id]] = None
    parts = iter_scores(
        model.module,
        # a cloud storage object is read through Label Studio for its task; the score row
        # keeps the reference as the task shows it (``images`` below)
        [(task_id, through_label_studio(task_id, wanted[task_id])) for task_id in todo],
        image_source(cfg),
        kind=model.kind,
        image_size=cfg.image_size,
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        mc_passes=cfg.mc_passes,
        device=cfg.device,
        precision=cfg.precision,
        threads=cfg.threads,
        cache=resources.pixels(cfg),
        decoders=resources.decoders,
        compile_mode=cfg.compile,
        compiler=resources.compiler,
        fetches=cfg.fetches_at_once,
    )
    held_parts: list[Scores] = []
    last_write = time.monotonic()

    def write() -> int:
        """The parts held so far written in one transaction (the rows written)."""
        nonlocal last_write
        part, last_write = merge(held_parts), time.monotonic()
        held_parts.clear()
        with store.session() as session:
            return write_scores(
                session,
                project_id=project_id,
                model_version=model.version,
                task_ids=part.task_ids,
                probs=part.probs if part.task_ids else None,
                embeddings=part.embeddings,
                bald=part.bald,
                unscorable=part.unscorable,
                images=wanted,  # a task showing another image by now is not written
            )

    # closed at once should a write fail, not when the collector gets to it: its finally
    # closes the image connections and gives torch its threads back
    with closing(parts):
        try:
            for part in parts:
                held_parts.append(part)
                scored, unscorable = scored + len(part.task_ids), unscorable + len(part.unscorable)
                deferred.update(part.deferred)
                notes.update(dict.fromkeys(part.warnings))
                rows = sum(len(p.task_ids) + len(p.unscorable) for p in held_parts)
                if rows >= cfg.write_rows or time.monotonic() - last_write >= WRITE_S:
                    written += write()
        except Exception:
            if held_parts:  # what was scored before the failure stays scored
                written += write()
            raise
    if held_parts:
        written += write()
    for note in notes:
        log.warning("model %s: %s", model.version, note)
    if deferred and not final_attempt:
        task_id, reason = next(iter(deferred.items()))
        raise ChunkDeferredError(
            f"{len(deferred)} images could not be fetched for now (task {task_id}: "
            f"{reason}); the chunk is retried for them",
            scored=scored,
            unscorable=unscorable,
        )
    return ChunkResult(
        model_version=model.version,
        scored=scored,
        unscorable=unscorable,
        skipped=len(wanted) - len(todo),
        deferred=len(deferred),
        written=written,
        batch_size=cfg.batch_size,
        warnings=tuple(notes),
    )
