"""Django admin pages for the tasks held by the vtasks brokers (Valkey and Postgres alike).

Three entries appear under "vtasks" in the admin index: *Queued tasks* (ready and delayed),
*Running tasks* (in flight under a worker's lease) and *Failed tasks* (the dead-letter queue).
Each page lists one backend + queue at a time (a summary table of every queue links to the
others), with checkboxes and actions: *retry* (failed tasks go back to ready), *delete*
(queued or failed tasks; running tasks cannot be deleted, they finish or come back when their
worker dies) and *cancel* (queued tasks fail at once as cancelled; running tasks are asked to
stop, see the backend's ``cancel``). A task's id opens its detail: the decoded envelope,
attempts, lease, error.

No database table is involved: the three models (:mod:`django_vtasks.models`) are unmanaged
placeholders whose permissions ``migrate`` creates, and every page reads the broker through
``django_vtasks.broker`` (peek/get/info/retry_dead/delete). Each page checks the permissions of its
own model: listing needs view, retry and cancel need change, delete needs delete; an
action only touches tasks that are in its page's states, and a task's detail needs the view
permission of the state the task is in. Retries and deletions are written to the admin's log
(LogEntry, with the task id, queue and backend). Queue names, backend aliases and task ids go
into detail URLs quoted the admin's way (``/`` and the like are allowed).
"""

from __future__ import annotations

import json
import logging
import re
from urllib.parse import urlencode

from django.contrib import admin, messages
from django.contrib.admin.models import CHANGE, DELETION, LogEntry
from django.contrib.admin.utils import quote, unquote
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse

from .broker import LIMITS, BrokerError, TaskRecord, vtasks_backends
from .envelope import preview
from .models import BrokerTask, FailedTask, QueuedTask, RunningTask
from .result_store import document as result_document
from .results import ms_to_dt

logger = logging.getLogger("django_vtasks.admin")

PER_PAGE = 50


def _short(value, limit=80) -> str:
    try:
        text = json.dumps(value, default=str)
    except Exception:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


#: decoded bytes read from a payload for a list row / for the detail page (never the whole of a
#: large payload: the web process must not inflate what a worker would refuse)
LIST_PREVIEW_BYTES = 2048
DETAIL_PREVIEW_BYTES = 256 * 1024

_FUNC = re.compile(r'^\{"func":("(?:[^"\\]|\\.)*")')


def _runs_allowed(func: str, queue: str, cache: dict) -> int | None:
    """Runs the task's retry policy allows (retries + 1), what the attempt column counts
    against; None when the task cannot be resolved here."""
    if func not in cache:
        from .results import resolve_task
        from .retry import RetryPolicy

        try:
            task = resolve_task(func, queue=queue, strict=True)
            cache[func] = RetryPolicy.of(task, queue).retries + 1
        except Exception:
            cache[func] = None
    return cache[func]


class _Row:
    """A TaskRecord shaped for the templates, from a bounded preview of its payload."""

    #: the task's detail page (set by the changelist, which knows the admin's URL names)
    url: str

    def __init__(self, record: TaskRecord, detail: bool = False, runs_cache: dict | None = None):
        self.record = record
        text, cut = preview(record.payload, DETAIL_PREVIEW_BYTES if detail else LIST_PREVIEW_BYTES)
        env = None
        if not cut:
            try:
                env = json.loads(text)
            except ValueError:
                env = None
        m = _FUNC.match(text)
        func = env.get("func") if isinstance(env, dict) else (json.loads(m[1]) if m else None)
        self.id = record.id
        self.state = record.state
        self.func = func or "(undecodable payload)"
        if isinstance(env, dict):
            self.args = _short(
                {"args": env.get("args", []), "kwargs": env.get("kwargs", {})}
                if env.get("kwargs")
                else env.get("args", [])
            )
        else:
            start = text.find('"args":')
            self.args = _short_text(text[start + 7 :] if start >= 0 else text)
        self.priority = record.priority
        self.attempt = record.attempt
        #: runs the task's retry policy allows (the broker's max_attempts adds crash
        #: redeliveries, so it is not what a user set)
        self.max_attempts = (
            _runs_allowed(func, record.queue, runs_cache if runs_cache is not None else {})
            if func
            else None
        )
        self.enqueued_at = ms_to_dt(record.enqueued_at)
        self.run_at = ms_to_dt(record.run_at)
        self.worker = record.worker
        self.deadline = ms_to_dt(record.deadline)
        self.failed_at = ms_to_dt(record.failed_at)
        self.error = record.error
        self.error_line = (record.error.strip().splitlines() or [""])[0][:160]
        if isinstance(env, dict):
            self.envelope_json = json.dumps(env, indent=2, default=str, sort_keys=True)
        else:
            self.envelope_json = text + (
                f"\n… (cut: only the first {len(text)} characters of a larger payload are shown)"
                if cut
                else ""
            )


def _short_text(text: str, limit=80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class BrokerTaskAdmin(admin.ModelAdmin):
    """Lists one state group of a broker's queue; subclasses set ``states``."""

    #: broker states shown, in order (STATES)
    states: tuple[str, ...] = ()
    #: actions offered on this page: subset of ("retry", "delete")
    task_actions: tuple[str, ...] = ()
    change_list_template = "admin/django_vtasks/tasks_changelist.html"
    detail_template = "admin/django_vtasks/task_detail.html"

    def has_add_permission(self, request):
        return False

    def get_urls(self):
        prefix = f"{self.opts.app_label}_{self.opts.model_name}"
        return [
            path("", self.admin_site.admin_view(self.changelist_view), name=f"{prefix}_changelist"),
            path(
                "<str:backend>/<str:queue>/<str:task_id>/",
                self.admin_site.admin_view(self.detail_view),
                name=f"{prefix}_detail",
            ),
        ]

    # ---- helpers ------------------------------------------------------------------------------
    def _url(self, **params) -> str:
        base = reverse(
            f"admin:{self.opts.app_label}_{self.opts.model_name}_changelist",
            current_app=self.admin_site.name,
        )
        params = {k: v for k, v in params.items() if v not in (None, "")}
        return base + ("?" + urlencode(params) if params else "")

    def _select(self, request, backends):
        aliases = [a for a, _ in backends]
        alias = request.GET.get("backend") or request.POST.get("backend") or aliases[0]
        if alias not in aliases:
            raise Http404(f"no vtasks backend {alias!r}")
        backend = dict(backends)[alias]
        queue = request.GET.get("queue") or request.POST.get("queue") or ""
        return alias, backend, queue

    @staticmethod
    def _queue_names(backend) -> list[str]:
        from .conf import settings as vsettings

        names = set(backend.broker.queues())
        names.update(backend.queues or ())
        names.update(vsettings.VTASKS_QUEUES or ())
        return sorted(names)

    def _page(self, broker, queue, info, page) -> tuple[list[TaskRecord], int]:
        """Records of this page across ``states`` (paged in order), and the total."""
        total = sum(int(info.get(s, 0)) for s in self.states)
        offset = (page - 1) * PER_PAGE
        want = PER_PAGE
        records: list[TaskRecord] = []
        for state in self.states:
            n = int(info.get(state, 0))
            if want <= 0:
                break
            if offset >= n:
                offset -= n
                continue
            got = broker.peek(queue, state, offset, min(want, LIMITS["max_peek"]))
            records.extend(got)
            want -= len(got)
            offset = 0
        return records, total

    # ---- views --------------------------------------------------------------------------------
    def changelist_view(self, request, extra_context=None):
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        backends = vtasks_backends()
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": str(self.opts.verbose_name_plural).capitalize(),
            "subtitle": None,
            "has_view_permission": True,
            "backends": [],
            "states": self.states,
        }
        if not backends:
            context["no_backend"] = True
            return TemplateResponse(request, self.change_list_template, context)
        alias, backend, queue = self._select(request, backends)
        broker = backend.broker
        if request.method == "POST":
            return self._post(request, alias, broker, queue)
        try:
            page = max(1, int(request.GET.get("p", 1)))
        except ValueError:
            page = 1
        summary, rows, total = [], [], 0
        error = None
        try:
            names = self._queue_names(backend)
            if not queue:
                # the first queue with tasks in this page's states, else the first one
                infos = {q: broker.info(q) for q in names}
                queue = next(
                    (q for q in names if any(infos[q].get(s) for s in self.states)),
                    names[0] if names else "default",
                )
            else:
                infos = {q: broker.info(q) for q in names}
            if queue not in infos:
                infos[queue] = broker.info(queue)
                names.append(queue)
            for q in names:
                i = infos[q]
                summary.append(
                    {
                        "queue": q,
                        "url": self._url(backend=alias, queue=q),
                        "selected": q == queue,
                        "ready": i.get("ready", 0),
                        "delayed": i.get("delayed", 0),
                        "inflight": i.get("inflight", 0),
                        "dead": i.get("dead", 0),
                        "dead_evicted": i.get("dead_evicted", 0),
                        "count": sum(int(i.get(s, 0)) for s in self.states),
                    }
                )
            records, total = self._page(broker, queue, infos[queue], page)
            runs: dict = {}
            rows = [_Row(r, runs_cache=runs) for r in records]
        except BrokerError as e:
            error = str(e)
        except Exception as e:  # a broker down must not 500 the admin
            logger.exception("reading the broker of %r failed", alias)
            error = f"{type(e).__name__}: {e}"
        pages = max(1, -(-total // PER_PAGE))
        detail_name = f"admin:{self.opts.app_label}_{self.opts.model_name}_detail"
        for row in rows:
            row.url = reverse(
                detail_name,
                args=[quote(alias), quote(queue), quote(row.id)],
                current_app=self.admin_site.name,
            )
        actions = [a for a in self.task_actions if self._allowed(request, a)]
        context.update(
            {
                "backends": [
                    {
                        "alias": a,
                        "kind": b.broker.kind,
                        "selected": a == alias,
                        "url": self._url(backend=a),
                    }
                    for a, b in backends
                ],
                "alias": alias,
                "kind": broker.kind,
                "queue": queue,
                "summary": summary,
                "rows": rows,
                "total": total,
                "page": page,
                "pages": pages,
                "prev_url": self._url(backend=alias, queue=queue, p=page - 1) if page > 1 else None,
                "next_url": self._url(backend=alias, queue=queue, p=page + 1)
                if page < pages
                else None,
                "broker_error": error,
                "task_actions": actions,
                "show_run_at": "delayed" in self.states,
                "show_worker": "inflight" in self.states,
                "show_error": "dead" in self.states,
                "form_url": self._url(backend=alias, queue=queue, p=page if page > 1 else None),
            }
        )
        context.update(extra_context or {})
        return TemplateResponse(request, self.change_list_template, context)

    def _allowed(self, request, action: str) -> bool:
        if action in ("retry", "cancel"):
            return self.has_change_permission(request)
        if action == "delete":
            return self.has_delete_permission(request)
        return False

    def _post(self, request, alias, broker, queue):
        action = request.POST.get("action", "")
        ids = request.POST.getlist("_selected_action")
        everything = request.POST.get("select_across") == "1"
        back = self._url(backend=alias, queue=queue, p=request.GET.get("p"))
        if action not in self.task_actions:
            messages.error(request, f"Unknown action {action!r}.")
            return HttpResponseRedirect(back)
        if not self._allowed(request, action):
            raise PermissionDenied
        if not queue:
            messages.error(request, "No queue selected.")
            return HttpResponseRedirect(back)
        if not ids and not everything:
            messages.warning(request, "Select tasks to act on (nothing was changed).")
            return HttpResponseRedirect(back)
        if everything and action == "cancel":
            messages.error(request, "Select the tasks to cancel (nothing was changed).")
            return HttpResponseRedirect(back)
        try:
            if everything:
                self._act_on_all(request, action, alias, broker, queue)
            else:
                self._act_on_ids(request, action, alias, broker, queue, ids)
        except BrokerError as e:
            messages.error(request, f"{action} failed: {e}")
        return HttpResponseRedirect(back)

    def _act_on_ids(self, request, action, alias, broker, queue, ids):
        # VT.DELETE takes any ready/delayed/dead id: keep only the tasks this page (and so this
        # permission) owns. A task that moves between this read and the action (e.g. a failed task
        # retried meanwhile) can still be hit; the broker offers no per-state delete.
        owned = [
            i
            for i in dict.fromkeys(ids)
            if (r := broker.get(queue, i)) is not None and r.state in self.states
        ]
        if len(owned) < len(set(ids)):
            messages.warning(
                request,
                f"{len(set(ids)) - len(owned)} selected task(s) are not "
                f"{self.opts.verbose_name_plural} of {queue!r} (any more) "
                f"and were left alone.",
            )
        if not owned:
            return
        where = f"of queue {queue!r} (backend {alias!r})"
        if action == "retry":
            n = broker.retry_dead(queue, owned)
            self._log(request, CHANGE, [(i, f"Retried failed task {i} {where}.") for i in owned])
            messages.success(request, f"{n} task(s) of {queue!r} moved back to the queue.")
        elif action == "cancel":
            backend = dict(vtasks_backends())[alias]
            reason = f"by {request.user.get_username() or 'an admin'} in the admin"
            outcomes = {i: backend.cancel(i, reason, queue=queue) for i in owned}
            done = [i for i, o in outcomes.items() if o]
            self._log(request, CHANGE, [(i, f"Cancelled task {i} {where}.") for i in done])
            removed = sum(1 for o in outcomes.values() if o == "removed")
            flagged = sum(1 for o in outcomes.values() if o == "flagged")
            messages.success(
                request,
                f"{removed} queued task(s) of {queue!r} cancelled, {flagged} running task(s) "
                "asked to stop.",
            )
        else:
            n = broker.delete(queue, owned)
            self._log(
                request,
                DELETION,
                [(i, f"Deleted {self.opts.verbose_name} {i} {where}.") for i in owned],
            )
            messages.success(request, f"{n} task(s) deleted from {queue!r}.")

    def _act_on_all(self, request, action, alias, broker, queue):
        where = f"of queue {queue!r} (backend {alias!r})"
        if action == "retry":
            n = broker.retry_dead(queue, None)
            self._log(
                request,
                CHANGE,
                [(None, f"Retried all {n} failed tasks {where}.")],
                f"all failed tasks of {queue}",
            )
            messages.success(request, f"{n} task(s) of {queue!r} moved back to the queue.")
        else:
            n = broker.clear(queue, "dead" if "dead" in self.states else "ready")
            what = self.opts.verbose_name_plural
            self._log(
                request,
                DELETION,
                [(None, f"Deleted all {n} {what} {where}.")],
                f"all {what} of {queue}",
            )
            messages.success(request, f"{n} task(s) deleted from {queue!r}.")

    def _log(self, request, flag, entries, whole_queue_repr=""):
        """Admin LogEntry rows on this page's model: (task id, message) each, a None id for an
        action on the whole queue."""
        ctype = ContentType.objects.get_for_model(self.model, for_concrete_model=False)
        LogEntry.objects.bulk_create(
            [
                LogEntry(
                    user_id=request.user.pk,
                    content_type_id=ctype.pk,
                    object_id=i,
                    action_flag=flag,
                    object_repr=(str(self.model(id=i)) if i is not None else whole_queue_repr)[
                        :200
                    ],
                    change_message=message,
                )
                for i, message in entries
            ]
        )

    def detail_view(self, request, backend, queue, task_id):
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        backend, queue, task_id = unquote(backend), unquote(queue), unquote(task_id)
        backends = dict(vtasks_backends())
        if backend not in backends:
            raise Http404(f"no vtasks backend {backend!r}")
        broker = backends[backend].broker
        try:
            record = broker.get(queue, task_id)
        except BrokerError as e:
            messages.error(request, str(e))
            return HttpResponseRedirect(self._url(backend=backend, queue=queue))
        if record is None:
            messages.warning(
                request, f"Task {task_id} is no longer in {queue!r} (it finished, or was deleted)."
            )
            return HttpResponseRedirect(self._url(backend=backend, queue=queue))
        # the page a task shows on is the state it is in now, whichever list linked here
        owner = _OWNER_MODELS.get(record.state, self.model)
        owner_admin = self.admin_site._registry.get(owner)
        if not isinstance(
            owner_admin, BrokerTaskAdmin
        ) or not owner_admin.has_view_or_change_permission(request):
            raise PermissionDenied
        row = _Row(record, detail=True)
        result = None
        try:
            raw = broker.get_result(task_id)
            if raw:
                result = json.dumps(result_document(raw), indent=2, sort_keys=True)
        except Exception:
            result = None
        actions = [a for a in owner_admin.task_actions if owner_admin._allowed(request, a)]
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"Task {task_id}",
            "subtitle": None,
            "row": row,
            "alias": backend,
            "queue": queue,
            "result_json": result,
            "task_actions": actions,
            "form_url": owner_admin._url(backend=backend, queue=queue),
            "back_url": self._url(backend=backend, queue=queue),
        }
        return TemplateResponse(request, self.detail_template, context)


#: the model (page, permissions) a task in each broker state belongs to
_OWNER_MODELS: dict[str, type[BrokerTask]] = {
    "ready": QueuedTask,
    "delayed": QueuedTask,
    "waiting": QueuedTask,
    "inflight": RunningTask,
    "dead": FailedTask,
}


@admin.register(QueuedTask)
class QueuedTaskAdmin(BrokerTaskAdmin):
    # waiting: a flow's tasks held by the broker until the tasks before them succeed
    states = ("ready", "delayed", "waiting")
    task_actions = ("cancel", "delete")


@admin.register(RunningTask)
class RunningTaskAdmin(BrokerTaskAdmin):
    states = ("inflight",)
    task_actions = ("cancel",)


@admin.register(FailedTask)
class FailedTaskAdmin(BrokerTaskAdmin):
    states = ("dead",)
    task_actions = ("retry", "delete")


# registers the dashboard and the schedules pages
from . import dashboard, schedule_admin  # noqa: E402, F401
