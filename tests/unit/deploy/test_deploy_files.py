"""The files under deploy/ parse, and every planner command and setting they use exists."""

from __future__ import annotations

import configparser
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.main import get_command

from planner.cli import app
from planner.settings import Settings

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
ENV_NAME = re.compile(r"\bPLANNER_[A-Z_]+__[A-Z_]+\b")


def _planner_calls() -> Iterator[tuple[str, list[str]]]:
    """(where, argv after `planner`) for every planner invocation in deploy/."""
    for path in sorted(DEPLOY.rglob("*")):
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        if path.suffix in (".yml", ".yaml"):
            for document in yaml.safe_load_all(text):
                yield from _yaml_calls(path, document)
        elif path.name.endswith("Dockerfile"):
            yield from _docker_calls(path, text)
        elif path.suffix == ".service":
            parser = configparser.ConfigParser(strict=False, interpolation=None)
            parser.read_string(text)
            argv = shlex.split(parser["Service"]["ExecStart"])
            assert Path(argv[0]).name == "planner", f"{path}: ExecStart runs {argv[0]}"
            yield str(path), argv[1:]


def _yaml_calls(path: Path, node: Any) -> Iterator[tuple[str, list[str]]]:
    if isinstance(node, dict):
        image = str(node.get("image", ""))
        build = node.get("build")
        dockerfile = str(build.get("dockerfile", "")) if isinstance(build, dict) else ""
        ours = image.startswith("annotation-planner/") or dockerfile.startswith("deploy/docker/")
        for key in ("command", "args"):
            if ours and isinstance(node.get(key), list):
                yield f"{path}:{node.get('name', key)}", [str(a) for a in node[key]]
        for value in node.values():
            yield from _yaml_calls(path, value)
    elif isinstance(node, list):
        for value in node:
            yield from _yaml_calls(path, value)


def _docker_calls(path: Path, text: str) -> Iterator[tuple[str, list[str]]]:
    entry = re.search(r"^ENTRYPOINT\s+(\[.*\])", text, re.M)
    assert entry is not None, f"{path}: no ENTRYPOINT"
    assert yaml.safe_load(entry.group(1)) == ["planner"], path
    for line in re.findall(r"^(?:CMD|HEALTHCHECK.*CMD)\s+(\[.*\])", text, re.M):
        argv = yaml.safe_load(line)
        yield str(path), argv[1:] if argv[0] == "planner" else argv


def _check_argv(argv: list[str]) -> None:
    # typer ships its own click, so groups are recognised by what they can do
    command: Any = get_command(app)
    words = list(argv)
    while hasattr(command, "list_commands") and words and not words[0].startswith("-"):
        name = words.pop(0)
        sub = command.get_command(None, name)
        assert sub is not None, f"`planner {' '.join(argv)}`: no command {name!r}"
        command = sub
    options = {opt for param in command.params for opt in getattr(param, "opts", [])}
    options |= {opt for param in command.params for opt in getattr(param, "secondary_opts", [])}
    for word in words:
        if word.startswith("-"):
            assert word.split("=")[0] in options, f"`planner {' '.join(argv)}`: no option {word}"


def test_yaml_files_parse() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text(encoding="utf-8"))
    assert {"redis", "postgres", "label-studio", "planner", "worker"} <= set(compose["services"])
    gpu = compose["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]
    kinds = [d["kind"] for d in yaml.safe_load_all((DEPLOY / "k8s" / "planner.yaml").read_text())]
    assert kinds.count("Deployment") == 3


def test_every_planner_command_in_deploy_exists() -> None:
    calls = list(_planner_calls())
    commands = {argv[0] for _, argv in calls}
    assert {"run", "worker", "serve"} <= commands, commands
    for where, argv in calls:
        try:
            _check_argv(argv)
        except AssertionError as exc:
            pytest.fail(f"{where}: {exc}")


def test_every_planner_variable_in_deploy_is_a_setting() -> None:
    sections = Settings.model_fields
    for path in sorted(DEPLOY.rglob("*")):
        if not path.is_file():
            continue
        for name in set(ENV_NAME.findall(path.read_text(encoding="utf-8"))):
            section, _, key = name.removeprefix("PLANNER_").lower().partition("__")
            assert section in sections, f"{path}: {name}: no [{section}] section"
            model = sections[section].annotation
            fields = getattr(model, "model_fields", {})
            assert key in fields, f"{path}: {name}: [{section}] has no key {key!r}"


def _env(container: dict[str, object]) -> dict[str, str]:
    return {str(e["name"]): str(e.get("value")) for e in container.get("env", [])}  # type: ignore[attr-defined,union-attr]


def test_the_daemon_and_the_dashboard_share_the_reports_and_the_daemon_sees_the_models() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text(encoding="utf-8"))
    services = compose["services"]
    for name in ("planner", "dashboard"):
        folder = services[name]["environment"]["PLANNER_DASHBOARD__REPORTS_DIR"]
        assert any(v.split(":")[:2] == ["reports", folder] for v in services[name]["volumes"])
    # PID 1 reaps orphans (a killed scoring child's DataLoader processes)
    assert services["planner"]["init"] is True
    assert services["worker"]["init"] is True
    # the daemon chooses the model from the workers' model folder
    worker_models = [v for v in services["worker"]["volumes"] if ":/models" in v]
    assert worker_models[0] in services["planner"]["volumes"]
    documents = list(yaml.safe_load_all((DEPLOY / "k8s" / "planner.yaml").read_text()))
    pods = {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]["containers"][0]
        for d in documents
        if d["kind"] == "Deployment"
    }
    specs = {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]
        for d in documents
        if d["kind"] == "Deployment"
    }
    assert specs["planner-daemon"]["shareProcessNamespace"] is True
    assert specs["planner-worker"]["shareProcessNamespace"] is True
    for name in ("planner-daemon", "planner-dashboard"):
        folder = _env(pods[name])["PLANNER_DASHBOARD__REPORTS_DIR"]
        assert any(m["mountPath"] == folder for m in pods[name]["volumeMounts"]), name
    # the scoring child imports torch: 256 MiB killed it every cycle
    limit = pods["planner-daemon"]["resources"]["limits"]["memory"]
    assert limit.endswith("Gi") or int(limit.removesuffix("Mi")) >= 768


def test_the_systemd_units_run_where_relative_paths_are_writable() -> None:
    unit = (DEPLOY / "systemd" / "planner.service").read_text(encoding="utf-8")
    assert "WorkingDirectory=/var/lib/planner" in unit
    assert "ReadWritePaths=/var/lib/planner" in unit


def test_the_workers_keep_the_bootstrap_network_in_a_folder_they_share_and_can_write() -> None:
    """A task message does not carry the daemon's bootstrap folder: each worker's own
    setting names it, on a volume every worker (and the daemon) mounts, that it can write."""
    key = "PLANNER_WORKERS__BOOTSTRAP_DIR"
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text(encoding="utf-8"))
    services = compose["services"]
    folders = {services[name]["environment"][key] for name in ("planner", "worker")}
    (folder,) = folders
    mounts = [
        next(v for v in services[name]["volumes"] if v.endswith(f":{folder}"))
        for name in ("planner", "worker")
    ]
    assert mounts[0] == mounts[1], "one named volume for the daemon and the workers"
    assert mounts[0].split(":")[0] in compose["volumes"]
    # a new named volume takes its folder's owner in the image: the workers' user
    for image in ("worker", "daemon"):
        text = (DEPLOY / "docker" / f"{image}.Dockerfile").read_text(encoding="utf-8")
        assert re.search(rf"mkdir -p [^\n]*{folder}.*\n.*chown[^\n]* planner", text), image
    documents = list(yaml.safe_load_all((DEPLOY / "k8s" / "planner.yaml").read_text()))
    pods = {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]["containers"][0]
        for d in documents
        if d["kind"] == "Deployment"
    }
    claims = []
    for name in ("planner-daemon", "planner-worker"):
        folder = _env(pods[name])[key]
        (mount,) = [m for m in pods[name]["volumeMounts"] if m["mountPath"] == folder]
        claims.append((mount["name"], mount.get("subPath")))
    assert claims[0] == claims[1], "the daemon and the workers share the folder"
    # systemd: the worker's relative paths resolve in the daemon's folder, not under /
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read_string((DEPLOY / "systemd" / "planner-worker@.service").read_text())
    assert parser["Service"]["WorkingDirectory"] == "/var/lib/planner"


def test_the_workers_read_label_studio_s_local_storage_from_their_own_disk() -> None:
    """The image root the daemon sends is Label Studio's document root, mounted read-only in
    the workers: no such image goes through the server. Label Studio's data volume, which
    holds its database (every user's token), is not given to them."""
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text(encoding="utf-8"))
    services = compose["services"]
    env = services["planner"]["environment"]
    studio = services["label-studio"]
    root = studio["environment"]["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"]
    assert env["PLANNER_WORKERS__IMAGE_ROOT"] == root
    (images,) = [v for v in studio["volumes"] if f":{root}" in v]
    host = images[: images.rindex(f":{root}")]
    assert f"{host}:{root}:ro" in services["worker"]["volumes"]
    (data,) = [v for v in studio["volumes"] if v.endswith(":/label-studio/data")]
    volume = data.split(":")[0]
    assert not any(v.split(":")[0] == volume for v in services["worker"]["volumes"])
