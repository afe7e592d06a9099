"""The launcher's process handling, with stand-in executables in place of Label Studio.

The real server is started by tests/integration/label_studio/conftest.py; here a tiny HTTP
server (or a script that dies, or one that hangs) plays ``label-studio`` so start, status,
idempotence, the log tail and stopping the process group are checked in seconds.
"""

from __future__ import annotations

import socket
import sqlite3
import sys
from contextlib import closing
from pathlib import Path

import pytest

from integrations.label_studio import launcher, template
from planner.errors import ConfigError, TransientError

SERVE = f"""#!{sys.executable}
import http.server, os, sys
print("ARGS", " ".join(sys.argv[1:]), flush=True)
print("ENV", os.environ["LABEL_STUDIO_BASE_DATA_DIR"], os.environ["LATEST_VERSION_CHECK"],
      os.environ["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"], flush=True)
port = int(sys.argv[sys.argv.index("-p") + 1])
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
"""
DIE = "#!/bin/sh\necho 'django.db.utils.OperationalError: boom'\nexit 1\n"
HANG = "#!/bin/sh\nexec sleep 600\n"


def _install_stand_in(home: Path, script: str) -> None:
    (home / "bin").mkdir(parents=True)
    exe = home / "bin" / "label-studio"
    exe.write_text(script, encoding="utf-8")
    exe.chmod(0o755)
    (home / ".planner-installed").write_text(launcher.VERSION, encoding="utf-8")


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _group_runs(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies awaiting init do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text(encoding="utf-8").rpartition(")")[2].split()
        except OSError:
            continue  # exited while we looked
        if int(fields[2]) == pgid and fields[0] not in {"Z", "X"}:
            return True
    return False


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    where = tmp_path / "ls-home"
    monkeypatch.setenv("PLANNER_LS_HOME", str(where))
    return where


def test_home_follows_the_environment(home: Path) -> None:
    assert launcher.home() == home
    assert not launcher.installed()


def test_a_hand_made_install_is_recognised_by_its_metadata(home: Path) -> None:
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "label-studio").write_text("#!/bin/sh\n", encoding="utf-8")
    site = home / "lib" / "python3.11" / "site-packages"
    (site / "label_studio-1.22.0.dist-info").mkdir(parents=True)
    assert not launcher.installed()  # another version
    (site / f"label_studio-{launcher.VERSION}.dist-info").mkdir()
    assert launcher.installed()
    assert launcher.install() == home  # present: nothing to do, no log written
    assert not (home.parent / f"label-studio-{launcher.VERSION}-install.log").exists()


def test_a_failed_install_points_at_its_log(home: Path) -> None:
    with pytest.raises(ConfigError, match=r"failed .* see .*install\.log"):
        launcher.install(python="/bin/false")


def test_start_needs_an_install(home: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="planner labelstudio install"):
        launcher.start(tmp_path / "data", document_root=tmp_path / "img", port=_port())


def test_start_status_restart_and_stop(home: Path, tmp_path: Path) -> None:
    _install_stand_in(home, SERVE)
    data, images, port = tmp_path / "data", tmp_path / "img", _port()
    assert launcher.status(data) is None
    state = launcher.start(data, document_root=images, port=port, timeout_s=60)
    assert (state.port, state.url) == (port, f"http://127.0.0.1:{port}")
    assert launcher.status(data) == state  # seen from the state file, as another process would
    assert launcher.start(data, document_root=images, port=_port()) == state  # idempotent
    log = Path(state.log).read_text(encoding="utf-8")
    assert "--enable-legacy-api-token" in log
    assert f"--user-token {launcher.DEFAULT_TOKEN}" in log
    assert f"ENV {data.resolve()} false {images.resolve()}" in log
    assert launcher.main(["status", "--data", str(data)]) == 0
    assert launcher.stop(data)
    assert not launcher._alive(state.pid)
    assert not _group_runs(state.pgid)
    assert launcher.status(data) is None
    assert not launcher.stop(data)
    assert launcher.main(["status", "--data", str(data)]) == 3


def test_a_server_that_dies_reports_its_log(home: Path, tmp_path: Path) -> None:
    _install_stand_in(home, DIE)
    with pytest.raises(TransientError, match=r"exited; log .* ends with:\n.*OperationalError"):
        launcher.start(tmp_path / "data", document_root=tmp_path / "img", port=_port())
    assert launcher.ServerState.read(tmp_path / "data") is None


def test_a_server_that_never_gets_healthy_is_stopped(home: Path, tmp_path: Path) -> None:
    _install_stand_in(home, HANG)
    data = tmp_path / "data"
    with pytest.raises(TransientError, match="not healthy within 2 s"):
        launcher.start(data, document_root=tmp_path / "img", port=_port(), timeout_s=2)
    assert launcher.ServerState.read(data) is None
    assert launcher.status(data) is None


def test_a_corrupt_state_file_is_ignored(tmp_path: Path) -> None:
    (tmp_path / launcher.STATE_FILE).write_text('{"pid": 1}', encoding="utf-8")
    assert launcher.ServerState.read(tmp_path) is None
    assert launcher.status(tmp_path) is None


def test_a_kept_database_seeds_only_fresh_data_folders(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    with closing(sqlite3.connect(first / template.DATABASE)) as db, db:
        db.execute("CREATE TABLE users (email TEXT)")
        db.execute("INSERT INTO users VALUES ('planner@example.com')")
    kept = template.template_path(tmp_path / "kept", "1.23.2", "u", "p", "t")
    assert kept != template.template_path(tmp_path / "kept", "1.23.2", "u", "p", "other")
    assert not template.seed(second, kept)  # nothing kept yet
    template.save(first, kept)
    assert template.seed(second, kept)
    with closing(sqlite3.connect(second / template.DATABASE)) as db:
        assert db.execute("SELECT email FROM users").fetchall() == [("planner@example.com",)]
    assert not template.seed(first, kept)  # never over an existing database
