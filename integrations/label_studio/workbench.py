"""Setting a Label Studio project up and annotating it like people would: for tests and the demo.

``LabelStudioWorkbench`` is the real backend plus the helpers the in-memory fake has too
(``fake.FakeLabelStudio``), so the same contract tests and demo code run against either. It
reaches the SDK only through ``client.py`` (``backend.sdk``), with the same error translation.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import httpx

from integrations.label_studio.client import LabelStudioBackend
from planner.core.labels import parse_label_config
from planner.errors import ConfigError
from planner.ports import AnnotationBackend


@runtime_checkable
class Workbench(AnnotationBackend, Protocol):
    """An annotation backend a test or the demo can also fill and annotate."""

    def create_project(self, title: str, label_config: str) -> int: ...

    def import_tasks(self, project_id: int, tasks: Sequence[Mapping[str, Any]]) -> list[int]: ...

    def set_skip_queue(self, project_id: int, skip_queue: str) -> None:
        """Set the project's skip_queue (``IGNORE_SKIPPED``: a skip finishes the task)."""
        ...

    def create_annotator(self, email: str) -> int: ...

    def annotate(
        self,
        task_id: int,
        result: Sequence[Mapping[str, Any]],
        *,
        cancelled: bool = False,
        ground_truth: bool = False,
        annotator: int | None = None,
    ) -> int: ...

    def update_annotation(
        self, annotation_id: int, result: Sequence[Mapping[str, Any]]
    ) -> None: ...

    def delete_task(self, task_id: int) -> None: ...

    def annotations_from_predictions(self, project_id: int) -> int:
        """Label Studio's "Create Annotations From Predictions" on every task (how many)."""
        ...

    def edit_task_data(self, task_id: int, data: Mapping[str, Any]) -> None:
        """Replace the task's data, as someone editing it in Label Studio does."""
        ...

    def next_task(self, project_id: int, *, annotator: int | None = None) -> int | None: ...

    def view_task_ids(self, project_id: int, view_id: int) -> list[int]: ...

    def predict(self, task_id: int, score: float, model_version: str) -> int: ...

    def list_predictions(self, project_id: int) -> list[tuple[int, str, float]]: ...

    def list_webhooks(self, project_id: int) -> list[tuple[int, str, dict[str, str]]]: ...


class LabelStudioWorkbench(LabelStudioBackend):
    """A real server's backend with project setup and simulated annotators."""

    def __init__(self, url: str, token: str, **kwargs: Any) -> None:
        super().__init__(url, token, **kwargs)
        self._tokens: dict[int, str] = {}
        """API tokens of the annotators this workbench signed up, by user id."""

    def create_project(self, title: str, label_config: str) -> int:
        """A project with ``label_config`` (checked first: the planner must be able to read it)."""
        parse_label_config(label_config)
        project = self.call(
            lambda: self.sdk.projects.create(title=title, label_config=label_config), "project"
        )
        return int(project.id)

    def set_skip_queue(self, project_id: int, skip_queue: str) -> None:
        """Set the project's skip_queue (``IGNORE_SKIPPED``: a skip finishes the task)."""
        self.call(
            lambda: self.sdk.projects.update(id=project_id, skip_queue=skip_queue),
            f"project {project_id} skip_queue",
        )

    def connect_local_storage(self, project_id: int, path: str) -> int:
        """A Local import storage over ``path`` so its ``/data/local-files/?d=`` URLs are served.

        ``path`` must lie under the server's LOCAL_FILES_DOCUMENT_ROOT.
        """
        storage = self.call(
            lambda: self.sdk.import_storage.local.create(
                project=project_id, path=path, use_blob_urls=True, title="planner images"
            ),
            f"local storage {path}",
        )
        return int(storage.id)

    def import_tasks(self, project_id: int, tasks: Sequence[Mapping[str, Any]]) -> list[int]:
        """Import task dicts (``{"data": {...}}``); returns the new ids in input order."""
        before = self.task_ids(project_id)
        self.call(
            lambda: self.sdk.projects.import_tasks(id=project_id, request=[dict(t) for t in tasks]),
            "task import",
        )
        # Label Studio numbers an import's tasks consecutively, in the order given.
        return sorted(self.task_ids(project_id) - before)

    def create_annotator(self, email: str) -> int:
        """Another member of the organization with an API token of its own.

        Signed up the way a person joins: through the organization's invite link, then the
        logged-in session reads its token (``/api/current-user/token``). Community edition:
        any member may annotate.
        """
        invite = {"token": str(self.get("/api/invite")["token"])}
        with httpx.Client(base_url=self.url, timeout=30) as browser:
            browser.get("/user/signup/", params=invite)  # sets the CSRF cookie
            form = {"email": email, "password": secrets.token_urlsafe(16)}
            form["csrfmiddlewaretoken"] = browser.cookies.get("csrftoken") or ""
            answer = browser.post(
                "/user/signup/", params=invite, data=form, headers={"Referer": self.url}
            )
            if answer.status_code != 302:  # the form is shown again with its errors
                raise ConfigError(f"Label Studio refused to sign up {email} ({answer.status_code})")
            token = str(browser.get("/api/current-user/token").json()["token"])
            user = int(browser.get("/api/current-user/whoami").json()["id"])
        self._tokens[user] = token
        return user

    def annotate(
        self,
        task_id: int,
        result: Sequence[Mapping[str, Any]],
        *,
        cancelled: bool = False,
        ground_truth: bool = False,
        annotator: int | None = None,
    ) -> int:
        """Post an annotation (a skip with ``cancelled``), as the token's user or ``annotator``."""
        extra = {} if annotator is None else {"completed_by": annotator}
        annotation = self.call(
            lambda: self.sdk.annotations.create(
                id=task_id,
                result=[dict(r) for r in result],
                was_cancelled=cancelled,
                ground_truth=ground_truth,
                **extra,
            ),
            f"annotation of task {task_id}",
        )
        return int(annotation.id)

    def update_annotation(self, annotation_id: int, result: Sequence[Mapping[str, Any]]) -> None:
        self.call(
            lambda: self.sdk.annotations.update(id=annotation_id, result=[dict(r) for r in result]),
            f"annotation {annotation_id}",
        )

    def annotations_from_predictions(self, project_id: int) -> int:
        """Label Studio's "Create Annotations From Predictions" on every task, as an annotation
        lead runs it from the Data Manager; how many annotations the project gained."""
        before = sum(len(t.annotations) for t in self.iter_tasks(project_id))
        self.call(
            lambda: self.sdk.actions.create(
                id="predictions_to_annotations",
                project=project_id,
                selected_items={"all": True, "excluded": []},
            ),
            f"annotations from predictions of project {project_id}",
        )
        return sum(len(t.annotations) for t in self.iter_tasks(project_id)) - before

    def delete_task(self, task_id: int) -> None:
        self.call(lambda: self.sdk.tasks.delete(id=str(task_id)), f"task {task_id}")

    def edit_task_data(self, task_id: int, data: Mapping[str, Any]) -> None:
        self.call(
            lambda: self.sdk.tasks.update(id=str(task_id), data=dict(data)), f"task {task_id}"
        )

    def next_task(self, project_id: int, *, annotator: int | None = None) -> int | None:
        """The task a user opening the labelling stream gets now (``/next/``); None: done.

        Asked with ``annotator``'s own token (one this workbench signed up), else as the
        workbench's user.
        """
        if annotator is None:
            return _next(self, project_id)
        token = self._tokens.get(annotator)
        if token is None:
            raise ConfigError(f"user {annotator} was not signed up by this workbench")
        with LabelStudioBackend(self.url, token) as user:
            return _next(user, project_id)

    def view_task_ids(self, project_id: int, view_id: int) -> list[int]:
        """Task ids of a Data Manager view, in its order."""
        what = f"tasks of view {view_id}"
        pager = self.call(
            lambda: self.sdk.tasks.list(
                project=project_id, view=view_id, fields="task_only", resolve_uri=False
            ),
            what,
        )
        return [int(t.id) for t in self.iterate(pager, what)]

    def predict(self, task_id: int, score: float, model_version: str) -> int:
        """One prediction saved on its own, as an ML backend or a script does (not bulk)."""
        made = self.call(
            lambda: self.sdk.predictions.create(
                task=task_id, result=[], score=score, model_version=model_version
            ),
            f"prediction of task {task_id}",
        )
        return int(made.id)

    def list_predictions(self, project_id: int) -> list[tuple[int, str, float]]:
        """``(task, model_version, score)`` of every prediction in the project, as stored."""
        found = self.call(lambda: self.sdk.predictions.list(project=project_id), "predictions")
        return sorted(
            (int(p.task or 0), str(p.model_version or ""), float(p.score or 0.0)) for p in found
        )

    def list_webhooks(self, project_id: int) -> list[tuple[int, str, dict[str, str]]]:
        """``(id, url, headers)`` of the project's webhooks, as stored."""
        hooks = self.call(lambda: self.sdk.webhooks.list(project=str(project_id)), "webhooks")
        return sorted(
            (int(h.id), str(h.url), dict(h.headers or {}))
            for h in hooks
            if int(h.project or 0) == project_id
        )


def _next(user: LabelStudioBackend, project_id: int) -> int | None:
    try:
        data = user.get(f"/api/projects/{project_id}/next/")
    except ConfigError:
        user.project(project_id)  # raises when the project itself is missing
        return None  # 404 "no more tasks"
    return int(data["id"]) if isinstance(data, dict) and data.get("id") else None
