"""What a real Label Studio spends serving a task's image, against the stand-in and the disk.

The score bench fetches its images from a stand-in (Python's ``http.server`` answering
``/data/local-files/``); a pool's first pass over a real project asks Label Studio itself.
Measured in one run, interleaved rounds, the same JPEG images: Label Studio 1.23.2 (started by
the project's launcher, its own environment and SQLite, on this machine) serving them from a
local storage with the API token, one at a time and ``FETCHES_PER_PROCESS`` at once as a decode
process asks (``ImageSource.read_many``); the stand-in serving them one at a time (the
baseline); and ``ImageSource`` reading them from the disk, as a worker does with
``workers.image_root`` set to the storage's folder. Reported: the server's CPU an image (every
process of its group, from Linux's /proc), this process's CPU an image, the wall time an image
and images a second, medians of the rounds; the server's CPU against the stand-in's within each
round (median).

    python bench/label_studio_bench.py --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.pages import put_marked
from bench.score_bench import TOKEN, cpu_model, make_images, stand_in
from integrations.label_studio import launcher
from integrations.label_studio.workbench import LabelStudioWorkbench
from workers.batches import FETCHES_PER_PROCESS, chunked
from workers.images import ImageSource

BATCH = 64
"""Images a batch, as the decode processes are handed them."""
CONFIG = """<View><Image name="image" value="$image"/>
<Choices name="label" toName="image"><Choice value="a"/><Choice value="b"/></Choices></View>"""
START, END = "<!-- label_studio_bench:start -->", "<!-- label_studio_bench:end -->"

Cost = tuple[float, float, float]
"""Server CPU, this process's CPU and wall time, seconds an image."""


def group_cpu_s(pgid: int) -> float:
    """CPU seconds (user and system) every live process of group ``pgid`` has used."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def timed(
    read: Callable[[list[str]], int], references: list[str], server: Callable[[], float]
) -> Cost:
    """The server's CPU, this process's CPU and the wall time an image to read ``references``
    a batch at a time."""
    before, cpu, wall = server(), time.process_time(), time.perf_counter()
    for batch in chunked(references, BATCH):
        if read(batch) != len(batch):
            raise RuntimeError("an image was not read")
    n = len(references)
    elapsed = time.perf_counter() - wall
    return (server() - before) / n, (time.process_time() - cpu) / n, elapsed / n


def _one_at_a_time(source: ImageSource) -> Callable[[list[str]], int]:
    return lambda batch: sum(bool(source.read(reference)) for reference in batch)


def _at_once(source: ImageSource) -> Callable[[list[str]], int]:
    def read(batch: list[str]) -> int:
        got = source.read_many(batch, at_once=FETCHES_PER_PROCESS)
        return sum(isinstance(body, bytes) and bool(body) for _, body in got)

    return read


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def measure(n: int, size: int, rounds: int) -> dict[str, list[Cost]]:
    launcher.install()
    with tempfile.TemporaryDirectory() as tmp:
        root, data = Path(tmp) / "documents", Path(tmp) / "label-studio"
        folder = root / "bench"
        folder.mkdir(parents=True)
        make_images(folder, n, size)
        state = launcher.start(data, document_root=root, port=_free_port())
        try:
            with LabelStudioWorkbench(state.url, state.token) as bench:
                project = bench.create_project("label_studio_bench", CONFIG)
                bench.connect_local_storage(project, str(folder))
            references = [f"/data/local-files/?d=bench/{i:06d}.jpg" for i in range(n)]
            real = ImageSource(label_studio_url=state.url, label_studio_token=state.token)
            disk = ImageSource(image_root=root)
            with stand_in("label_studio", folder=str(folder), latency_s=0.0) as served:
                stand = ImageSource(label_studio_url=served.url, label_studio_token=TOKEN)
                plain = [f"/data/local-files/?d={i:06d}.jpg" for i in range(n)]
                runs: dict[str, tuple[Callable[[list[str]], int], list[str], Callable[[], float]]]
                runs = {
                    "stand_in": (_one_at_a_time(stand), plain, served.cpu_s),
                    "one": (_one_at_a_time(real), references, lambda: group_cpu_s(state.pgid)),
                    "at_once": (_at_once(real), references, lambda: group_cpu_s(state.pgid)),
                    "disk": (_one_at_a_time(disk), references, lambda: 0.0),
                }
                measured: dict[str, list[Cost]] = {name: [] for name in runs}
                for read, refs, server in runs.values():  # warm-up: connections, code, caches
                    timed(read, refs[:BATCH], server)
                for _ in range(rounds):
                    for name, (read, refs, server) in runs.items():
                        measured[name].append(timed(read, refs, server))
                stand.close()
            real.close()
        finally:
            launcher.stop(data)
    return measured


def section(measured: dict[str, list[Cost]], args: argparse.Namespace) -> str:
    def median(name: str, which: int) -> float:
        return statistics.median(cost[which] for cost in measured[name])

    def cells(name: str) -> str:
        server = f"{median(name, 0) * 1e3:.2f} ms" if name != "disk" else "-"
        ours, wall = median(name, 1) * 1e6, median(name, 2)
        return f"{server} | {ours:.0f} us | {wall * 1e3:.2f} ms | {1 / wall:,.0f}"

    def ratio(name: str) -> str:
        # a round the stand-in's CPU fell under a clock tick (a short run) has no ratio
        pairs = zip(measured[name], measured["stand_in"], strict=True)
        each = [a[0] / b[0] for a, b in pairs if b[0] > 0]
        return f"{statistics.median(each):.1f}x" if each else "-"

    command = (
        f"python bench/label_studio_bench.py --n {args.n} --size {args.size} --rounds {args.rounds}"
    )
    return f"""## What Label Studio spends serving an image

Measured {datetime.now(UTC):%Y-%m-%d}, Python {platform.python_version()}, {cpu_model()}, \
{os.cpu_count()} CPUs, Label Studio {launcher.VERSION} (`label-studio start`, SQLite) on the same \
machine. {args.n:,} JPEG images of {args.size}x{args.size} in a project's local storage, read with \
the API token a batch of {BATCH} at a time; the server's CPU an image (every process of its group), \
this process's CPU and wall time an image, medians of {args.rounds} interleaved rounds after a \
warm-up. Command: `{command} --write docs/benchmarks.md`

| reading | server CPU an image | client CPU an image | wall an image | images/s | server CPU |
|---|---|---|---|---|---|
| the score bench's stand-in, one at a time | {cells("stand_in")} | 1.0x (baseline) |
| Label Studio, one at a time (`ImageSource.read`) | {cells("one")} | {ratio("one")} |
| Label Studio, {FETCHES_PER_PROCESS} at once (`ImageSource.read_many`, as a decode process) | \
{cells("at_once")} | {ratio("at_once")} |
| from the disk (`workers.image_root` set to the storage's folder) | {cells("disk")} | - |
"""  # noqa: E501 - Markdown table rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write", type=Path, help="put this run into the Markdown file")
    args = parser.parse_args()
    text = section(measure(args.n, args.size, args.rounds), args)
    print(text)
    if args.write:
        put_marked(args.write, f"{START}\n{text.strip()}\n{END}", START, END)


if __name__ == "__main__":
    main()
