"""Bad configuration: every invalid key is one line naming the key and what to write, and
`planner run` refuses to start half-configured, before it writes anything."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from pydantic import BaseModel

from integrations.label_studio.launcher import ServerState
from planner.errors import ConfigError
from planner.settings import Settings, load_settings

pytestmark = pytest.mark.fault
PLANNER = str(Path(sys.executable).parent / "planner")
SECTIONS = {
    name: field.annotation
    for name, field in Settings.model_fields.items()
    if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
}
CONFIG = (
    '<View><Image name="i" value="$i"/><Choices name="c" toName="i"><Choice value="A"/>'
    "</Choices></View>"
)
KEYS = [(section, key) for section, model in SECTIONS.items() for key in model.model_fields]


def test_every_key_of_every_section_is_covered() -> None:
    assert len(KEYS) > 60
    assert set(SECTIONS) | {"quotas"} == set(Settings.model_fields)


@pytest.mark.parametrize(("section", "key"), KEYS, ids=[f"{s}.{k}" for s, k in KEYS])
def test_a_wrong_value_of_any_key_is_one_line_naming_it(
    tmp_path: Path, section: str, key: str
) -> None:
    path = tmp_path / "planner.toml"
    path.write_text(f"[{section}]\n{key} = [[1]]\n", encoding="utf-8")  # no key takes this
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ=False)
    header, *lines = str(info.value).splitlines()
    assert str(path) in header
    assert len(lines) == 1, lines
    line = lines[0].strip()
    assert line.startswith(f"{section}.{key}"), line
    assert "<class" not in line, "says what to write, not a Python type"
    assert len(line.split(": ", 1)[1]) > 10, "and what is wrong or allowed"


def test_quota_keys_name_the_class(tmp_path: Path) -> None:
    path = tmp_path / "planner.toml"
    path.write_text('[quotas.Crack]\ntarget = "many"\ncolour = 3\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ=False)
    lines = [line.strip() for line in str(info.value).splitlines()[1:]]
    assert len(lines) == 2
    assert lines[0].startswith("quotas.Crack.target = 'many'")
    assert lines[1].startswith("quotas.Crack.colour = 3: unknown key")


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PLANNER_")}
    return subprocess.run(
        [PLANNER, *args],
        env={**base, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _refused(done: subprocess.CompletedProcess[str], *words: str) -> str:
    assert done.returncode == 2, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert "Traceback" not in done.stderr
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def _config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "planner.toml"
    db = tmp_path / "planner.db"
    path.write_text(f'[store]\nurl = "sqlite:///{db}"\n{body}', encoding="utf-8")
    return path


def test_run_refuses_without_a_project_id(tmp_path: Path) -> None:
    config = _config(tmp_path, '[label_studio]\nurl = "http://127.0.0.1:9"\n')
    done = _run(["run", "-c", str(config)], {"PLANNER_LABEL_STUDIO__TOKEN": "t0ken"}, tmp_path)
    _refused(done, "label_studio.project_id")
    assert not (tmp_path / "planner.db").exists(), "nothing was written"


def test_run_refuses_without_a_token(tmp_path: Path) -> None:
    config = _config(tmp_path, '[label_studio]\nurl = "http://127.0.0.1:9"\nproject_id = 1\n')
    done = _run(["run", "-c", str(config)], {}, tmp_path)
    _refused(done, "label_studio.token", "PLANNER_LABEL_STUDIO__TOKEN")
    assert not (tmp_path / "planner.db").exists(), "nothing was written"


def test_run_waits_for_an_unreachable_label_studio(tmp_path: Path) -> None:
    """A server that is down is not a bad setting: it may be starting next to the daemon, so
    ``planner run`` says so with the address and what happens, keeps trying, and stops cleanly
    on SIGTERM."""
    config = _config(
        tmp_path,
        '[label_studio]\nurl = "http://127.0.0.1:9"\nproject_id = 1\n'
        "[dashboard]\nmetrics_port = 0\n",  # tests beside it may hold the default port
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith("PLANNER_")}
    daemon = subprocess.Popen(
        [PLANNER, "run", "-c", str(config)],
        env={**base, "PLANNER_LABEL_STUDIO__TOKEN": "t0ken"},
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(daemon.stderr or ()), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any("not answering" in x for x in lines):
            assert daemon.poll() is None, "".join(lines)
            time.sleep(0.2)
        warning = next((x for x in lines if "not answering" in x), "")
        assert "127.0.0.1:9" in warning, "".join(lines)
        assert "retries" in warning
        assert daemon.poll() is None, "it keeps running"
    finally:
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(timeout=90)
        reader.join(10)
        if daemon.stderr is not None:
            daemon.stderr.close()
    assert code == 0, "".join(lines)
    assert "Traceback" not in "".join(lines)


def test_run_refuses_a_bad_key_and_names_it(tmp_path: Path) -> None:
    config = _config(tmp_path, "[planning]\nbatch_size = 0\n[label_studio]\nproject_id = 1\n")
    done = _run(["run", "-c", str(config)], {"PLANNER_LABEL_STUDIO__TOKEN": "t0ken"}, tmp_path)
    assert done.returncode == 2
    assert "planning.batch_size = 0: Input should be greater than 0" in done.stderr
    env_bad = _run(
        ["run", "-c", str(config)],
        {"PLANNER_LABEL_STUDIO__TOKEN": "t0ken", "PLANNER_SCHEDULE__SYNC_INTERVAL": "soon"},
        tmp_path,
    )
    assert "schedule.sync_interval = 'soon': expected a duration" in env_bad.stderr


@pytest.mark.integration
def test_run_refuses_an_unreachable_store(tmp_path: Path, label_studio: ServerState) -> None:
    config = tmp_path / "planner.toml"
    config.write_text(
        f'[label_studio]\nurl = "{label_studio.url}"\nproject_id = 999999\n'
        '[store]\nurl = "postgresql+psycopg://planner@127.0.0.1:9/planner"\n',
        encoding="utf-8",
    )
    token = {"PLANNER_LABEL_STUDIO__TOKEN": label_studio.token}
    missing = _run(["run", "-c", str(config)], token, tmp_path)
    _refused(missing, "project 999999")
    pid = _project(label_studio)
    config.write_text(config.read_text().replace("999999", str(pid)), encoding="utf-8")
    done = _run(["run", "-c", str(config)], token, tmp_path)
    _refused(done, "cannot open the planner database", "127.0.0.1:9", "store.url")


def _project(label_studio: ServerState) -> int:
    answer = httpx.post(
        f"{label_studio.url}/api/projects",
        json={"title": "bad-config", "label_config": CONFIG},
        headers={"Authorization": f"Token {label_studio.token}"},
        timeout=30,
    )
    answer.raise_for_status()
    return int(answer.json()["id"])


@pytest.mark.integration
def test_run_says_at_start_which_quota_names_no_class(
    tmp_path: Path, label_studio: ServerState
) -> None:
    pid = _project(label_studio)
    config = tmp_path / "planner.toml"
    config.write_text(
        f'[label_studio]\nurl = "{label_studio.url}"\nproject_id = {pid}\n'
        '[store]\nurl = "postgresql+psycopg://planner@127.0.0.1:9/planner"\n'
        "[quotas.A]\ntarget = 3\n[quotas.a2]\ntarget = 2\n",
        encoding="utf-8",
    )
    env = {"PLANNER_LABEL_STUDIO__TOKEN": label_studio.token, "PLANNER_QUOTAS__A__TARGET": "5"}
    done = _run(["run", "-c", str(config)], env, tmp_path)
    # the store is unreachable: the run stops right after checking the project
    _refused(done, "cannot open the planner database")
    assert "quotas ['a2'] name no class of Label Studio project" in done.stderr
    assert "one of ['A']" in done.stderr
    assert "'a'" not in done.stderr, "the environment's PLANNER_QUOTAS__A__TARGET is quota A's"


def test_config_check_shows_no_secret_beside_an_unreadable_secret_file(tmp_path: Path) -> None:
    config = tmp_path / "leak.toml"
    config.write_text(f'[dashboard]\nwebhook_secret_file = "{tmp_path / "missing"}"\n')
    done = _run(
        ["config", "check", "-c", str(config)],
        {"PLANNER_DASHBOARD__TOKEN": "SUPERSECRET-DASH"},
        tmp_path,
    )
    line = _refused(done)
    assert "SUPERSECRET-DASH" not in done.stdout + done.stderr
    assert "dashboard.webhook_secret_file: cannot read" in done.stderr, line


def test_config_check_names_the_variable_a_bad_value_came_from(tmp_path: Path) -> None:
    config = _config(tmp_path, "[planning]\nbatch_size = 5\n")
    done = _run(
        ["config", "check", "-c", str(config)], {"PLANNER_PLANNING__BATCH_SIZE": "abc"}, tmp_path
    )
    _refused(done, "in the environment")
    assert "planning.batch_size = 'abc'" in done.stderr
    assert "(from PLANNER_PLANNING__BATCH_SIZE)" in done.stderr
    misspelt = _run(
        ["config", "check", "-c", str(config)], {"PLANNER_PLANING__BATCH_SIZE": "3"}, tmp_path
    )
    assert misspelt.returncode == 0, misspelt.stderr
    assert "configuration is valid" in misspelt.stdout
    assert (
        "PLANNER_PLANING__BATCH_SIZE names no setting and is ignored; "
        "did you mean PLANNER_PLANNING__BATCH_SIZE?"
    ) in misspelt.stderr


def test_config_check_of_an_unreadable_file_exits_2_without_a_traceback(tmp_path: Path) -> None:
    done = _run(["config", "check", "-c", str(tmp_path)], {}, tmp_path)
    _refused(done, "cannot read config", "it is a folder")
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b"\xff\xfe[planning]\n")
    _refused(_run(["config", "check", "-c", str(latin)], {}, tmp_path), "is not UTF-8")


def test_config_check_prints_the_table_a_quota_needs(tmp_path: Path) -> None:
    config = _config(tmp_path, "[quotas]\nPed = 5\n")
    done = _run(["config", "check", "-c", str(config)], {}, tmp_path)
    _refused(done)
    assert "quotas.Ped = 5: a quota is a table; write [quotas.Ped] with target = 5" in done.stderr
    assert "(line 4)" in done.stderr


def test_config_check_names_planner_config_when_its_file_is_missing(tmp_path: Path) -> None:
    done = _run(["config", "check"], {"PLANNER_CONFIG": str(tmp_path / "nope.toml")}, tmp_path)
    _refused(done, "does not exist; named by $PLANNER_CONFIG")
