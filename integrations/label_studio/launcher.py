"""A real Label Studio for tests and the demo: install into its own venv, start, wait, stop.

Label Studio pins its own Django and SDK, so it lives in a virtual environment apart from the
planner's (default ``~/.cache/annotation-planner/label-studio-1.23.2``, or ``$PLANNER_LS_HOME``)
and runs as a subprocess on 127.0.0.1 with a preset user and legacy API token. A state file in
the data folder records pid, URL and token so ``stop`` and ``status`` work from any process.

    python -m integrations.label_studio.launcher install|start|stop|status [--data DIR] ...

Plain functions for the CLI: ``install()``, ``start(data_dir, document_root=, port=)``,
``stop(data_dir)``, ``status(data_dir)``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from integrations.label_studio import template
from planner.errors import ConfigError, TransientError

VERSION = "1.23.2"
DEFAULT_PORT = 8080
DEFAULT_USER = "planner@example.com"
DEFAULT_PASSWORD = "planner-demo-password"  # noqa: S105 - a local throwaway server's login
DEFAULT_TOKEN = "planner-local-token-0001"  # noqa: S105 - preset token of a loopback server
STATE_FILE = "planner-launcher.json"
_DETACH = 'exec "$@" </dev/null >>"$LS_LOG" 2>&1 &\necho "$! $$"'
"""Start the server in the background of a throwaway shell, so no Python process of ours is
its parent (it outlives the starting process, e.g. a pytest worker, without a Popen left
running) and its process group is the shell's new session."""


def home() -> Path:
    """Where the Label Studio virtual environment lives."""
    configured = os.environ.get("PLANNER_LS_HOME")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "annotation-planner" / f"label-studio-{VERSION}"


def executable() -> Path:
    return home() / "bin" / "label-studio"


def installed() -> bool:
    """Whether ``label-studio==VERSION`` is installed in its own environment."""
    if not executable().is_file():
        return False
    marker = home() / ".planner-installed"
    if marker.is_file():
        return marker.read_text(encoding="utf-8").strip() == VERSION
    # installed by hand (pip install label-studio==VERSION in that venv): trust its metadata
    return any(home().glob(f"lib/python3*/site-packages/label_studio-{VERSION}.dist-info"))


def install(*, python: str | None = None) -> Path:
    """Install Label Studio once per machine (about 2.5 minutes); a no-op when present."""
    if installed():
        return home()
    venv = home()
    venv.parent.mkdir(parents=True, exist_ok=True)
    log = venv.parent / f"label-studio-{VERSION}-install.log"
    interpreter = python or sys.executable
    with log.open("w", encoding="utf-8") as out:
        steps = [
            [interpreter, "-m", "venv", str(venv)],
            [str(venv / "bin" / "pip"), "install", "--quiet", f"label-studio=={VERSION}"],
        ]
        for step in steps:
            done = subprocess.run(step, stdout=out, stderr=subprocess.STDOUT, check=False)  # noqa: S603
            if done.returncode != 0:
                raise ConfigError(
                    f"installing label-studio=={VERSION} failed ({' '.join(step[:3])}...); "
                    f"see {log}"
                )
    (venv / ".planner-installed").write_text(VERSION, encoding="utf-8")
    return venv


@dataclass(frozen=True, slots=True)
class ServerState:
    """A running server, as recorded in its data folder."""

    pid: int
    pgid: int
    port: int
    url: str
    token: str
    user: str
    data_dir: str
    document_root: str
    log: str

    @classmethod
    def read(cls, data_dir: Path) -> ServerState | None:
        path = data_dir / STATE_FILE
        if not path.is_file():
            return None
        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, TypeError):
            return None  # a state file from an older launcher or cut short: not ours to trust


def healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as response:  # noqa: S310 - our own loopback URL
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start(
    data_dir: Path,
    *,
    document_root: Path,
    port: int = DEFAULT_PORT,
    user: str = DEFAULT_USER,
    password: str = DEFAULT_PASSWORD,
    token: str = DEFAULT_TOKEN,
    timeout_s: float = 240.0,
    reuse_template: bool = True,
    ssrf_protection: bool = False,
) -> ServerState:
    """Start a server for ``data_dir`` and wait for /health; the healthy one if already up.

    A fresh ``data_dir`` starts from a migrated empty database when one was kept (template.py).
    ``ssrf_protection``: refuse webhook URLs on loopback and private addresses, as a Label
    Studio does by default (off here: the planner's receiver listens on 127.0.0.1).
    """
    data_dir = data_dir.resolve()
    current = status(data_dir)
    if current is not None:
        return current
    if not installed():
        raise ConfigError(
            f"label-studio {VERSION} is not installed in {home()}; run "
            "`planner labelstudio install` (or deploy/label-studio.sh install) first"
        )
    stop(data_dir)  # a recorded server that is not healthy: clear it before starting anew
    data_dir.mkdir(parents=True, exist_ok=True)
    document_root.mkdir(parents=True, exist_ok=True)
    kept = template.template_path(home().parent, VERSION, user, password, token)
    fresh = not (data_dir / template.DATABASE).exists()
    if reuse_template:
        template.seed(data_dir, kept)
    url = f"http://127.0.0.1:{port}"
    if healthy(url):
        raise ConfigError(f"another server already answers on {url}; choose another --port")
    log = data_dir / "label-studio.log"
    env = {
        **os.environ,
        "LS_LOG": str(log),
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(document_root.resolve()),
        "SSRF_PROTECTION_ENABLED": str(ssrf_protection).lower(),
        "LATEST_VERSION_CHECK": "false",
        "COLLECT_ANALYTICS": "false",
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
    }
    command = [str(executable()), "start", "--no-browser", "--host", "127.0.0.1", "-p", str(port)]
    command += ["--username", user, "--password", password, "--user-token", token]
    command += ["--enable-legacy-api-token"]
    shell = subprocess.run(  # noqa: S603 - fixed arguments, our own executable
        ["/bin/sh", "-c", _DETACH, "label-studio", *command],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        start_new_session=True,
    )
    # The shell led the new session: its id stays the process group of everything it started.
    pid, pgid = (int(word) for word in shell.stdout.split()[-2:])
    state = ServerState(
        pid, pgid, port, url, token, user, str(data_dir), str(document_root.resolve()), str(log)
    )
    (data_dir / STATE_FILE).write_text(json.dumps(asdict(state)), encoding="utf-8")
    deadline = time.monotonic() + timeout_s
    while not healthy(url):
        if not _alive(pid) or time.monotonic() > deadline:
            why = "exited" if not _alive(pid) else f"was not healthy within {timeout_s:.0f} s"
            stop(data_dir)
            tail = log.read_text(encoding="utf-8", errors="replace")[-2000:]
            raise TransientError(f"Label Studio on {url} {why}; log {log} ends with:\n{tail}")
        time.sleep(0.5)
    if fresh and reuse_template and (data_dir / template.DATABASE).is_file():
        template.save(data_dir, kept)
    return state


def status(data_dir: Path) -> ServerState | None:
    """The server recorded for ``data_dir`` when it runs and answers /health; else None."""
    state = ServerState.read(data_dir.resolve())
    if state is None or not _alive(state.pid) or not healthy(state.url):
        return None
    return state


def stop(data_dir: Path, *, timeout_s: float = 30.0) -> bool:
    """Stop the server of ``data_dir`` (its whole process group); False when none was running."""
    path = data_dir.resolve() / STATE_FILE
    state = ServerState.read(data_dir.resolve())
    path.unlink(missing_ok=True)
    if state is None or not _alive(state.pid):
        return False
    _signal_group(state.pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _alive(state.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    _signal_group(state.pgid, signal.SIGKILL)  # stragglers of the group, if any
    return True


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for a reaper that never comes does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat.rpartition(")")[2].split()[0] not in {"Z", "X"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="label-studio-launcher", description=__doc__)
    parser.add_argument("action", choices=["install", "start", "stop", "status"])
    parser.add_argument("--data", type=Path, default=Path("var/label-studio"))
    parser.add_argument("--images", type=Path, default=Path("var/images"))
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    args = parser.parse_args(argv)
    try:
        if args.action == "install":
            print(f"label-studio {VERSION} in {install()}")
        elif args.action == "start":
            state = start(args.data, document_root=args.images, port=args.port)
            print(f"Label Studio at {state.url} (user {state.user})")
        elif args.action == "stop":
            print("stopped" if stop(args.data) else "not running")
        else:
            found = status(args.data)
            print(f"running at {found.url}" if found else "not running")
            return 0 if found else 3
    except (ConfigError, TransientError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
