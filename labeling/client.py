"""The one door to Label Studio: its SDK (2.x) behind bounded retries and clear errors.

Only reads and idempotent writes are retried. Imports and annotation creation are not: a
request that timed out may still land, so callers re-read the server before trying again
(task sync does exactly that), which is how nothing is ever duplicated.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)

from labeling.configs import OBJECT_TAGS, ProjectSpec, config_choices
from labeling.errors import LabelConfigError, LabelStudioRequestError, LabelStudioUnavailable

T = TypeVar("T")
PAGE = 1000
DM_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"  # the only datetime format Label Studio's task filters accept


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded: at most `attempts` tries and `total_s` seconds per call, waits doubling up to `max_wait_s`."""

    attempts: int = 4
    total_s: float = 60.0
    first_wait_s: float = 0.5
    max_wait_s: float = 8.0


@dataclass(frozen=True)
class Project:
    """A Label Studio project as Caravan reads it: its id and title, what it shows (`kind`, the task data
    key `field`) and the labels it allows (`choices`)."""

    id: int
    title: str
    kind: str  # "text" | "image" | "table"
    field: str
    choices: tuple[str, ...]
    show: tuple[str, ...] = ()  # a table's columns as the caller's spec picks them (no config holds them)


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, httpx.TransportError):
        return True
    return isinstance(exc, ApiError) and (
        exc.status_code is None or exc.status_code >= 500 or exc.status_code == 429
    )


def _short_body(exc: ApiError) -> str:
    body = exc.body
    if isinstance(body, dict):
        detail = body.get("validation_errors") or body.get("detail") or body
        return json.dumps(detail, default=str)[:300]
    return f"HTTP {exc.status_code}"  # HTML error pages say nothing useful


class LabelStudioClient:
    """A Label Studio server at `base_url`, authenticated by an API token (never logged)."""

    def __init__(
        self, base_url: str, token: str, *, timeout_s: float = 60.0, retry: RetryPolicy | None = None
    ):
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        # max_retries=0: the SDK would otherwise retry every POST on 5xx and dropped connections,
        # imports included; retrying is decided here, per call, by whether it is safe.
        self.sdk = LabelStudio(base_url=self.base_url, api_key=token, timeout=timeout_s, max_retries=0)

    def __repr__(self) -> str:
        return f"LabelStudioClient({self.base_url!r})"

    # -- plumbing -------------------------------------------------------------------------------

    def call(self, what: str, fn: Callable[[], T], *, retry: bool = True) -> T:
        """Run one API call; transient failures retried (if `retry`), every failure made clear."""
        policy = self.retry
        try:
            if not retry:
                return fn()
            for attempt in Retrying(
                stop=stop_after_attempt(policy.attempts) | stop_after_delay(policy.total_s),
                wait=wait_exponential(multiplier=policy.first_wait_s, max=policy.max_wait_s),
                retry=retry_if_exception(_transient),
                reraise=False,
            ):
                with attempt:
                    return fn()
        except RetryError as err:
            exc = err.last_attempt.exception()
            n = err.last_attempt.attempt_number
            raise LabelStudioUnavailable(
                f"Label Studio at {self.base_url} did not complete {what} after {n} attempt(s): "
                f"{_describe(exc)}; check it is running (`make labelstudio-start`) and reachable"
            ) from None
        except ApiError as exc:
            if _transient(exc):
                raise LabelStudioUnavailable(
                    f"Label Studio at {self.base_url} failed {what}: {_describe(exc)} (not retried: "
                    "the request may have landed; re-run the sync, which re-reads the server first)"
                ) from None
            if exc.status_code == 401:
                raise LabelStudioRequestError(
                    f"Label Studio at {self.base_url} refused the API token for {what} (HTTP 401); "
                    "set LABEL_STUDIO_USER_TOKEN to a valid token"
                ) from None
            raise LabelStudioRequestError(f"Label Studio refused {what}: {_short_body(exc)}") from None
        except httpx.ConnectError as exc:  # nothing was sent
            raise LabelStudioUnavailable(
                f"Label Studio at {self.base_url} failed {what}: {_describe(exc)}; check it is running "
                "(`make labelstudio-start`) and reachable"
            ) from None
        except httpx.TransportError as exc:
            raise LabelStudioUnavailable(
                f"Label Studio at {self.base_url} failed {what}: {_describe(exc)} (not retried: the request "
                "may have landed; re-run the sync, which re-reads the server first)"
            ) from None
        raise AssertionError("unreachable")

    # -- projects -------------------------------------------------------------------------------

    def ensure_project(self, spec: ProjectSpec) -> Project:
        """The project titled `spec.title`, created from its config if absent; a differing one is an error."""
        project = self.find_project(spec.title)
        if project is not None:
            if (project.kind, project.field, project.choices) != (spec.kind, spec.field, spec.choices):
                raise LabelConfigError(
                    f"project {spec.title!r} (id {project.id}) exists as {project.kind} "
                    f"{list(project.choices)} on ${project.field}, not {spec.kind} {list(spec.choices)} "
                    f"on ${spec.field}; pick another title"
                )
            return replace(project, show=spec.show)
        created = self.call(
            f"creating project {spec.title!r}",
            lambda: self.sdk.projects.create(
                title=spec.title, label_config=spec.label_config, show_skip_button=True
            ),
            retry=False,
        )
        return Project(
            id=created.id, title=spec.title, kind=spec.kind, field=spec.field, choices=spec.choices,
            show=spec.show,
        )

    def find_project(self, title: str) -> Project | None:
        """The project with exactly this title (the lowest id if several), or None."""
        ids = sorted(
            p.id
            for p in self.call("listing projects", lambda: list(self.sdk.projects.list(page_size=PAGE)))
            if p.title == title
        )
        return self.project(ids[0]) if ids else None

    def project(self, project_id: int) -> Project:
        """Project `project_id`, its kind, field and choices read from its labeling config (`show` left empty:
        no config holds it); `LabelConfigError` for a config that is not a Caravan one."""
        p = self.call(f"reading project {project_id}", lambda: self.sdk.projects.get(id=project_id))
        kind, field = _object_field(p.label_config or "")
        return Project(
            id=p.id, title=p.title or "", kind=kind, field=field, choices=config_choices(p.label_config or "")
        )

    # -- tasks ----------------------------------------------------------------------------------

    def task_keys(self, project_id: int) -> tuple[dict[str, int], list[int]]:
        """example_id -> task id of the project's tasks, and the ids of tasks without an example_id."""

        def fetch() -> list[Any]:
            return list(
                self.sdk.tasks.list(project=project_id, fields="task_only", include="id,data", page_size=PAGE)
            )

        keys: dict[str, int] = {}
        orphans: list[int] = []
        for t in self.call(f"listing tasks of project {project_id}", fetch):
            eid = (t.data or {}).get("example_id")
            if isinstance(eid, str) and eid and eid not in keys:
                keys[eid] = t.id
            else:
                orphans.append(t.id)
        return keys, orphans

    def task_data(self, task_id: int) -> dict[str, Any]:
        """One task's data, as the server holds it."""
        task = self.call(f"reading task {task_id}", lambda: self.sdk.tasks.get(str(task_id)))
        return dict(task.data or {})

    def import_tasks(self, project_id: int, tasks: list[dict]) -> int:
        """Create tasks (each may carry `annotations`); one request, one transaction, never retried."""
        if not tasks:
            return 0
        r = self.call(
            f"importing {len(tasks)} tasks into project {project_id}",
            lambda: self.sdk.projects.import_tasks(id=project_id, request=tasks),
            retry=False,
        )
        return int(r.task_count or 0)

    def changed_task_versions(self, project_id: int, after: str) -> dict[int, str]:
        """Task id -> `updated_at` of annotated (or skipped) tasks changed after `after` (DM format).

        Label Studio bumps a task's `updated_at` whenever one of its annotations is created,
        updated or skipped; this light listing says which tasks to pull in full.
        """
        out: dict[int, str] = {}
        for query in annotated_queries(after):
            for t in self._light_tasks(project_id, "id,updated_at", query, "listing changed tasks"):
                out[int(t.id)] = iso_utc(t.updated_at)
        return out

    def _light_tasks(self, project_id: int, include: str, query: dict, what: str) -> list[Any]:
        """The tasks a Data Manager `query` selects, with only the `include`d fields."""

        def fetch() -> list[Any]:
            return list(
                self.sdk.tasks.list(
                    project=project_id,
                    fields="task_only",
                    include=include,
                    query=json.dumps(query),
                    page_size=PAGE,
                )
            )

        return self.call(f"{what} of project {project_id}", fetch)

    def annotated_tasks(
        self, project_id: int, ids: list[int] | None = None, *, every: bool = False
    ) -> list[dict]:
        """Annotated (or skipped) tasks with all their annotations: all of them, or those in `ids`. With
        `every`, each task of the project, read without the per-task counters the filters rely on."""
        chunks = [None] if ids is None else [ids[i : i + PAGE] for i in range(0, len(ids), PAGE)]
        out: dict[int, dict] = {}
        for chunk in chunks:
            for query in [{"ordering": ["tasks:id"]}] if every else annotated_queries(None):
                if chunk is not None:
                    query["selectedItems"] = {"all": False, "included": chunk}

                def fetch(query: dict = query) -> list[dict]:
                    pager = self.sdk.tasks.list(
                        project=project_id, fields="all", query=json.dumps(query), page_size=PAGE
                    )
                    return [t.model_dump(mode="json") for t in pager]

                for t in self.call(f"reading annotated tasks of project {project_id}", fetch):
                    out[int(t["id"])] = t
        return [out[k] for k in sorted(out)]

    def task_states(self, project_id: int, ids: list[int]) -> dict[int, tuple[int, int]]:
        """Task id -> (overlap, total_annotations) of the tasks in `ids` that exist in the project."""
        out: dict[int, tuple[int, int]] = {}
        for chunk in [ids[i : i + PAGE] for i in range(0, len(ids), PAGE)]:
            query = {"selectedItems": {"all": False, "included": chunk}}
            rows = self._light_tasks(project_id, "id,overlap,total_annotations", query, "reading task states")
            for t in rows:
                out[int(t.id)] = (int(t.overlap or 1), int(t.total_annotations or 0))
        return out

    def set_overlap(self, task_id: int, overlap: int, *, n_answers: int) -> None:
        """Ask for `overlap` answers on a task. Label Studio recomputes `is_labeled` only when an
        annotation is saved, so it is set here too: a task with fewer answers re-enters the labeling
        stream (`/next`) for annotators who have not answered it. Idempotent, hence retried."""
        self.call(
            f"raising the overlap of task {task_id} to {overlap}",
            lambda: self.sdk.tasks.update(str(task_id), overlap=overlap, is_labeled=n_answers >= overlap),
        )

    def ensure_view(self, project_id: int, title: str, task_ids: list[int]) -> int:
        """A Data Manager tab titled `title` listing exactly `task_ids` (created, or its filter
        replaced); returns its id. An empty list gives a tab that lists nothing."""
        ids = task_ids or [-1]  # a tab without filters would list every task
        data = {
            "title": title,
            "filters": {
                "conjunction": "or",
                "items": [
                    {"filter": "filter:tasks:id", "operator": "equal", "type": "Number", "value": int(i)}
                    for i in ids
                ],
            },
            "ordering": ["tasks:id"],
        }
        views = self.call(
            f"listing tabs of project {project_id}", lambda: self.sdk.views.list(project=project_id)
        )
        same = sorted(int(v.id) for v in views if (v.data or {}).get("title") == title)
        if same:
            self.call(
                f"updating tab {title!r} of project {project_id}",
                lambda: self.sdk.views.update(str(same[0]), project=project_id, data=data),
            )
            return same[0]
        view = self.call(
            f"creating tab {title!r} in project {project_id}",
            lambda: self.sdk.views.create(project=project_id, data=data),
            retry=False,
        )
        return int(view.id)

    def view_task_ids(self, project_id: int, view_id: int) -> list[int]:
        """The ids of the tasks a tab lists."""

        def fetch() -> list[Any]:
            return list(
                self.sdk.tasks.list(
                    project=project_id, view=view_id, fields="task_only", include="id", page_size=PAGE
                )
            )

        return sorted(int(t.id) for t in self.call(f"listing tab {view_id} of project {project_id}", fetch))

    # -- users and annotations ------------------------------------------------------------------

    def users(self) -> dict[int, str]:
        """Label Studio user id -> email (the contributor id of a labeler)."""
        return {
            u.id: (u.email or u.username or f"user-{u.id}")
            for u in self.call("listing users", lambda: self.sdk.users.list())
        }

    def ensure_user(self, email: str, first_name: str = "", last_name: str = "") -> int:
        """The id of the user with this email, created over the API if absent."""
        for uid, known in self.users().items():
            if known == email:
                return uid
        user = self.call(
            f"creating user {email}",
            lambda: self.sdk.users.create(
                username=email, email=email, first_name=first_name, last_name=last_name
            ),
            retry=False,
        )
        return int(user.id)

    def create_annotation(
        self,
        task_id: int,
        result: list[dict],
        *,
        completed_by: int,
        lead_time_s: float | None = None,
        was_cancelled: bool = False,
    ) -> int:
        """Annotate a task as user `completed_by` (how simulated labelers answer); the annotation id.
        Not retried, so a call that timed out after it reached the server never annotates twice."""
        a = self.call(
            f"annotating task {task_id}",
            lambda: self.sdk.annotations.create(
                task_id,
                result=result,
                completed_by=completed_by,
                lead_time=lead_time_s,
                was_cancelled=was_cancelled,
            ),
            retry=False,
        )
        return int(a.id)

    def update_annotation(self, annotation_id: int, result: list[dict]) -> None:
        """Replace an annotation's `result` (a changed answer); retried, as setting it twice is harmless."""
        self.call(
            f"updating annotation {annotation_id}",
            lambda: self.sdk.annotations.update(annotation_id, result=result),
        )

    def add_webhook(
        self,
        project_id: int,
        url: str,
        actions: tuple[str, ...] = (
            "ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED", "TASKS_DELETED"
        ),
    ) -> int:
        """Have the project POST these events, with their payload, to `url` (a `WebhookReceiver`); the
        webhook's id. Not retried, so the webhook is never registered twice."""
        hook = self.call(
            f"adding a webhook to project {project_id}",
            lambda: self.sdk.webhooks.create(
                url=url,
                project=project_id,
                actions=list(actions),
                send_payload=True,
                send_for_all_actions=False,
            ),
            retry=False,
        )
        return int(hook.id)


def annotated_queries(after: str | None) -> list[dict]:
    """Data Manager queries for tasks with annotations, and for tasks with only skips (two, because
    a skipped annotation does not count in `total_annotations` and filters cannot be OR-ed with AND),
    changed after `after` (DM format) if given. Public because the export's light listing of
    annotation ids (labeling/export.py) must select exactly the tasks these client reads select."""
    since = [{"filter": "filter:tasks:updated_at", "operator": "greater", "type": "Datetime", "value": after}]
    return [
        {
            "filters": {
                "conjunction": "and",
                "items": [
                    {"filter": f"filter:tasks:{count}", "operator": "greater", "type": "Number", "value": 0},
                    *(since if after else []),
                ],
            },
            "ordering": ["tasks:id"],
        }
        for count in ("total_annotations", "cancelled_annotations")
    ]


def iso_utc(value: object) -> str:
    """A timestamp (datetime or ISO string) as Label Studio's filters want it: UTC, microseconds, Z."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if not isinstance(value, datetime):
        raise TypeError(f"not a timestamp: {value!r}")
    return value.astimezone(UTC).strftime(DM_TIME)


def _object_field(label_config: str) -> tuple[str, str]:
    import xml.etree.ElementTree as ET

    for node in ET.fromstring(label_config).iter():
        value = node.get("value") or ""
        if node.tag in OBJECT_TAGS.values() and value.startswith("$"):
            return node.tag.lower(), value[1:]
    raise LabelConfigError(f"labeling config has no {'/'.join(OBJECT_TAGS.values())} object with a $variable")


def _describe(exc: BaseException | None) -> str:
    if isinstance(exc, ApiError):
        return f"HTTP {exc.status_code} {_short_body(exc)}"
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({type(exc).__name__})"
    return f"{type(exc).__name__}: {exc}" if exc else "unknown error"
