"""One real Label Studio per test session, shared by the xdist workers."""

from __future__ import annotations

import fcntl
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from integrations.label_studio import launcher
from integrations.label_studio.workbench import LabelStudioWorkbench


def shared_dir(config: pytest.Config, factory: pytest.TempPathFactory) -> Path:
    """A folder every process of this test session sees (the workers' common parent)."""
    base = factory.getbasetemp()
    return base.parent if hasattr(config, "workerinput") else base


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def label_studio(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> launcher.ServerState:
    root = shared_dir(request.config, tmp_path_factory) / "label-studio"
    root.mkdir(exist_ok=True)
    with (root / "lock").open("w") as lock:
        # One process starts it, the others wait here and then find it healthy via the state
        # file; install() is a no-op when label-studio is already in its own venv.
        fcntl.flock(lock, fcntl.LOCK_EX)
        launcher.install()
        state = launcher.start(root / "data", document_root=root / "images", port=free_port())
    return state  # stopped by pytest_sessionfinish in tests/conftest.py


@pytest.fixture(scope="session")
def personal_access_token(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    label_studio: launcher.ServerState,
) -> str:
    """The preset user's personal access token (a JWT refresh token), made once per server.

    Label Studio keeps one personal access token per user and answers 409 to a second
    ``POST /api/token/``, so the xdist workers share the first one through a file.
    """
    root = shared_dir(request.config, tmp_path_factory) / "label-studio"
    saved = root / "personal-access-token"
    with (root / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not saved.exists():
            response = httpx.post(
                f"{label_studio.url}/api/token/",
                headers={"Authorization": f"Token {label_studio.token}"},
                timeout=30,
            )
            response.raise_for_status()
            saved.write_text(response.json()["token"])
        return saved.read_text()


@pytest.fixture(scope="session")
def backend(label_studio: launcher.ServerState) -> Iterator[LabelStudioWorkbench]:
    """The adapter with the project-setup and simulated-annotator helpers."""
    with LabelStudioWorkbench(label_studio.url, label_studio.token) as connected:
        yield connected


@pytest.fixture
def images(label_studio: launcher.ServerState, request: pytest.FixtureRequest) -> Path:
    """A fresh folder under the server's document root for one test's images."""
    folder = Path(label_studio.document_root) / request.node.name.replace("[", "_").strip("]")
    folder.mkdir(parents=True, exist_ok=True)
    return folder
