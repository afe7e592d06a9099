"""Infrastructure faults beside Label Studio: Redis stopped and restarted (leader lease and
Celery broker), the planner database locked (SQLite) or unreachable (PostgreSQL behind the
proxy), the artifact folder full or read-only (real filesystems, mounted for the test)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import create_engine, event, make_url
from sqlmodel import func, select

from planner.artifacts import write_artifact
from planner.artifacts.layout import ArtifactError
from planner.artifacts.reader import latest_version, list_versions, read_artifact
from planner.daemon.leader import RedisLease
from planner.daemon.run import _heartbeat
from planner.store import Store, open_store
from planner.store.db import _sqlite_pragmas
from planner.store.models import ScoreRecord
from tests.faults.conftest import Rig, compare, make_daemon
from tests.faults.proxy import FaultProxy
from tests.faults.services import PrivateRedis
from tests.faults.tally import Tally
from tests.unit.artifacts.helpers import small_artifact
from tests.unit.workers.conftest import worker_config
from workers.dispatch import score_pool

pytestmark = [pytest.mark.fault, pytest.mark.integration]
PLANNER = str(Path(sys.executable).parent / "planner")
MOUNT, UMOUNT = shutil.which("mount") or "/bin/mount", shutil.which("umount") or "/bin/umount"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path).start()
    yield server
    server.stop()


# -- Redis -----------------------------------------------------------------------------------
def test_the_leader_lease_survives_a_redis_restart(
    tally: Tally, private_redis: PrivateRedis
) -> None:
    lease = RedisLease.from_url(private_redis.url, "project-faults", ttl_s=5)
    assert _heartbeat(lease)
    with tally.fault("redis.restarted.lease"):
        private_redis.stop()
        assert not _heartbeat(lease), "no Redis: not leading (and no crash)"
        private_redis.start()  # empty: the lease key is gone
        assert _heartbeat(lease), "the daemon takes its lease again"
        other = RedisLease.from_url(private_redis.url, "project-faults", ttl_s=5)
        assert not other.acquire(), "and holds it alone"


@pytest.mark.slow
def test_celery_scoring_resumes_after_a_broker_restart(
    tally: Tally,
    private_redis: PrivateRedis,
    project: tuple[Store, int],
    digit_files: tuple[Path, list[int]],
    tmp_path: Path,
) -> None:
    store, pid = project
    root, _ = digit_files
    config = tmp_path / "worker.toml"
    # the worker keeps the bootstrap network in its own folder (a task message names none)
    folder = tmp_path / "bootstrap"
    config.write_text(
        f"[workers]\nbroker_url = {private_redis.url!r}\nbootstrap_dir = '{folder}'\n"
    )
    log = tmp_path / "worker.log"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = [PLANNER, "worker", "-c", str(config), "--queues", "score-faults", "--concurrency", "1"]
    with log.open("ab") as out:
        worker = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        cfg = replace(
            worker_config(store, root),
            broker_url=private_redis.url,
            queue="score-faults",
        )
        items = [(i, f"/data/local-files/?d=digits/{i - 1:04d}.png") for i in range(201, 241)]
        with tally.fault("redis.restarted.broker"):
            time.sleep(3)  # the worker is connected and waiting for tasks
            private_redis.stop()
            time.sleep(2)
            private_redis.start()
            result = score_pool(cfg, pid, items, timeout_s=240)
            assert result.scored == len(items), log.read_text()[-3000:]
            assert worker.poll() is None, "the worker reconnected, it did not exit"
        with store.session() as session:
            stored = session.exec(
                select(func.count()).where(ScoreRecord.model_version == result.model_version)
            ).one()
        assert stored == len(items)
    finally:
        os.killpg(worker.pid, 15)
        worker.wait(timeout=60)


# -- the planner database -----------------------------------------------------------------
def _short_timeout_store(url: str, timeout_s: float) -> Store:
    """The daemon's store with SQLite's busy timeout cut from 30 s, so the test is short."""
    engine = create_engine(url, connect_args={"timeout": timeout_s})
    event.listen(engine, "connect", _sqlite_pragmas)
    return Store(engine)


def test_a_locked_sqlite_store_ends_the_job_and_the_next_one_catches_up(
    tally: Tally, rig: Rig
) -> None:
    url = rig.store.engine.url.render_as_string(hide_password=False)
    store = _short_timeout_store(url, 1.0)
    daemon = make_daemon(rig.live, store, rig.daemon_backend)
    assert daemon.sync() is not None
    holder = sqlite3.connect(
        str(make_url(url).database), isolation_level=None, check_same_thread=False
    )
    try:
        with tally.fault("store.sqlite_locked"):
            rig.annotate(rig.live.ids[20])
            holder.execute("BEGIN EXCLUSIVE")  # a second connection holds the write lock
            assert daemon.sync() is None, "locked past the timeout: this job ends"
            assert daemon.health.state == "ok", "not blamed on Label Studio"
            assert b'planner_errors_total{kind="store"} 1.0' in daemon.telemetry.render()
            holder.execute("ROLLBACK")
            # held for less than the busy timeout, the lock is simply waited out
            holder.execute("BEGIN EXCLUSIVE")
            threading.Timer(0.5, lambda: holder.execute("ROLLBACK")).start()
            time.sleep(0.1)
            assert daemon.sync() is not None
    finally:
        holder.close()
    found = compare(rig.backend, store, rig.live.pid)
    tally.annotations_lost(found.lost)
    assert found.lost == 0
    store.dispose()


def test_an_unreachable_postgresql_store_ends_the_job_and_the_next_one_catches_up(
    tally: Tally, rig: Rig, postgres_url: str
) -> None:
    open_store(postgres_url).dispose()  # migrated directly; the daemon goes through the proxy
    direct = make_url(postgres_url)
    proxy = FaultProxy(direct.host or "127.0.0.1", direct.port or 5432)
    try:
        with open_store(
            direct.set(host="127.0.0.1", port=proxy.listen_port).render_as_string(
                hide_password=False
            )
        ) as store:
            daemon = make_daemon(rig.live, store, rig.daemon_backend)
            assert daemon.sync() is not None
            with tally.fault("store.postgresql_unreachable"):
                rig.annotate(rig.live.ids[21])
                proxy.down()  # connections cut, new ones refused
                assert daemon.sync() is None
                assert daemon.cycle().pushed is None
                assert daemon.health.state == "ok", "not blamed on Label Studio"
                proxy.heal()
                assert daemon.sync() is not None
            found = compare(rig.backend, store, rig.live.pid)
            tally.annotations_lost(found.lost)
            assert found.lost == 0
    finally:
        proxy.close()


# -- the artifact folder --------------------------------------------------------------------
@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A real 512 KiB tmpfs (root can mount one here; elsewhere the test is skipped)."""
    mount = tmp_path / "artifacts"
    mount.mkdir()
    made = subprocess.run(
        [MOUNT, "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run([UMOUNT, "-l", str(mount)], check=False)


def _visible_versions_stay_whole(folder: Path, stop: threading.Event, bad: list[str]) -> None:
    """A training job polling the folder: every version it can see reads back whole."""
    while not stop.is_set():
        for version in list_versions(folder):
            try:
                read_artifact(folder, version)
            except ArtifactError as exc:
                bad.append(f"{version}: {exc}")
        time.sleep(0.005)


def _fill(path: Path) -> int:
    """Write ``path`` until the filesystem is full, for real; the error number it ends with."""
    with path.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 4096)
        except OSError as exc:
            return exc.errno or 0


def test_a_full_artifact_folder_never_shows_a_partial_version(
    tally: Tally, small_filesystem: Path
) -> None:
    first = write_artifact(small_filesystem, small_artifact())
    filler = small_filesystem / "filler"
    with tally.fault("artifacts.disk_full"):
        assert _fill(filler) == errno.ENOSPC
        stop, bad = threading.Event(), []
        reader = threading.Thread(
            target=_visible_versions_stay_whole, args=(small_filesystem, stop, bad)
        )
        reader.start()
        try:
            for _ in range(5):
                with pytest.raises(ArtifactError, match="Free disk space"):
                    write_artifact(small_filesystem, small_artifact(scale=50))
        finally:
            stop.set()
            reader.join()
        assert bad == []
        assert latest_version(small_filesystem) == first.version
        assert list_versions(small_filesystem) == [first.version]
        assert sorted(p.name for p in small_filesystem.iterdir() if p.name.startswith(".")) == [
            ".lock"
        ], "no temporary version left behind"
        filler.unlink()
        second = write_artifact(small_filesystem, small_artifact(scale=50))
        assert latest_version(small_filesystem) == second.version


def test_a_read_only_artifact_folder_is_refused_with_the_fix(
    tally: Tally, small_filesystem: Path
) -> None:
    first = write_artifact(small_filesystem, small_artifact())
    with tally.fault("artifacts.read_only"):
        subprocess.run([MOUNT, "-o", "remount,ro", str(small_filesystem)], check=True)
        try:
            with pytest.raises(ArtifactError, match="remount it read-write"):
                write_artifact(small_filesystem, small_artifact())
            assert latest_version(small_filesystem) == first.version
            assert read_artifact(small_filesystem).version == first.version
        finally:
            subprocess.run([MOUNT, "-o", "remount,rw", str(small_filesystem)], check=True)
        assert write_artifact(small_filesystem, small_artifact()).version != first.version


_WRITE_UNDER_A_SIZE_LIMIT = """
import json, resource, signal, sys
from planner.artifacts import write_artifact
from planner.artifacts.layout import ArtifactError
from tests.unit.artifacts.helpers import small_artifact

artifact = small_artifact(scale=50)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of a kill
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    write_artifact(sys.argv[1], artifact)
except ArtifactError as exc:
    print(json.dumps({"error": str(exc)}))
else:
    print(json.dumps({"error": None}))
"""


def test_a_write_stopped_by_a_file_size_limit_never_shows_a_partial_version(
    tally: Tally, tmp_path: Path
) -> None:
    """Where no filesystem can be filled (not root), the kernel still refuses the write for
    real: a process file-size limit (``ulimit -f``) ends it with EFBIG part-way through."""
    folder = tmp_path / "artifacts"
    first = write_artifact(folder, small_artifact())
    limit = max(p.stat().st_size for p in (folder / first.version).iterdir()) + 1024
    with tally.fault("artifacts.file_size_limit"):
        child = subprocess.run(
            [sys.executable, "-c", _WRITE_UNDER_A_SIZE_LIMIT, str(folder), str(limit)],
            capture_output=True,
            text=True,
            cwd=REPO,
            check=False,
            timeout=120,
        )
        assert child.returncode == 0, child.stderr
        error = json.loads(child.stdout.strip().splitlines()[-1])["error"]
        assert error is not None, "the limit did not stop the write"
        assert "File too large" in error
        assert "ulimit -f" in error
        assert latest_version(folder) == first.version
        assert list_versions(folder) == [first.version]
        assert read_artifact(folder).version == first.version
        leftovers = sorted(p.name for p in folder.iterdir() if p.name.startswith("."))
        assert leftovers == [".lock"], "no temporary version left behind"
    second = write_artifact(folder, small_artifact(scale=50))
    assert latest_version(folder) == second.version
