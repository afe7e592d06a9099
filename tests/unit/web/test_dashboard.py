"""The dashboard and webhook receiver, through Starlette's test client (a real ASGI app)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from planner.artifacts import write_artifact
from planner.errors import ConfigError
from planner.health import ScoringRun
from planner.settings import WorkerSettings
from planner.status import scoring_lines, served_lines, state_lines
from planner.store import Store, ensure_project, open_store
from planner.store.db import make_engine
from planner.store.models import Task
from planner.store.sync_state import record_scoring
from planner.telemetry import Telemetry
from planner.web import COOKIE, SECRET_HEADER, WebConfig, check_exposure, create_app
from tests.unit.artifacts.helpers import small_artifact

TOKEN = "dashboard-token-123"
SECRET = "hook-secret-456"


@pytest.fixture
def config(tmp_path: Path) -> WebConfig:
    reports = tmp_path / "reports"
    for day, count in (("2026-11-20", 10), ("2026-11-21", 12)):
        folder = reports / day
        folder.mkdir(parents=True)
        folder.joinpath("report.html").write_text(
            f"<html><body><h1>Report {day}</h1><p>Wheelchair {count}</p></body></html>",
            encoding="utf-8",
        )
        folder.joinpath("report.json").write_text(json.dumps({"Wheelchair": count}))
    artifacts = tmp_path / "artifacts"
    (artifacts / "v0001").mkdir(parents=True)
    (artifacts / "v0001" / "weights.json").write_text('{"Wheelchair": 8.3}')
    (artifacts / "v0001" / "leak").symlink_to("/etc/hostname")
    return WebConfig(reports_dir=reports, artifacts_dir=artifacts, webhook_secret=SECRET)


def _client(config: WebConfig, **kwargs: object) -> TestClient:
    app = create_app(config, **kwargs)  # type: ignore[arg-type]
    return TestClient(app, base_url="http://127.0.0.1", follow_redirects=False)


def test_index_shows_the_latest_report_with_history(config: WebConfig) -> None:
    page = _client(config).get("/")
    assert page.status_code == 200
    assert "Report 2026-11-21" in page.text
    assert "Wheelchair 12" in page.text
    assert 'href="/reports/2026-11-20/report.html"' in page.text


def test_a_day_without_its_html_report_leaves_the_latest_one_shown(config: WebConfig) -> None:
    # today's report failed after its JSON: yesterday's is the latest there is
    broken = config.reports_dir / "2026-11-22"
    broken.mkdir()
    broken.joinpath("report.json").write_text("{}")
    page = _client(config).get("/")
    assert "Wheelchair 12" in page.text
    assert "No report yet" not in page.text
    assert "2026-11-22" not in page.text, "a day with no page to show is not linked"


def test_reports_are_served_by_day_and_nothing_else(config: WebConfig) -> None:
    client = _client(config)
    assert client.get("/reports/2026-11-20/report.json").json() == {"Wheelchair": 10}
    assert client.get("/reports/2026-11-20/secret.txt").status_code == 404
    assert client.get("/reports/..%2F..%2Fetc/report.html").status_code == 404
    assert client.get("/reports/2026-11-19/report.html").status_code == 404


def test_artifacts_are_listed_and_downloaded_but_links_are_not(config: WebConfig) -> None:
    client = _client(config)
    listing = client.get("/artifacts/")
    assert "v0001/weights.json" in listing.text
    assert "leak" not in listing.text
    download = client.get("/artifacts/v0001/weights.json")
    assert download.json() == {"Wheelchair": 8.3}
    assert "attachment" in download.headers["content-disposition"]
    assert client.get("/artifacts/v0001/leak").status_code == 404


def test_only_emitted_versions_are_served_not_the_caches_beside_them(config: WebConfig) -> None:
    # by default the workers' pixel cache and the bootstrap networks live in the artifacts folder
    root = config.artifacts_dir
    for folder, name in (("pixel-cache", "data.mdb"), ("bootstrap", "net.pt")):
        (root / folder).mkdir()
        (root / folder / name).write_bytes(b"decoded pixels")
    emitted = write_artifact(root, small_artifact())
    client = _client(config)
    listing = client.get("/artifacts/").text
    assert "data.mdb" not in listing
    assert "net.pt" not in listing
    assert client.get("/artifacts/pixel-cache/data.mdb").status_code == 404
    assert client.get("/artifacts/bootstrap/net.pt").status_code == 404
    assert f"{emitted.version}/artifact.json" in listing
    download = client.get(f"/artifacts/{emitted.version}/artifact.json")
    assert download.status_code == 200
    assert download.content == (emitted.path / "artifact.json").read_bytes()


def test_a_token_protects_everything_but_health_and_webhook(config: WebConfig) -> None:
    guarded = replace(config, token=TOKEN)
    client = _client(guarded)
    for path in ("/", "/metrics", "/artifacts/", "/reports/2026-11-21/report.json"):
        assert client.get(path).status_code == 401, path
        assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert client.get("/healthz").status_code == 200
    first = client.get(f"/artifacts/?token={TOKEN}")
    assert first.status_code == 303
    assert "token=" not in first.headers["location"]
    assert TOKEN in first.headers["set-cookie"]
    assert "httponly" in first.headers["set-cookie"].lower()
    # lax: a link opened from chat or mail (a cross-site navigation) still carries it
    assert "samesite=lax" in first.headers["set-cookie"].lower()
    browser = _client(guarded)
    browser.cookies.set(COOKIE, TOKEN)
    assert browser.get("/artifacts/").status_code == 200
    # a browser holding the cookie that opens a link with the token still drops it from the URL
    again = browser.get(f"/?token={TOKEN}")
    assert again.status_code == 303
    assert "token=" not in again.headers["location"]


def test_exposing_without_a_token_is_refused() -> None:
    with pytest.raises(ConfigError, match="needs a token"):
        check_exposure("0.0.0.0", None)  # noqa: S104 - the point of the test
    check_exposure("0.0.0.0", TOKEN)  # noqa: S104
    check_exposure("127.0.0.1", None)
    check_exposure("::1", None)


def test_webhook_needs_the_secret_and_only_triggers(config: WebConfig) -> None:
    actions: list[str] = []
    client = _client(config, on_webhook=actions.append)
    body = {"action": "ANNOTATION_CREATED", "annotation": {"id": 5}}
    assert client.post("/webhook/label-studio", json=body).status_code == 403
    wrong = {SECRET_HEADER: "nope"}
    assert client.post("/webhook/label-studio", json=body, headers=wrong).status_code == 403
    right = {SECRET_HEADER: SECRET}
    assert client.post("/webhook/label-studio", json=body, headers=right).status_code == 204
    bad = client.post("/webhook/label-studio", content=b"{", headers=right)
    assert bad.status_code == 400
    assert actions == ["ANNOTATION_CREATED"]
    no_secret = WebConfig(config.reports_dir, config.artifacts_dir)
    closed = _client(no_secret, on_webhook=actions.append)
    assert closed.post("/webhook/label-studio", json=body, headers=right).status_code == 403


def test_health_and_metrics(config: WebConfig) -> None:
    telemetry = Telemetry()
    telemetry.set_quotas({"Wheelchair": 0.25}, {"Wheelchair": 90})
    state = {"ok": False, "label_studio": "unreachable"}
    client = _client(config, telemetry=telemetry, health=lambda: state)
    health = client.get("/healthz")
    assert health.status_code == 503
    assert health.json()["label_studio"] == "unreachable"
    text = client.get("/metrics").text
    assert 'planner_quota_progress{cls="Wheelchair"} 0.25' in text
    assert 'planner_quota_deficit{cls="Wheelchair"} 90.0' in text


def test_without_a_token_only_loopback_names_are_answered(config: WebConfig) -> None:
    app = create_app(config)
    rebound = TestClient(app, base_url="http://evil.example:8765").get("/")
    assert rebound.status_code == 403
    assert "dashboard.token" in rebound.text
    assert TestClient(app, base_url="http://localhost:8765").get("/").status_code == 200
    assert TestClient(app, base_url="http://[::1]:8765").get("/").status_code == 200
    assert TestClient(app, base_url="http://evil.example").get("/healthz").status_code == 200
    # with a token the token decides, whatever the name
    guarded = create_app(replace(config, token=TOKEN))
    named = TestClient(guarded, base_url="http://planner.example")
    assert named.get("/", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_the_banner_alerts_on_faults_not_on_projects_no_daemon_watched_yet(
    config: WebConfig,
) -> None:
    lines = [(1, "unknown"), (2, "ok"), (3, "unreachable since 2026-11-21 06:31:00 UTC")]
    page = _client(config, states=lambda: lines).get("/").text
    assert 'role="alert"' in page
    assert "project 3: Label Studio unreachable" in page
    assert "project 1" not in page
    quiet = _client(config, states=lambda: lines[:2]).get("/").text
    assert 'role="alert"' not in quiet


def test_the_last_scoring_runs_warnings_are_alerts_until_a_clean_run(
    config: WebConfig, store_url: str
) -> None:
    failed = "1 of 3 chunk(s) failed and were left unscored: <script>x()</script>"
    ended = datetime(2026, 12, 7, 6, 31, tzinfo=UTC)
    with open_store(store_url) as store:
        with store.session() as session:
            watched = int(ensure_project(session, ls_project_id=7).id or 0)
            other = int(ensure_project(session, ls_project_id=8).id or 0)
            record_scoring(session, watched, ScoringRun(ended, "m-1", (failed,), 1))
            record_scoring(session, other, ScoringRun(ended, "m-9", ("no BALD",)))
        page = _client(config, warnings=lambda: scoring_lines(store)).get("/").text
        assert 'role="alert"' in page
        assert (
            "project 7: last scoring run 2026-12-07 06:31 UTC (model m-1, 1 chunk(s) failed for "
            "good): 1 of 3 chunk(s) failed and were left unscored: &lt;script&gt;x()" in page
        )
        assert "<script>" not in page
        assert "project 8: last scoring run 2026-12-07 06:31 UTC (model m-9): no BALD" in page
        assert "Wheelchair 12" in page, "the report is shown all the same"
        # the daemon's own page: its project's alone
        mine = _client(config, warnings=lambda: scoring_lines(store, 7)).get("/").text
        assert "project 7: last scoring run" in mine
        assert "project 8" not in mine
        with store.session() as session:
            record_scoring(session, watched, ScoringRun(ended, "m-2"))
        clean = _client(config, warnings=lambda: scoring_lines(store, 7)).get("/").text
        assert 'role="alert"' not in clean


def test_images_label_studio_serves_to_the_workers_are_alerts_until_the_folder_is_set(
    config: WebConfig, store_url: str
) -> None:
    images = {
        7: ["/data/local-files/?d=a.png", "/data/local-files/?d=b.png", "/data/upload/7/c.png"],
        8: ["/data/local-files/?d=d.png", "/images/e.png"],
    }
    with open_store(store_url) as store:
        with store.session() as session:
            for ls_id, refs in images.items():
                key = int(ensure_project(session, ls_project_id=ls_id).id or 0)
                for i, ref in enumerate(refs):
                    session.add(Task(project_id=key, ls_task_id=i + 1, image=ref))
            session.add(
                Task(project_id=key, ls_task_id=9, image="/data/upload/8/f.png", state="labelled")
            )

        def page(workers: WorkerSettings, project: int | None = None) -> str:
            lines = lambda: served_lines(store, workers, project)  # noqa: E731
            return " ".join(_client(config, warnings=lines).get("/").text.split())

        said = "unlabelled tasks&#x27; images are served by Label Studio from"
        shown = page(WorkerSettings())
        assert 'role="alert"' in shown
        assert (
            f"project 7: 2 {said} its local storage, some 16 core-ms of its CPU each "
            "(docs/benchmarks.md); set workers.image_root to the storage&#x27;s document root "
            "where the workers run"
        ) in shown
        assert f"project 7: 1 {said} the files uploaded into it" in shown
        assert f"project 8: 1 {said} its local storage" in shown
        assert f"project 8: 1 {said} the files" not in shown, "its upload is labelled"
        mine = page(WorkerSettings(image_root=Path("/images")), 7)
        assert "workers.image_root" not in mine
        assert f"project 7: 1 {said} the files uploaded into it" in mine
        assert "project 8" not in mine
        both = WorkerSettings(image_root=Path("/images"), upload_root=Path("/uploads"))
        assert 'role="alert"' not in page(both)


def test_a_store_not_there_yet_is_an_alert_on_the_page(config: WebConfig, store_url: str) -> None:
    # as `planner serve` wires it: nothing created or migrated; the daemon owns the schema
    store = Store(make_engine(store_url, create=False))
    try:
        page = _client(
            config, states=lambda: state_lines(store), warnings=lambda: scoring_lines(store)
        ).get("/")
        alone = _client(config, warnings=lambda: scoring_lines(store)).get("/").text
    finally:
        store.dispose()
    assert page.status_code == 200
    assert 'role="alert"' in page.text
    assert page.text.count("the planner database") == 1, "the same error once, not twice"
    assert "scoring warnings unknown:" in alone
    assert "the planner database" in alone
    assert "Wheelchair 12" in page.text, "the report is shown all the same"
