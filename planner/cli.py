"""The ``planner`` command line: parse, build settings, call a function, print, exit.

Exit codes: 0 success, 2 bad input or configuration (the message says what to fix),
1 anything unexpected.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
import uvicorn
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from integrations.label_studio import launcher
from planner import __version__
from planner.analysis import Analysis
from planner.analysis import analyze as run_analysis
from planner.artifacts import EmitReason
from planner.artifacts.writer import replace_file
from planner.connect import connect, open_settings_store, sync_options
from planner.core.select_result import REASONS
from planner.core.weights import NORMALISATIONS, SCHEMES
from planner.cycle_once import run_one_cycle
from planner.daemon.run import run_daemon
from planner.demo_offline import OfflineDemo, run_offline_demo
from planner.errors import ConfigError, InputError, PlannerError, StoreSchemaError, TransientError
from planner.init_config import ProjectCheck, check_project, config_template
from planner.offline import resample_figures, weights_figures
from planner.outputs import emit_artifacts, emit_options, report_options, write_daily_report
from planner.params import analysis_options, quotas_from_settings
from planner.settings import CONFIG_ENV, Settings, load_settings
from planner.status import (
    project_statuses,
    quota_lines,
    scoring_line,
    scoring_lines,
    served_hints,
    served_lines,
    state_lines,
)
from planner.store import Store
from planner.store.db import make_engine
from planner.sync import sync_project
from planner.web import WebConfig, bound_socket, create_app

if TYPE_CHECKING:
    from planner.reports.model import EtaRow

app = typer.Typer(
    name="planner",
    help="Plan annotation batches for imbalanced Label Studio projects.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect and check the configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")

_T = TypeVar("_T", bound=str)
EXAMPLE_CONFIG = Path(__file__).parent / "examples" / "planner.toml"
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help=f"TOML config file (default: ${CONFIG_ENV})."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


@contextmanager
def _reported() -> Iterator[None]:
    """Turn the planner's own errors into one readable message and exit code 2."""
    try:
        yield
    except PlannerError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(code=2) from None


def parse_counts(text: str) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """Parse ``Car=6000,Pedestrian=2500`` into class names and counts."""
    classes: list[str] = []
    counts: list[float] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        name, sep, value = item.rpartition("=")
        name = name.strip()
        if not sep or not name:
            raise InputError(f"--counts item {item!r} is not NAME=COUNT; write e.g. Car=6000")
        try:
            count = float(value)
        except ValueError:
            raise InputError(
                f"--counts item {item!r}: {value!r} is not a number; write e.g. {name}=6000"
            ) from None
        if not count >= 0 or count == float("inf"):
            raise InputError(f"--counts item {item!r}: counts must be finite and >= 0")
        if name in classes:
            raise InputError(f"--counts names class {name!r} twice; give each class once")
        classes.append(name)
        counts.append(count)
    if not classes:
        raise InputError("--counts is empty; write e.g. --counts Car=6000,Wheelchair=300")
    return tuple(classes), tuple(counts)


def _config_path(config: Path | None) -> Path | None:
    if config is not None:
        return config
    from_env = os.environ.get(CONFIG_ENV)
    return Path(from_env) if from_env else None


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


def _table(title: str, columns: list[str], rows: list[list[str]]) -> Table:
    """Every cell and the title as written: a class name or a stored error may hold [ ]."""
    table = Table(title=escape(title), title_justify="left")
    for index, column in enumerate(columns):
        table.add_column(escape(column), justify="left" if index == 0 else "right")
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    return table


def _show(table: Table) -> None:
    # A pipe has no width; rich would assume 80 columns and cut the numbers short.
    if out.is_terminal:
        out.print(table)
    else:
        Console(width=max(out.width, 200)).print(table)


def _fmt(value: float, digits: int = 4) -> str:
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.{digits}g}"


@app.command()
def version() -> None:
    """Print the planner's version."""
    out.print(__version__)


@config_app.command("check")
def config_check(config: ConfigOption = None) -> None:
    """Validate the configuration; exit 2 with one line per bad key."""
    with _reported():
        load_settings(_config_path(config))
    out.print("configuration is valid")


@config_app.command("show")
def config_show(config: ConfigOption = None) -> None:
    """Print the effective configuration as JSON, secrets masked."""
    with _reported():
        settings = load_settings(_config_path(config))
    _print_json(settings.public_dict())


DEFAULT_CONFIG = Path("planner.toml")


@app.command()
def init(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", help=f"Where to write it (default: ${CONFIG_ENV}, else planner.toml)."
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
    check_only: Annotated[
        bool, typer.Option("--check", help="Write nothing: check an existing config's project.")
    ] = False,
    url: Annotated[str | None, typer.Option(help="Label Studio base URL.")] = None,
    project_id: Annotated[int | None, typer.Option(help="The Label Studio project.")] = None,
    token_file: Annotated[
        Path | None, typer.Option(help="File holding the Label Studio token.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Write a commented config (every key, its default), then check the Label Studio project."""
    path = _config_path(config) or DEFAULT_CONFIG
    given = {"url": url, "project_id": project_id, "token_file": token_file and str(token_file)}
    with _reported():
        if not check_only:
            if path.exists() and not force:
                raise ConfigError(
                    f"{path} exists; pass --force to overwrite it, or --check to check it"
                )
            settings = _write_config(path, config_template(given))
        else:
            settings = load_settings(path)
    if not check_only and not as_json:
        out.print(f"wrote {path}", markup=False)
    try:
        found = _check_project(settings)
    except PlannerError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        err.print(
            f"fix it in {path} or the environment, then run `planner init --check -c {path}`",
            markup=False,
        )
        raise typer.Exit(code=2) from None
    if not check_only:  # the classes found become the commented quota examples
        with _reported():
            _write_config(path, config_template(given, classes=found.classes))
    if as_json:
        _print_json({"config": str(path), "written": not check_only, **found.as_dict()})
        return
    out.print(
        f"Label Studio project {found.project_id} ({found.title}) at {settings.label_studio.url}",
        markup=False,
    )
    for tag, name, labels in found.controls:
        out.print(f"  {tag} {name!r}: {', '.join(labels)}", markup=False)
    for name in found.unknown_quotas:
        out.print(
            f"[yellow]warning:[/] quota {escape(repr(name))} names no class of the label "
            f"config; rename it to one of: {escape(', '.join(found.classes))}"
        )


def _check_project(settings: Settings) -> ProjectCheck:
    project_id = _project_id(settings)
    with connect(settings) as backend:
        return check_project(backend, settings, project_id)


def _write_config(path: Path, text: str) -> Settings:
    """Replace ``path`` with ``text`` (atomically) once it loads as the configuration, the
    environment included; a bad --url, --project-id or --token-file leaves the file as it was."""
    with tempfile.TemporaryDirectory(prefix="planner-init-") as folder:
        draft = Path(folder, path.name)  # paths in a config are read from the working folder
        draft.write_text(text, encoding="utf-8")
        try:
            settings = load_settings(draft)
        except ConfigError as exc:
            said = str(exc).replace(str(draft), str(path))
            raise ConfigError(f"{said}\nnothing was written to {path}") from None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_file(path, text.encode("utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}; choose another --config") from None
    return settings


_SHORT_SCHEME = {
    "inverse_sqrt": "inv_sqrt",
    "effective_number": "eff_num",
    "median_frequency": "med_freq",
}

CountsOption = Annotated[
    str,
    typer.Option(
        "--counts",
        help="Class counts as NAME=COUNT pairs, e.g. Car=6000,Pedestrian=2500,Wheelchair=300.",
    ),
]


@app.command()
def weights(
    counts: CountsOption,
    scheme: Annotated[
        str, typer.Option(help=f"The scheme to mark as chosen: {', '.join(SCHEMES)}.")
    ] = "balanced",
    beta: Annotated[float, typer.Option(help="β of the effective-number scheme.")] = 0.999,
    normalise: Annotated[
        str | None,
        typer.Option(
            help=f"Normalise every scheme: {', '.join(NORMALISATIONS)} (default: each its own)."
        ),
    ] = None,
    max_ratio: Annotated[
        float | None, typer.Option(help="Clip every weight to at most this times the smallest.")
    ] = None,
    tau: Annotated[
        float,
        typer.Option(help="Scale of the logit adjustment, tau x log-prior (Menon et al.: 1)."),
    ] = 1.0,
    as_json: JsonOption = False,
) -> None:
    """Class weights under every scheme, focal-loss alpha and log-priors for the given counts."""
    with _reported():
        classes, values = parse_counts(counts)
        figures = weights_figures(
            classes,
            values,
            scheme=_choose(scheme, SCHEMES, "--scheme"),
            beta=beta,
            normalise=None
            if normalise is None
            else _choose(normalise, NORMALISATIONS, "--normalise"),
            max_ratio=max_ratio,
            tau=tau,
        )
    if as_json:
        _print_json(figures)
        return
    short = {s: _SHORT_SCHEME.get(s, s) + ("*" if s == scheme else "") for s in SCHEMES}
    columns = ["class", "count", *short.values(), "focal_a", "log_prior", "adjust"]
    rows = [
        [
            name,
            _fmt(row["count"]),
            *(_fmt(row[s], 3) for s in SCHEMES),
            _fmt(row["focal_alpha"], 3),
            _fmt(row["log_prior"], 3),
            _fmt(row["adjustment"], 3),
        ]
        for name, row in figures["classes"].items()
    ]
    _show(_table(f"Class weights (* chosen: {scheme})", columns, rows))
    out.print(
        f"adjust = tau x log_prior (tau {_fmt(tau)}): add it to the logits in the loss, or "
        "subtract it from them at prediction time (logit adjustment)",
        markup=False,
    )
    if figures["empty"]:
        out.print(
            f"classes with no examples (given the largest weight): {figures['empty']}",
            markup=False,
        )


@app.command()
def resample(
    counts: CountsOption,
    target: Annotated[
        int | None, typer.Option(help="Images per epoch (default: the sum of the counts).")
    ] = None,
    max_oversample: Annotated[
        float, typer.Option(help="No class is repeated more than this many times.")
    ] = 5.0,
    undersample: Annotated[
        bool, typer.Option(help="Allow drawing fewer images than a class has.")
    ] = True,
    as_json: JsonOption = False,
) -> None:
    """A per-class resampling plan: effective counts and multipliers for one epoch."""
    with _reported():
        classes, values = parse_counts(counts)
        figures = resample_figures(
            classes,
            values,
            target=target,
            max_oversample=max_oversample,
            allow_undersample=undersample,
        )
    if as_json:
        _print_json(figures)
        return
    rows = [
        [name, _fmt(row["count"]), _fmt(row["effective"]), f"{row['multiplier']:.4f}"]
        for name, row in figures["classes"].items()
    ]
    title = f"Resampling plan: {figures['total']} of {figures['target']} images per epoch"
    _show(_table(title, ["class", "count", "effective", "multiplier"], rows))
    if figures["capped"]:
        out.print(
            f"at the {_fmt(max_oversample)}x cap: {', '.join(figures['capped'])}", markup=False
        )
    if figures["shortfall"]:
        out.print(
            f"[yellow]the epoch is {figures['shortfall']} images short of the target: every "
            "class is at its cap; raise --max-oversample or lower --target[/]"
        )
    if figures["excess"]:
        out.print(
            f"[yellow]the epoch is {figures['excess']} images over the target: without "
            "undersampling every image is kept; drop --no-undersample or raise --target[/]"
        )


def _choose(value: str, allowed: tuple[_T, ...], option: str) -> _T:
    for choice in allowed:
        if value == choice:
            return choice
    raise InputError(f"{option} {value!r} is not one of: {', '.join(allowed)}")


@app.command()
def analyze(
    export: Annotated[Path, typer.Argument(help="A Label Studio JSON export (a list of tasks).")],
    label_config: Annotated[
        Path, typer.Option("--label-config", help="The project's label config XML file.")
    ],
    config: ConfigOption = None,
    strata: Annotated[
        str | None, typer.Option(help="Task data fields to stratify by, e.g. time,camera.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Where a project stands, from an export: counts, imbalance, strata, quotas, plans."""
    with _reported():
        settings = load_settings(_config_path(config))
        tasks = _read_export(export)
        fields = tuple(f.strip() for f in strata.split(",") if f.strip()) if strata else ()
        result = run_analysis(
            tasks,
            _read_text(label_config, "--label-config"),
            quotas_from_settings(settings),
            analysis_options(settings, strata_fields=fields or None),
        )
    if as_json:
        _print_json(result.as_dict())
        return
    _print_analysis(result)


@app.command()
def demo(
    offline: Annotated[
        bool, typer.Option("--offline", help="The planning core on a generated export, no server.")
    ] = False,
    workdir: Annotated[
        Path | None,
        typer.Option(help="Where the live demo keeps Label Studio, images and outputs [var/demo]."),
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port of the local Label Studio [8080].")] = None,
    cycles: Annotated[int | None, typer.Option(min=1, help="Cycles at most [8].")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Tasks per batch [25].")] = None,
    head: Annotated[
        int | None, typer.Option(min=10, help="Images of the commonest digit [80].")
    ] = None,
    first_labels: Annotated[
        int | None, typer.Option(min=1, help="Tasks labelled before the first cycle [30].")
    ] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Live: a local Label Studio, the daemon's cycles, a simulated annotator (--offline)."""
    live: dict[str, object] = {"--workdir": workdir, "--port": port, "--cycles": cycles}
    live |= {"--batch-size": batch_size}
    live |= {"--head": head, "--first-labels": first_labels}
    if offline:
        _offline_demo(config, as_json, [name for name, value in live.items() if value is not None])
        return
    # imported here: the live demo pulls in the SDK and the daemon
    from planner.demo_display import live_progress, print_summary  # noqa: PLC0415
    from planner.demo_live import LiveDemoOptions, run_live_demo  # noqa: PLC0415

    sizes: dict[str, object] = {"max_cycles": cycles, "batch_size": batch_size, "head": head}
    sizes |= {"first_labels": first_labels, "workdir": workdir, "port": port}
    given = {name: value for name, value in sizes.items() if value is not None}
    options = LiveDemoOptions(**given)  # type: ignore[arg-type]
    if config is not None:  # the live demo writes the config of the project it creates
        with _reported():
            raise InputError(
                f"--config {config} is for `planner demo --offline`; the live demo writes its "
                f"own config (under --workdir {options.workdir}): leave --config out, or add "
                "--offline"
            )
    with _reported():
        if as_json:
            result = run_live_demo(options)
        else:
            with live_progress(out, options) as (step, on_cycle):
                result = run_live_demo(options, step=step, on_cycle=on_cycle)
    if as_json:
        _print_json(result.as_dict())
        return
    print_summary(out, result)


def _offline_demo(config: Path | None, as_json: bool, ignored: list[str]) -> None:
    with _reported():
        # the offline demo runs none of these: a silently ignored option misleads
        if ignored:
            raise InputError(
                f"{', '.join(ignored)} only apply to the live demo; `planner demo --offline` "
                "reads its sizes from --config (planning.batch_size and the rest): leave them "
                "out, or drop --offline"
            )
        settings = load_settings(_config_path(config) or EXAMPLE_CONFIG)
        result = run_offline_demo(settings)
    if as_json:
        _print_json(result.as_dict())
        return
    out.print(
        "[bold]Annotation Planner demo[/]: a generated traffic project, 4 classes at 20:1, "
        f"{len(result.example.tasks)} exported tasks and {len(result.example.pool_ids)} "
        "unlabeled images scored by a model."
    )
    _print_analysis(result.analysis)
    _print_batch(result)


def _read_export(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(_read_text(path, "export"))
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{path} is not JSON ({exc.msg} at line {exc.lineno}); export the project "
            "from Label Studio as JSON"
        ) from None
    if not isinstance(data, list) or not all(isinstance(task, dict) for task in data):
        raise InputError(f"{path} is not a Label Studio JSON export: expected a list of tasks")
    return data


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror}") from None


def _print_analysis(result: Analysis) -> None:
    data = result.as_dict()
    kind = result.options.count_kind
    table = result.counts.table
    tasks = data["tasks"]
    out.print(
        f"tasks: {tasks['labelled']} labelled, {tasks['unlabelled']} unlabelled, "
        f"{tasks['skipped']} skipped, {tasks['quarantined']} quarantined"
    )
    rows = [
        [name, *(_fmt(table.of(kind)[s, c]) for s in range(len(table.splits)))]
        for c, name in enumerate(table.classes)
    ]
    _show(_table(f"Labelled {kind} per split", ["class", *table.splits], rows))
    overall = result.imbalance.overall
    out.print(
        f"imbalance ratio {_fmt(overall.imbalance_ratio or 0, 3)}, effective classes "
        f"{_fmt(overall.effective_classes or 0, 3)} of {len(result.schema.classes)}"
    )
    status_rows = [
        [
            s.class_name,
            _fmt(s.count),
            _fmt(s.target),
            _fmt(s.deficit),
            f"{s.progress:.0%}",
            "met" if s.met else "",
        ]
        for s in result.quotas.statuses
    ]
    columns = ["class", "count", "target", "deficit", "progress", ""]
    _show(_table(f"Quotas ({result.quotas.overall_progress:.0%} overall)", columns, status_rows))
    if result.strata is not None:
        for flag in result.strata.flags[:8]:
            out.print(f"[yellow]hidden imbalance:[/] {escape(flag.reason)}")
    for control, labels in data["unknown_labels"].items():
        out.print(
            f"[yellow]unknown labels[/] in {escape(control)}: {escape(str(labels))} "
            "(counted as 'unknown')"
        )
    for item in data["problems"][:5]:
        said = escape(f"{item['what']} - {item['fix']}")
        out.print(f"[yellow]task {escape(str(item['task_id']))}:[/] {said}")
    weights = data["weights"]["classes"]
    out.print(
        f"{result.options.weight_scheme} class weights: "
        + ", ".join(f"{name} {row['weight']:.3g}" for name, row in weights.items()),
        markup=False,
    )


def _print_batch(result: OfflineDemo) -> None:
    batch = result.batch
    truth = result.batch_truth()
    share = result.pool_share()
    rows = [[name, f"{share[name]:.1%}", f"{truth[name] / len(batch.picks):.1%}"] for name in truth]
    _show(_table(f"Next batch: {len(batch.picks)} images", ["class", "pool", "batch"], rows))
    reasons = ", ".join(f"{reason} {batch.count(reason)}" for reason in REASONS)
    out.print(f"why: {reasons}", markup=False)
    for pick in batch.picks[:5]:
        out.print(
            f"  #{pick.rank} task {pick.id}: {pick.reason_text} (p={pick.probability:.2f})",
            markup=False,
        )
    for event in result.stop:
        if event.rule == "quota":
            state = "fired" if event.fired else "not yet"
            out.print(f"stop rule 'quota': {state} - {event.reason}", markup=False)


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[
        str | None, typer.Option(help="Listen address (default: dashboard.host).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="Listen port (default: dashboard.port).")
    ] = None,
) -> None:
    """Serve the read-only dashboard: reports, artifacts, /healthz and /metrics."""
    with _reported():
        settings = load_settings(_config_path(config))
        board = settings.dashboard
        web = WebConfig.from_settings(settings, host=host)
        # not migrated, nor created, here: the daemon owns the schema; a database down or not
        # there yet shows on the page
        password = settings.store.password
        secret = None if password is None else password.get_secret_value()
        store = Store(make_engine(settings.store.url, password=secret, create=False))
        application = create_app(
            web,
            on_webhook=_webhook_seen,
            states=lambda: state_lines(store),
            warnings=lambda: [*scoring_lines(store), *served_lines(store, settings.workers)],
        )
        where = board.port if port is None else port
        listening = _listen(
            web.host, where, host_from_flag=host is not None, port_from_flag=port is not None
        )
    err.print(f"dashboard on http://{web.host}:{where}/", markup=False)
    server = uvicorn.Server(uvicorn.Config(application, log_level="warning"))
    server.run(sockets=[listening])
    if not server.started:  # uvicorn logged why (an app that failed its startup)
        raise typer.Exit(code=1)


def _listen(host: str, port: int, *, host_from_flag: bool, port_from_flag: bool) -> socket.socket:
    """The dashboard's bound socket; a host or port it cannot have is a ConfigError naming
    the flag or setting to change (uvicorn would print its own error and exit 3)."""
    try:
        return bound_socket(host, port)
    except OSError as exc:
        why = exc.strerror or str(exc)
        if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
            change = (
                f"{'--host' if host_from_flag else 'dashboard.host'} to an address of this machine"
            )
        else:
            change = (
                f"{'--port' if port_from_flag else 'dashboard.port'}, or stop what listens there"
            )
        raise ConfigError(
            f"the dashboard cannot listen on {host}:{port} ({why}); change {change}"
        ) from None


def _webhook_seen(action: str) -> None:
    # Only `planner run` can sync early (it serves its own receiver when
    # dashboard.webhook_secret is set); a separate dashboard records the call.
    err.print(f"Label Studio webhook: {action}", markup=False)


ls_app = typer.Typer(help="A local Label Studio for the demo and tests.", no_args_is_help=True)
app.add_typer(ls_app, name="labelstudio")
DataOption = Annotated[Path, typer.Option("--data", help="Server data folder.")]


@ls_app.command("install")
def ls_install() -> None:
    """Install label-studio 1.23.2 into its own virtual environment (once per machine)."""
    with _reported():
        where = launcher.install()
    out.print(f"label-studio {launcher.VERSION} in {where}", markup=False)


@ls_app.command("start")
def ls_start(
    data: DataOption = Path("var/label-studio"),
    images: Annotated[Path, typer.Option(help="Root of local image files.")] = Path("var/images"),
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = launcher.DEFAULT_PORT,
) -> None:
    """Start it on 127.0.0.1 with a preset user and API token; waits for /health."""
    with _reported():
        state = launcher.start(data, document_root=images, port=port)
    out.print(
        f"Label Studio at {state.url} (user {state.user}, token in {data / launcher.STATE_FILE})",
        markup=False,
    )


@ls_app.command("stop")
def ls_stop(data: DataOption = Path("var/label-studio")) -> None:
    """Stop the server of a data folder."""
    out.print("stopped" if launcher.stop(data) else "not running")


@ls_app.command("status")
def ls_status(data: DataOption = Path("var/label-studio")) -> None:
    """Exit 0 when the server of a data folder answers /health, 3 otherwise."""
    state = launcher.ServerState.read(data.resolve())
    if state is None or not launcher.healthy(state.url):
        out.print("not running")
        raise typer.Exit(code=3)
    out.print(f"running at {state.url}", markup=False)


@app.command()
def sync(
    config: ConfigOption = None,
    reconcile: Annotated[
        bool, typer.Option(help="Also compare every task id to find deleted tasks.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Sync the watched Label Studio project into the planner's store once."""
    with _reported():
        settings = load_settings(_config_path(config))
        project_id = _project_id(settings)
        with (
            connect(settings) as backend,
            open_settings_store(settings) as store,
            _working(f"syncing project {project_id}", enabled=not as_json) as show,
        ):
            report = sync_project(
                backend,
                store,
                project_id,
                now=datetime.now(UTC),
                options=sync_options(settings),
                reconcile=reconcile,
                progress=lambda n: show(f"syncing project {project_id}: {n} tasks read"),
            )
    if as_json:
        _print_json(report.as_dict())
        return
    out.print(
        f"synced project {project_id}: {report.seen} tasks read ({report.new} new, "
        f"{report.changed} changed, {report.unchanged} unchanged), "
        f"{len(report.deleted)} deleted, {report.newly_labelled} newly labelled"
    )
    for task_id, problem in report.quarantined[:20]:
        out.print(f"[yellow]task {task_id} quarantined:[/] {escape(problem)}")


def _project_id(settings: Settings) -> int:
    if settings.label_studio.project_id is None:
        raise ConfigError(
            "label_studio.project_id is not set; set it in the config or "
            "PLANNER_LABEL_STUDIO__PROJECT_ID"
        )
    return settings.label_studio.project_id


@app.command()
def worker(
    config: ConfigOption = None,
    queues: Annotated[str, typer.Option(help="Queues to consume, comma-separated.")] = "score",
    concurrency: Annotated[int, typer.Option(help="Worker processes.")] = 1,
) -> None:
    """Run a Celery scoring worker (torch) on the configured Redis broker."""
    with _reported():
        settings = load_settings(_config_path(config))
        broker = settings.workers.broker_url
        if broker is None:
            raise ConfigError(
                "workers.broker_url is not set; a worker needs the Redis broker "
                "(PLANNER_WORKERS__BROKER_URL=redis://host:6379/0). Without one the daemon "
                "scores in-process and no worker is needed"
            )
        # the worker's own limits and secrets: task messages carry neither
        from dataclasses import replace  # noqa: PLC0415 - kept beside its one use

        from planner.connect import broker_config, worker_own  # noqa: PLC0415

        limits = replace(broker_config(settings), concurrency=concurrency)
        own = worker_own(settings)
    from workers.celery_app import run_worker  # noqa: PLC0415 - torch only in workers

    run_worker(limits, queues.split(","), own=own)


@app.command()
def status(
    config: ConfigOption = None,
    check: Annotated[
        bool,
        typer.Option(
            "--check", help="Exit 1 when the store is unreachable or a sync is overdue or failed."
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Each project's last sync, task counts and active batch, read from the store."""
    with _reported():
        settings = load_settings(_config_path(config))
        try:
            read = open_settings_store(settings, read_only=True)
            with read as store, store.session() as session:
                found = project_statuses(session)
        except (TransientError, StoreSchemaError) as exc:
            if not check:
                raise
            # a health check: the store down or not there is unhealthy (1), not a usage error (2)
            err.print(f"[bold red]unhealthy:[/] {escape(str(exc))}", highlight=False)
            raise typer.Exit(code=1) from None
    allowed = settings.schedule.sync_interval * 3
    now = datetime.now(UTC)
    unhealthy = [p.ls_project_id for p in found if p.stale(now, allowed)]
    if as_json:
        _print_json({"projects": [p.as_dict() for p in found], "unhealthy": unhealthy})
    else:
        rows = [
            [
                f"{p.ls_project_id} {p.title}",
                str(p.tasks["labelled"]),
                str(p.tasks["unlabelled"]),
                str(p.tasks["skipped"]),
                str(p.tasks["quarantined"]),
                "never" if p.last_sync_at is None else f"{p.last_sync_at:%Y-%m-%d %H:%M} UTC",
                p.last_error or "",
                "-" if p.batch is None else f"{p.batch} ({(p.batch_done or 0):.0%} done)",
                p.label_studio_line(),
            ]
            for p in found
        ]
        columns = [
            "project",
            "labelled",
            "unlabelled",
            "skipped",
            "quarantined",
            "last sync",
            "error",
            "batch",
            "Label Studio",
        ]
        _show(_table("Projects", columns, rows))
        for p in found:
            if p.config_warning:
                warning = escape(p.config_warning)  # it names [quotas.<Class>] sections
                out.print(f"project {p.ls_project_id}: [yellow]warning:[/] {warning}")
            if p.scoring is not None:
                out.print(f"project {p.ls_project_id}: {scoring_line(p.scoring)}", markup=False)
                for warning in p.scoring.warnings:  # a worker's words: [brackets] and all
                    out.print(f"  [yellow]scoring warning:[/] {escape(warning)}")
            for hint in served_hints(p.served, settings.workers):
                out.print(f"project {p.ls_project_id}: {hint}", markup=False)
            if p.held_apart:
                out.print(f"project {p.ls_project_id}: {p.held_apart} tasks held apart; latest:")
            for held in p.latest_held:
                said = escape(f"({held.kind}): {held.problem}")
                out.print(f"  [yellow]task {held.task_id}[/] {said}")
                out.print(f"    what to do: {held.fix}", markup=False)
    if check and unhealthy:
        raise typer.Exit(code=1)


@app.command()
def cycle(
    config: ConfigOption = None,
    once: Annotated[bool, typer.Option("--once", help="Run one cycle now (required).")] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Push even while the active batch is not done.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """One cycle in the foreground: sync, score, select and push the next batch."""
    with _reported():
        if not once:
            raise InputError(
                "pass --once: `planner cycle --once` runs one cycle now; `planner run` runs "
                "them on the schedule"
            )
        settings = load_settings(_config_path(config))
        with _working("cycle: sync, score, select, push", enabled=not as_json):
            done = run_one_cycle(settings, force=force)
    if as_json:
        _print_json(done.as_dict())
        return
    outcome, batch = done.outcome, done.batch
    if outcome.pushed is not None:
        again = " (a half-pushed batch of an earlier run, finished)" if outcome.recovered else ""
        out.print(f"[bold]pushed batch {escape(str(outcome.pushed))}[/]{again}")
    else:
        out.print(f"no batch pushed: {outcome.why}", markup=False)
    if outcome.sync is not None:
        s = outcome.sync
        out.print(f"sync: {s.seen} tasks read, {s.newly_labelled} newly labelled")
    if batch is not None:
        reasons = ", ".join(f"{name} {count}" for name, count in batch.reasons.items())
        out.print(
            f"batch {batch.tag}: {batch.size} tasks, {batch.done:.0%} labelled"
            + (f"; by reason: {reasons}" if reasons else ""),
            markup=False,
        )
        rows = [
            [name, _fmt(short, 3), _fmt(expected, 3)] for name, short, expected in batch.targets
        ]
        if rows:
            _show(_table("Classes it targets", ["class", "shortfall", "expected picks"], rows))
    if outcome.model_version:
        out.print(f"model: {outcome.model_version}", markup=False)
    if outcome.stop is not None:
        state = "stop" if outcome.stop.should_stop else "go on"
        out.print(f"stop rules: {state} - {outcome.stop.reason}", markup=False)


@contextmanager
def _working(what: str, *, enabled: bool) -> Iterator[Callable[[str], None]]:
    """A transient spinner on a terminal (off for pipes and ``--json``); yields a function
    that changes its text."""
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=out,
        transient=True,
        disable=not (enabled and out.is_terminal),
    )
    with progress:
        task = progress.add_task(what, total=None)
        yield lambda text: progress.update(task, description=text)


@app.command()
def quotas(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Each class's count against its quota per split: target, deficit, progress, ETA."""
    # imported here: the report package renders charts (matplotlib), which other commands skip
    from planner.reports.from_store import report_from_store  # noqa: PLC0415

    with _reported():
        settings = load_settings(_config_path(config))
        project_id = _project_id(settings)
        read = open_settings_store(settings, read_only=True)
        with read as store, store.session() as session:
            data = report_from_store(
                session, project_id, report_options(settings), now=datetime.now(UTC)
            )
    lines = quota_lines(data)
    if as_json:
        _print_json(
            {
                "project": data.project,
                "generated_at": data.generated_at.isoformat(),
                "overall_progress": data.overall_progress,
                "all_met": data.all_met,
                "quotas": [line.as_dict() for line in lines],
            }
        )
        return
    rows = [
        [
            line.class_name,
            line.split,
            str(line.count),
            "-" if line.target is None else str(line.target),
            "-" if line.deficit is None else str(line.deficit),
            "-" if line.progress is None else f"{line.progress:.0%}",
            _eta_text(line.eta),
        ]
        for line in lines
    ]
    columns = ["class", "split", "count", "target", "deficit", "progress", "ETA"]
    title = f"Quotas of {data.project} ({data.overall_progress:.0%} overall)"
    _show(_table(title, columns, rows))
    if not lines:
        out.print("no quota is set; add [quotas.<Class>] tables to the config", markup=False)


def _eta_text(eta: EtaRow | None) -> str:
    if eta is None:
        return ""
    if eta.state == "on_track" and eta.completion is not None:
        return f"{eta.completion:%Y-%m-%d} ({eta.days_remaining or 0:.1f} d)"
    return eta.state.replace("_", " ")


@app.command()
def run(config: ConfigOption = None) -> None:
    """Run the daemon: sync, score, push batches, evaluate stop rules, until SIGTERM."""
    with _reported():
        settings = load_settings(_config_path(config))
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        run_daemon(settings)


@app.command()
def emit(
    config: ConfigOption = None,
    why: Annotated[str, typer.Option("--reason", help="Why, for the record.")] = "on demand",
    as_json: JsonOption = False,
) -> None:
    """Write class weights, the resampling plan and the splits for training jobs now."""
    with _reported():
        settings = load_settings(_config_path(config))
        with (
            open_settings_store(settings) as store,
            _working("emitting weights, plan and splits", enabled=not as_json),
        ):
            written = emit_artifacts(
                store,
                _project_id(settings),
                emit_options(settings),
                splits=tuple(settings.planning.split_ratios),
                reason=EmitReason("on_demand", why),
                now=datetime.now(UTC),
            )
    if as_json:
        _print_json(
            {"version": written.version, "path": str(written.path), "checksum": written.checksum}
        )
        return
    out.print(f"artifacts {written.version} in {written.path}", markup=False)


@app.command()
def report(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Write today's quota report (HTML, Markdown, JSON) into dashboard.reports_dir."""
    with _reported():
        settings = load_settings(_config_path(config))
        with (
            open_settings_store(settings, read_only=True) as store,
            _working("writing the quota report", enabled=not as_json),
        ):
            day = write_daily_report(
                store, _project_id(settings), report_options(settings), now=datetime.now(UTC)
            )
    if as_json:
        report_json = day / "report.json"
        _print_json(
            {
                "folder": str(day),
                "files": sorted(str(p) for p in day.glob("report.*")),
                "report": json.loads(report_json.read_text(encoding="utf-8")),
            }
        )
        return
    out.print(f"report in {day}", markup=False)
