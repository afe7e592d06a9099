"""The daemon's token refresher after a 401: a token file holding a refused token too, and a
rotated token reaching the scoring child, which reads Label Studio's images with it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from email.message import Message
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from integrations.label_studio.client import LabelStudioBackend
from planner.daemon.rotation import TokenInUse, token_refresher
from planner.daemon.run import _scorer, build_daemon
from planner.settings import Settings, load_settings
from planner.store import DatabaseLease, Store, ensure_project
from tests.unit.daemon.helpers import CLASSES, digits_project
from tests.unit.integrations.test_client_errors import personal_token
from tests.unit.workers.conftest import KeptAliveServer

OLD, NEW = "old-token", "new-token"


def test_an_expired_token_in_the_file_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("legacy-token\n")
    config = tmp_path / "planner.toml"
    config.write_text(
        f'[label_studio]\nurl = "http://127.0.0.1:9"\nproject_id = 1\ntoken_file = "{token_file}"\n'
    )
    settings = load_settings(config, environ=False)
    with LabelStudioBackend("http://127.0.0.1:9", "legacy-token") as backend:
        refresh = token_refresher(settings, backend)
        token_file.write_text(personal_token(timedelta(days=-1)))  # rotated, but expired
        assert refresh() is False
        assert "refused too" in caplog.text
        assert "expired" in caplog.text
        assert refresh() is False, "the same refused token is not tried again"


class _Images(KeptAliveServer):
    """Label Studio's ``/data/local-files/``: the digit images, to the new token only; the
    ``Authorization`` headers it was sent are kept."""

    def __init__(self, root: Path) -> None:
        self.sent: list[str] = []
        super().__init__(self._body, self._status)
        self.root = root

    def _body(self, path: str) -> bytes:
        return (self.root / parse_qs(urlsplit(path).query)["d"][0]).read_bytes()

    def _status(self, _path: str, headers: Message) -> int:
        self.sent.append(str(headers["Authorization"]))
        return 200 if headers["Authorization"] == f"Token {NEW}" else 401


@pytest.fixture
def images(digit_files: tuple[Path, list[int]]) -> Iterator[_Images]:
    server = _Images(digit_files[0])
    yield server
    server.stop()


def _settings(images: _Images, store: Store, tmp_path: Path, project_id: int) -> Settings:
    """No image root: the scoring reads every image from Label Studio, with the token of
    ``label_studio.token_file`` (the old one, until the operator rotates it)."""
    token_file = tmp_path / "token"
    token_file.write_text(OLD + "\n")
    return Settings(
        label_studio={"url": images.url, "project_id": project_id, "token_file": token_file},
        store={"url": store.engine.url.render_as_string(hide_password=False)},
        planning={"batch_size": 8},
        quotas={"7": {"target": 30}},
        workers={"model": "tests.unit.workers.test_scoring:tiny_factory", "num_workers": 0},
        artifacts={"dir": tmp_path / "artifacts"},
    )


def test_the_scoring_child_reads_the_images_with_the_rotated_token(
    images: _Images, store: Store, tmp_path: Path, no_planner_env: None
) -> None:
    with store.session() as session:
        project = ensure_project(session, ls_project_id=1)
        project.classes = list(CLASSES)
        session.add(project)
        session.flush()
        pid = int(project.id or 0)
    settings = _settings(images, store, tmp_path, project_id=1)
    token = TokenInUse.of(settings)
    score = _scorer(settings, store, token=token)
    pool = [(i + 1, f"/data/local-files/?d=digits/{i:04d}.png") for i in range(8)]
    with LabelStudioBackend(images.url, OLD) as backend:
        refresh = token_refresher(settings, backend, token)
        (tmp_path / "token").write_text(NEW + "\n")  # the operator rotates the token
        assert refresh(), "a sync's 401 made the daemon take the new token"
        assert score(pid, pool)
    assert set(images.sent) == {f"Token {NEW}"}, "the child was given the token in use"


def test_a_cycle_whose_images_are_refused_rereads_the_token_and_scores_again(
    images: _Images,
    store: Store,
    tmp_path: Path,
    digit_files: tuple[Path, list[int]],
    no_planner_env: None,
) -> None:
    """The token file was rotated after the last sync: the scoring child meets the 401
    first, and it comes back as the AuthError the daemon re-reads the token file for."""
    project = digits_project(digit_files[1], labelled=100, tasks=150)
    settings = _settings(images, store, tmp_path, project_id=project.pid)
    token = TokenInUse.of(settings)
    lease = DatabaseLease(store.engine, "p", holder="only")
    daemon = build_daemon(settings, backend=project.fake, store=store, lease=lease, token=token)
    # the in-memory Label Studio serves the project; the real client takes the token
    with LabelStudioBackend(images.url, OLD) as client:
        daemon.refresh_token = token_refresher(settings, client, token)
        (tmp_path / "token").write_text(NEW + "\n")
        outcome = daemon.cycle()
    assert outcome.why == "pushed", outcome.why
    assert f"Token {OLD}" in images.sent, "the first scoring was refused"
    assert images.sent[-1] == f"Token {NEW}"
