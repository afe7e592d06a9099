"""The Label Studio adapter: the only module that imports ``label_studio_sdk`` (STYLE 6).

``LabelStudioBackend`` implements ``planner.ports.AnnotationBackend``; SDK and HTTP errors become
the planner's (``TransientError``, retried a few times, then raised; ``ConfigError`` saying what
to fix). It accepts a legacy token (sent as ``Token …``) or a personal access token (a JWT
refresh token the SDK exchanges at ``/api/token/refresh/`` for a short-lived access token).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Self, TypeVar

import httpx
from label_studio_sdk import PredictionRequest
from label_studio_sdk.base_client import LabelStudioBase
from label_studio_sdk.core.api_error import ApiError
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from integrations.label_studio.mapping import (
    RANK_FIELD,
    SAMPLING,
    TAG_PREFIX,
    VIEW_MARK,
    VIEW_TITLE,
    WEBHOOK_ACTIONS,
    as_dict,
    batch_scores,
    ls_time,
    parse_time,
    planner_view,
    rank_of,
    rank_value,
    remote_project,
    remote_task,
    view_data,
)
from planner.core.labels import parse_label_config
from planner.errors import (
    AuthError,
    ConfigError,
    GoneError,
    IncompleteListingError,
    LabelConfigError,
    PlannerError,
    SlowError,
    TransientError,
    UnreachableError,
    UrlRefusedError,
)
from planner.ports import WEBHOOK_SECRET_HEADER, PushBatch, PushResult, RemoteProject, RemoteTask

__all__ = ["SAMPLING", "TAG_PREFIX", "VIEW_TITLE", "LabelStudioBackend", "translate"]

_T = TypeVar("_T")
_ID_CHUNK = 200
"""Task ids per ``in_list`` filter: the query travels in the URL."""
_STAMP_PAGE = 5000
"""Tasks asked for per page of the id listing (the server may send fewer)."""


class LabelStudioBackend:
    """A connection to one Label Studio server (owns its HTTP pool: close it, or use ``with``)."""

    def __init__(self, url: str, token: str, *, timeout_s: float = 30.0, attempts: int = 3) -> None:
        self.url = url.rstrip("/")
        self._attempts = attempts
        self._timeout_s = timeout_s
        self._http = httpx.Client(timeout=timeout_s)
        self._token = token
        try:
            self._sdk: Any = self._client(token)
        except PlannerError:
            self._http.close()
            raise

    def _client(self, token: str) -> Any:
        # The SDK's models are Any here: mapping.py turns what it returns into our types. The
        # base client, not ``LabelStudio``: its export and label-interface extensions import
        # pandas and friends (about 60 MB a daemon would carry for nothing). It checks a
        # personal access token's expiry as it is built (ApiError 401): translated too.
        try:
            return self._build(token)
        except _Unauthorized as exc:
            raise exc.error from None

    def _build(self, token: str) -> Any:
        return self._once(
            lambda: LabelStudioBase(
                # the trailing slash keeps a path prefix (https://host/label-studio/) in the
                # URL the SDK refreshes tokens at (urljoin); its other URLs are joined by hand
                base_url=f"{self.url}/",
                api_key=token,
                timeout=self._timeout_s,
                max_retries=0,  # retries are ours (tenacity), with the errors translated
                httpx_client=self._http,
            ),
            "a connection",
        )

    def use_token(self, token: str) -> None:
        """Authenticate with ``token`` from now on (a rotated token), on the same connections."""
        self._sdk = self._client(token)
        self._token = token

    @property
    def sdk(self) -> Any:
        """The SDK client, for the test and demo helpers in ``workbench.py``."""
        return self._sdk

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- reading ---------------------------------------------------------------------------
    def check(self, project_id: int) -> RemoteProject:
        """Connect, authenticate and read the project's label config; errors say what to fix."""
        project = self.project(project_id)
        try:
            parse_label_config(project.label_config)
        except LabelConfigError as exc:
            raise LabelConfigError(f"project {project_id} on {self.url}: {exc}") from None
        return project

    def project(self, project_id: int) -> RemoteProject:
        raw = self.call(lambda: self._sdk.projects.get(id=project_id), f"project {project_id}")
        return remote_project(raw)

    def iter_tasks(
        self, project_id: int, *, updated_after: datetime | None = None, page_size: int = 500
    ) -> Iterator[RemoteTask]:
        query: dict[str, Any] = {"ordering": ["tasks:updated_at"]}
        if updated_after is not None:
            item = {
                "filter": "filter:tasks:updated_at",
                "operator": "greater",
                "type": "Datetime",
                "value": ls_time(updated_after),
            }
            query["filters"] = {"conjunction": "and", "items": [item]}
        for raw in self._list(project_id, query, page_size=page_size):
            yield remote_task(raw)

    def tasks_by_id(self, project_id: int, ids: Iterable[int]) -> Iterator[RemoteTask]:
        wanted = sorted({int(i) for i in ids})
        for start in range(0, len(wanted), _ID_CHUNK):
            query = {"filters": _any_of(_id_filter(wanted[start : start + _ID_CHUNK]))}
            for raw in self._list(project_id, query):
                yield remote_task(raw)

    def _list(
        self, project_id: int, query: Mapping[str, Any], page_size: int = 500
    ) -> Iterator[Any]:
        what = f"tasks of project {project_id}"
        # resolve_uri=False: the server otherwise rewrites storage references (s3://, gs://,
        # azure) into its own resolve links, and every URL into a file-proxy link when the
        # project has task_data_login; the planner stores, and writes back, the raw data.
        pager = self.call(
            lambda: self._sdk.tasks.list(
                project=project_id,
                page_size=page_size,
                fields="all",
                query=json.dumps(query),
                resolve_uri=False,
            ),
            what,
        )
        yield from self.iterate(pager, what)

    def task_ids(self, project_id: int) -> set[int]:
        return set(self.task_stamps(project_id))

    def task_stamps(self, project_id: int) -> dict[int, datetime]:
        """Every task's ``updated_at``, read page by page until the ``total`` the server
        reports (it caps the page size at its ``TASK_API_PAGE_SIZE_MAX``, so a short page is
        no end). A listing that comes back short of the total (tasks deleted between two
        pages shift the rest past the reader) raises ``IncompleteListingError``: a task
        missing from it is not known to be deleted. Any failed page raises."""
        stamps: dict[int, datetime] = {}
        total = 0
        for page in itertools.count(1):
            params: dict[str, object] = {"project": project_id, "page": page}
            params |= {"page_size": _STAMP_PAGE, "fields": "task_only", "include": "id,updated_at"}
            params["resolve_uri"] = "false"  # the data is not sent, but would still be resolved
            try:
                data = self.get("/api/tasks/", params=params)
            except GoneError:
                if page == 1:
                    raise
                break  # 404 "Invalid page": fewer pages than the total promised
            if not isinstance(data, dict):
                raise translate(200, "", self.url, f"tasks of project {project_id}")
            rows = data.get("tasks") or []
            if isinstance(data.get("total"), int):  # else: until an empty page
                total = max(total, data["total"])
            before = len(stamps)
            stamps.update((int(row["id"]), parse_time(row.get("updated_at"))) for row in rows)
            if len(stamps) == before or 0 < total <= len(stamps):
                break
        if len(stamps) < total:
            raise IncompleteListingError(
                f"the task list of project {project_id} on {self.url} came back with "
                f"{len(stamps)} of its {total} tasks (tasks deleted or added while it was "
                "read); nothing is marked deleted, the next sync reads it again"
            )
        return stamps

    # -- pushing ---------------------------------------------------------------------------
    def push_batch(self, project_id: int, batch: PushBatch) -> PushResult:
        """Predictions scored by rank, Uncertainty sampling on the batch tag, a "Next batch" tab.

        The steps keep the project serving a batch all along: stale and duplicate predictions
        of this tag go first (one prediction per task and tag), the new ones come in one bulk
        import, then the ranks, the project's model_version and the tab; only then are the
        earlier batches' planner predictions deleted (before, the project's model_version
        would name a tag with none left, and sampling falls back to random). Predictions of
        other models are never touched. Each batch task's rank goes into its data
        (``RANK_FIELD``, which the tab orders by) and leaves the tasks of an older batch.
        Prediction deletes and rank writes bump the tasks' ``updated_at``; pushing the same
        batch again writes nothing, and a push cut short anywhere is finished by the next.
        Tasks deleted since the batch was planned are left out (``PushResult.missing``), those
        deleted during the push too (an import Label Studio refuses for a task deleted since
        the listing is sent once more without the tasks gone); with none left, nothing is
        written.
        """
        scores, missing = batch_scores(batch, self.task_ids(project_id))
        if not scores:  # every task is gone: leave the server serving what it serves
            return PushResult(created=0, removed=0, view_id=None, missing=missing)
        try:
            created, superseded = self._predict(project_id, batch.tag, scores)
        except (AuthError, GoneError):
            raise
        except ConfigError:
            # Label Studio refuses the whole import (400 'invalid "task" field') when one of
            # its tasks was deleted since the listing: once, without the tasks gone since
            scores, since = batch_scores(batch, self.task_ids(project_id))
            if not set(since) - set(missing):
                raise
            missing = tuple(sorted({*missing, *since}))
            if not scores:
                return PushResult(created=0, removed=0, view_id=None, missing=missing)
            created, superseded = self._predict(project_id, batch.tag, scores)
        ranked = sorted(scores, key=scores.__getitem__)
        ranks = {task: rank_value(i) for i, task in enumerate(ranked, 1)}
        gone = self._write_ranks(project_id, ranks)
        if gone:  # deleted since the listing: out of the batch, like those deleted before
            ranked = [task for task in ranked if task not in gone]
            missing = tuple(sorted({*missing, *gone}))
        # The server accepts a model_version only once predictions carry it.
        self.call(
            lambda: self._sdk.projects.update(
                id=project_id, sampling=SAMPLING, model_version=batch.tag
            ),
            f"project {project_id} sampling",
        )
        view_id = self._upsert_view(project_id, ranked)
        for prediction in superseded:
            self._delete_prediction(prediction, f"predictions of project {project_id}")
        removed = len(superseded)
        return PushResult(created=created, removed=removed, view_id=view_id, missing=missing)

    def _predict(
        self, project_id: int, tag: str, scores: Mapping[int, float]
    ) -> tuple[int, list[int]]:
        """The batch's predictions (one per task, of ``tag`` and its score), stale and
        duplicate ones of ``tag`` deleted first: how many were imported, and the planner
        predictions of earlier batches, for the caller to delete once the batch is served."""
        what = f"predictions of project {project_id}"
        existing = self.call(lambda: self._sdk.predictions.list(project=project_id), what)
        keep: set[int] = set()
        superseded: list[int] = []
        for old in existing:
            version, task = old.model_version or "", int(old.task or 0)
            if not version.startswith(TAG_PREFIX):
                continue
            if version != tag:
                superseded.append(int(old.id))
                continue
            if (
                task in scores
                and task not in keep
                and abs(float(old.score or 0.0) - scores[task]) < 1e-9
            ):
                keep.add(task)
                continue
            self._delete_prediction(int(old.id), what)
        fresh = [
            PredictionRequest(task=task, result=[], score=score, model_version=tag)
            for task, score in scores.items()
            if task not in keep
        ]
        if fresh:
            self.post(
                lambda: self._sdk.projects.import_predictions(id=project_id, request=fresh),
                what,
                then="the next push keeps what landed and imports the rest",
            )
            _pause_for_tests()
        return len(fresh), superseded

    def _delete_prediction(self, prediction_id: int, what: str) -> None:
        # a 404: deleted already, by someone else or by a first try whose answer timed out
        with contextlib.suppress(GoneError):
            self.call(lambda: self._sdk.predictions.delete(id=prediction_id), what)

    def _write_ranks(self, project_id: int, ranks: Mapping[int, str]) -> set[int]:
        """Set ``RANK_FIELD`` on the batch tasks and remove it from every other task; the batch
        tasks deleted meanwhile (not listed, or gone at their write).

        ``tasks.update`` replaces the whole data dict, so each write sends the task's data back
        with only the rank changed; tasks already holding the right rank are not written.
        """
        ids = sorted(ranks)
        marked: dict[str, Any] = {"filter": f"filter:tasks:data.{RANK_FIELD}", "value": False}
        marked |= {"operator": "empty", "type": "String"}
        queries: list[list[dict[str, Any]]] = [[marked]] + [
            _id_filter(ids[start : start + _ID_CHUNK]) for start in range(0, len(ids), _ID_CHUNK)
        ]
        # Read everything before writing: a write drops a task out of the "marked" listing,
        # which would shift the pages still to come.
        current: dict[int, tuple[RemoteTask, str | None]] = {}
        for items in queries:
            for raw in self._list(project_id, {"filters": _any_of(items)}):
                task = remote_task(raw)
                current[task.id] = (task, rank_of(raw))
        gone = set(ranks) - set(current)
        for task_id, (task, rank) in sorted(current.items()):
            want = ranks.get(task_id)
            if rank == want:
                continue
            data = dict(task.data) | ({} if want is None else {RANK_FIELD: want})
            try:
                self._update_task(task_id, data)
            except GoneError:
                gone.add(task_id)  # deleted since the listing
        return gone & set(ranks)

    def _update_task(self, task_id: int, data: Mapping[str, Any]) -> None:
        # the SDK looked up at each try: a 401 rebuilds it (``call``)
        self.call(
            lambda: self._sdk.tasks.update(id=str(task_id), data=dict(data)),
            f"rank of task {task_id}",
        )

    def _delete(self, kind: str, item_id: int | str, what: str) -> None:
        """Delete the SDK's ``kind`` (``views``, ``webhooks``) ``item_id``."""
        self.call(lambda: getattr(self._sdk, kind).delete(id=item_id), what)

    def ensure_webhook(self, project_id: int, url: str, *, secret: str) -> int:
        """One active webhook of the project to ``url``; created, updated or left as it is."""
        what = f"webhooks of project {project_id}"
        wanted: dict[str, Any] = {
            "url": url,
            "actions": list(WEBHOOK_ACTIONS),
            "headers": {WEBHOOK_SECRET_HEADER: secret},
            "send_payload": True,
            "send_for_all_actions": False,
            "is_active": True,
        }
        hooks = self.call(lambda: self._sdk.webhooks.list(project=str(project_id)), what)
        mine = [as_dict(h) for h in hooks if h.url == url and int(h.project or 0) == project_id]
        if not mine:
            made = self.post(
                lambda: self._sdk.webhooks.create(project=project_id, **wanted),
                what,
                then="the next registration finds it by its URL",
            )
            return int(made.id)
        first, *extra = mine
        for duplicate in extra:
            self._delete("webhooks", int(duplicate["id"]), what)
        current = {key: first.get(key) for key in wanted}
        current["actions"] = sorted(current["actions"] or [])
        if current != {**wanted, "actions": sorted(WEBHOOK_ACTIONS)}:
            self.call(lambda: self._sdk.webhooks.update(id=int(first["id"]), **wanted), what)
        return int(first["id"])

    def _upsert_view(self, project_id: int, ordered_ids: Sequence[int]) -> int:
        data = view_data(VIEW_TITLE, ordered_ids)
        views = self.call(lambda: self._sdk.views.list(project=project_id), "views")
        # a user's tab of the same title is left alone; a marked tab of ours comes first
        mine = [v for v in views if planner_view(v.data) and v.id is not None]
        mine.sort(key=lambda v: VIEW_MARK not in (v.data or {}))
        what = f'the "{VIEW_TITLE}" view of project {project_id}'
        for extra in mine[1:]:
            # a second tab of ours: a create retried after a timeout the server had already
            # committed, or two daemons at once; it would go on serving an old batch
            self._delete("views", str(extra.id), what)
        if mine:
            view = self.call(
                lambda: self._sdk.views.update(id=str(mine[0].id), project=project_id, data=data),
                what,
            )
        else:
            view = self.post(
                lambda: self._sdk.views.create(project=project_id, data=data),
                what,
                then="the next push finds it and updates it",
            )
        return int(view.id)

    # -- plumbing (also used by workbench.py) ------------------------------------------------
    def get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        """GET a JSON endpoint the SDK has no method for, with errors translated."""
        # the SDK's authenticated httpx wrapper, read at each try (a 401 rebuilds the client)
        return self.call(
            lambda: _json(
                self._sdk._client_wrapper.httpx_client.request(
                    path.lstrip("/"), method="GET", params=params
                )
            ),
            path,
        )

    def iterate(self, pager: Any, what: str) -> Iterator[Any]:
        """Items of an SDK pager, page by page; each page fetch is retried and translated like
        ``call``, the same page asked for again (a page's ``get_next`` fetches the next page
        number it was made with). The server answers 404 past the last page: only that ends
        the listing early; any other failure that outlasts the retries is raised.
        """
        page: Any = pager
        while True:
            yield from page.items or ()
            if not page.has_next or page.get_next is None:
                return
            try:
                page = self.call(page.get_next, what)
            except GoneError:
                return  # past the last page
            if page is None or not page.items:
                return

    def post(self, action: Callable[[], _T], what: str, *, then: str) -> _T:
        """``call`` for a create the server may have committed when its answer is lost (a
        timeout, a cut connection, a 5xx): tried once, never repeated blindly (that would
        create it twice); the ``TransientError`` says that ``then`` the caller, idempotent,
        finds what landed and completes the rest."""
        try:
            return self.call(action, what, attempts=1)
        except TransientError as exc:
            raise type(exc)(f"{exc}; not sent again, as it may have landed: {then}") from None

    def call(self, action: Callable[[], _T], what: str, *, attempts: int | None = None) -> _T:
        """``action()`` with SDK errors translated; transient ones retried a few times.

        A 401 with a personal access token rebuilds the client once (the SDK then fetches a
        fresh access token: the cached one may be revoked, or expired by the server's clock
        but not by ours) and tries ``action`` once more.
        """
        try:
            return self._retried(action, what, attempts)
        except _Unauthorized as exc:
            if not _is_jwt(self._token):
                raise exc.error from None
        self._sdk = self._client(self._token)
        try:
            return self._retried(action, what, attempts)
        except _Unauthorized as exc:
            raise exc.error from None

    def _retried(self, action: Callable[[], _T], what: str, attempts: int | None) -> _T:
        retrying = Retrying(
            retry=retry_if_exception_type(TransientError),
            stop=stop_after_attempt(attempts or self._attempts),
            wait=wait_exponential(multiplier=0.5, max=5),
            reraise=True,
        )
        for attempt in retrying:
            with attempt:
                return self._once(action, what)
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    def _once(self, action: Callable[[], _T], what: str) -> _T:
        try:
            return action()
        except ApiError as exc:
            error = translate(exc.status_code or 0, str(exc.body), self.url, what)
            if exc.status_code == 401:
                raise _Unauthorized(error) from None
            raise error from None
        except json.JSONDecodeError:
            # an answer that is not JSON where the SDK reads it itself (the token refresh)
            raise translate(200, "", self.url, what) from None
        except httpx.TimeoutException as exc:
            raise SlowError(
                f"Label Studio at {self.url} did not answer in time ({type(exc).__name__}) "
                f"while asking for {what}; raise label_studio.timeout_s if it is only busy"
            ) from None
        except httpx.TransportError as exc:
            raise UnreachableError(
                f"cannot reach Label Studio at {self.url} ({type(exc).__name__}) while asking "
                f"for {what}; check label_studio.url and that the server is running"
            ) from None


class _Unauthorized(Exception):  # noqa: N818 - never leaves this module: carries the AuthError
    """A 401 inside ``call``, which may get a fresh access token and try again."""

    def __init__(self, error: PlannerError) -> None:
        super().__init__(str(error))
        self.error = error


def _is_jwt(token: str) -> bool:
    """A personal access token (a JWT refresh token), not a legacy one."""
    return token.count(".") == 2


PAUSE_AFTER_PREDICTIONS = "PLANNER_TEST_PAUSE_AFTER_PREDICTIONS"


def _pause_for_tests() -> None:
    """Test-only crash point: with ``PLANNER_TEST_PAUSE_AFTER_PREDICTIONS=<file>`` a push writes
    ``<file>.reached`` once its predictions are on the server and waits until ``<file>``
    exists, so a test can SIGKILL the daemon between the predictions and the view update."""
    target = os.environ.get(PAUSE_AFTER_PREDICTIONS)
    if not target:
        return
    Path(f"{target}.reached").write_text(str(os.getpid()), encoding="utf-8")
    while not Path(target).exists():
        time.sleep(0.1)


def _id_filter(ids: Sequence[int]) -> list[dict[str, Any]]:
    if not ids:
        return []
    return [{"filter": "filter:tasks:id", "operator": "in_list", "type": "Number", "value": ids}]


def _any_of(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {"conjunction": "or", "items": list(items)}


def _json(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        raise ApiError(status_code=response.status_code, body=response.text, headers={})
    try:
        return response.json()
    except ValueError:
        raise ApiError(status_code=response.status_code, body=response.text, headers={}) from None


_SSRF_REFUSALS = ("The provided URL was not allowed", "URL resolves to a reserved network address")
"""The details of Label Studio's ``SsrfBlockedUrlError`` (403), which a webhook URL gets when
it resolves to a reserved network (label_studio/core/utils/exceptions.py and
core/utils/io.py ``validate_ip``, 1.23.2); a permission 403 says "You do not have permission"."""


def translate(status: int, body: str, url: str, what: str) -> PlannerError:
    """The planner error for an HTTP answer of Label Studio (pure; tested without a server)."""
    if status == 401:
        said = f" ({body[:200]})" if body else ""
        return AuthError(
            f"Label Studio at {url} rejected the token (401) for {what}{said}; set "
            "label_studio.token (PLANNER_LABEL_STUDIO__TOKEN or label_studio.token_file) to a "
            "personal access token (they expire: make a new one under Account & Settings > "
            "Personal Access Token), or to a legacy token if the organization enables legacy "
            "tokens (Organization > API Tokens settings; `label-studio start "
            "--enable-legacy-api-token`)"
        )
    if status == 403:
        return _forbidden(body, url, what)
    if status == 404:
        return GoneError(
            f"{what} does not exist on {url} (404); check label_studio.project_id and the URL"
        )
    if status >= 500 or status in (408, 429):
        return TransientError(f"Label Studio at {url} answered {status} for {what}; will retry")
    if status < 400:
        return ConfigError(
            f"{url} answered {what} with something other than Label Studio's JSON; check that "
            "label_studio.url is the server's base URL"
        )
    return ConfigError(f"Label Studio at {url} refused {what} ({status}): {body[:300]}")


def _forbidden(body: str, url: str, what: str) -> PlannerError:
    """A 403: Label Studio's SSRF protection refusing a URL we sent, or a token without access."""
    if any(said in body for said in _SSRF_REFUSALS):
        return UrlRefusedError(
            f"Label Studio at {url} refused the URL sent with {what} (403: {body[:200]}): it "
            "refuses webhook URLs on loopback and private addresses unless its server runs with "
            "SSRF_PROTECTION_ENABLED=false; set that on the Label Studio server, or set "
            "dashboard.webhook_url to an address Label Studio may call (a public one). The "
            "daemon polls without the webhook meanwhile"
        )
    return AuthError(
        f"the token has no access to {what} on {url} (403); use a token of a project member"
    )
