"""The admin's *Schedules* page: every periodic schedule of every vtasks backend, with its next
run and whether it is paused, and three buttons per schedule: *pause*, *resume* and *run now*
(enqueue its task once). Listing needs the ``view`` permission of
:class:`~django_vtasks.models.Schedule`, the buttons its ``change`` permission; each use is written
to the admin's log. VTASKS_SCHEDULE stays the source of truth for which schedules exist; the
pause is runtime state the broker keeps (it survives restarts and re-registration)."""

from __future__ import annotations

import logging

from django.contrib import admin, messages
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse

from .broker import BrokerError, vtasks_backends
from .models import Schedule
from .results import ms_to_dt
from .scheduler import broker_schedules

logger = logging.getLogger("django_vtasks.admin")

#: button -> (broker method, what the message says happened)
ACTIONS = {
    "pause": ("schedule_pause", "paused"),
    "resume": ("schedule_resume", "resumed"),
    "run": ("schedule_run", "run now"),
}


@admin.register(Schedule)
class ScheduleAdmin(admin.ModelAdmin):
    change_list_template = "admin/django_vtasks/schedules.html"

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False  # settings say which schedules exist

    def get_urls(self):
        info = self.opts.app_label, self.opts.model_name
        return [
            path(
                "",
                self.admin_site.admin_view(self.changelist_view),
                name=f"{info[0]}_{info[1]}_changelist",
            )
        ]

    def changelist_view(self, request, extra_context=None):
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        if request.method == "POST":
            return self._post(request)
        groups = []
        for alias, backend in vtasks_backends():
            group = {"alias": alias, "kind": backend.broker.kind, "rows": [], "error": None}
            try:
                for queue, s in broker_schedules(backend.broker, alias):
                    group["rows"].append(
                        {
                            "name": s.name,
                            "queue": queue,
                            "spec": f"cron {s.spec}" if s.kind == "cron" else f"every {s.spec} ms",
                            "next_run": ms_to_dt(s.next_run_ms),
                            "paused": s.paused,
                        }
                    )
            except BrokerError as e:
                group["error"] = str(e)
            except Exception as e:  # a broker down must not 500 the admin
                logger.exception("reading the schedules of %r failed", alias)
                group["error"] = f"{type(e).__name__}: {e}"
            groups.append(group)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Schedules",
            "subtitle": None,
            "has_view_permission": True,
            "groups": groups,
            "can_change": self.has_change_permission(request),
            "form_url": self._url(),
            **(extra_context or {}),
        }
        return TemplateResponse(request, self.change_list_template, context)

    def _url(self) -> str:
        return reverse(
            f"admin:{self.opts.app_label}_{self.opts.model_name}_changelist",
            current_app=self.admin_site.name,
        )

    def _post(self, request):
        if not self.has_change_permission(request):
            raise PermissionDenied
        action = request.POST.get("action", "")
        alias, queue, name = (request.POST.get(k, "") for k in ("backend", "queue", "name"))
        backends = dict(vtasks_backends())
        if action not in ACTIONS or alias not in backends or not queue or not name:
            messages.error(request, "Unknown schedule action or schedule.")
            return HttpResponseRedirect(self._url())
        method, done = ACTIONS[action]
        try:
            out = getattr(backends[alias].broker, method)(queue, name)
        except BrokerError as e:
            messages.error(request, f"Schedule {name!r} on {queue!r}: {e}")
            return HttpResponseRedirect(self._url())
        if not out:
            messages.warning(request, f"Schedule {name!r} is no longer on {queue!r} ({alias}).")
            return HttpResponseRedirect(self._url())
        detail = f" (task {out})" if action == "run" else ""
        LogEntry.objects.create(
            user_id=request.user.pk,
            content_type_id=ContentType.objects.get_for_model(
                Schedule, for_concrete_model=False
            ).pk,
            object_id=name,
            action_flag=CHANGE,
            object_repr=str(Schedule(name=name))[:200],
            change_message=f"{done} on queue {queue!r} of backend {alias!r}{detail}",
        )
        messages.success(request, f"Schedule {name!r} on {queue!r} {done}{detail}.")
        return HttpResponseRedirect(self._url())
