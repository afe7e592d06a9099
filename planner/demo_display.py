"""What ``planner demo`` shows while it runs: a progress bar over the cycles, the step running
now, one line per cycle, then where to look."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from integrations.label_studio import launcher
from planner.demo_live import CycleRow, LiveDemoOptions, LiveDemoResult, OnCycle, Step


@contextmanager
def live_progress(console: Console, options: LiveDemoOptions) -> Iterator[tuple[Step, OnCycle]]:
    """``(step, on_cycle)`` callbacks drawing on ``console`` while the demo runs."""
    progress = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    task = progress.add_task("preparing", total=options.max_cycles)

    def step(text: str) -> None:
        progress.update(task, description=text)

    def on_cycle(row: CycleRow) -> None:
        progress.console.print(cycle_line(row))
        progress.advance(task)

    with progress:
        yield step, on_cycle


def cycle_line(row: CycleRow) -> str:
    quotas = ", ".join(f"{name}: {count}" for name, count in row.quota_counts.items())
    head = f"cycle {row.number:>2} ({row.seconds:4.1f} s) labelled {row.labelled_before:>3}"
    head += f" | quota classes {quotas}"
    if row.batch is None:
        return f"{head} | {row.why}"
    found = ", ".join(f"{n} of {name}" for name, n in row.rare_found.items() if n)
    rare = sum(row.rare_found.values())
    line = f"{head} | pushed {row.batch}: {row.batch_size} tasks, {rare} rare ({found or 'none'})"
    return line + ("" if row.annotated else " | left for you to label")


def print_summary(console: Console, result: LiveDemoResult) -> None:
    """Where to look: Label Studio's Next batch tab, the report, the artifacts."""
    console.print()
    targets = ", ".join(
        f"{name} {result.final_counts.get(name, 0)}/{target}"
        for name, target in result.quotas.items()
    )
    pool = ", ".join(f"{d}:{n}" for d, n in result.pool.items())
    console.print(f"[bold]Pool[/] (images per digit): {pool}")
    if result.stopped:
        console.print(f"[bold green]Stopped[/]: {result.stop_reason}")
    else:
        console.print("[bold yellow]Not stopped yet[/]: the quotas are not all met")
    console.print(f"[bold]Quotas[/] {targets}; {result.labelled} tasks labelled in all.")
    console.print()
    console.print("[bold]Where to look[/]")
    state = "labelled, the last one" if result.next_batch_labelled else "to label next"
    if result.next_batch_url:
        console.print(
            f"  Next batch in Label Studio ({len(result.next_batch_tasks)} tasks, {state}): "
            f"{result.next_batch_url}"
        )
    login = f"log in as {launcher.DEFAULT_USER} / {launcher.DEFAULT_PASSWORD}"
    console.print(f"  Label Studio ({login}): {result.label_studio_url}")
    if result.report:
        console.print(f"  Daily report: {result.report}")
    if result.artifact:
        console.print(f"  Weights and resampling plan: {result.artifact}")
        console.print(f"    emitted by the {result.artifact_reason}")
    console.print(f"  Config of the demo project: {result.config}")
    console.print(f"    try: planner status -c {result.config}")
    console.print(f"    stop Label Studio: planner labelstudio stop --data {result.data_dir}")
