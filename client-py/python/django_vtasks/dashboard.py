"""The admin dashboard (``/admin/django_vtasks/dashboard/``): every queue's depth by state with
links to its queued / running / failed lists, tasks succeeded and failed over the last 30 minutes
as charts, the schedules with their next run, and the workers seen recently.

Everything is rendered on the server (the charts are inline SVG): no script, nothing loaded from
another site. Depths and schedules come from the broker (``info``, ``schedule_list``); charts and
workers from the activity record the workers write (:mod:`django_vtasks.activity`). The dashboard
opens for anyone who may view (or change) queued, running or failed tasks; its counts link only to
the lists the user may open.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from urllib.parse import urlencode

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from . import activity
from .broker import vtasks_backends
from .envelope import decode_envelope
from .models import Dashboard, FailedTask, QueuedTask, RunningTask

logger = logging.getLogger("django_vtasks.dashboard")

CHART_MINUTES = 30


def _rate_text(limit: dict | None) -> str:
    """A queue's rate limit as the dashboard shows it ("100/s, burst 100"), "" without one."""
    if not limit:
        return ""
    per = limit["per_ms"]
    period = f"{per // 1000}s" if per % 1000 == 0 else f"{per}ms"
    period = "s" if period == "1s" else period
    return f"{limit['limit']}/{period}, burst {limit['burst']}"


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 90:
        return f"{seconds}s"
    if seconds < 5400:
        return f"{seconds // 60}min"
    return f"{seconds // 3600}h"


def _n(value: float) -> str:
    """A coordinate for SVG (format_html escapes its arguments to strings first)."""
    return f"{value:.1f}"


def bar_chart(points: list[dict], key: str, color: str, now: float, label: str) -> str:
    """An inline SVG bar chart of ``key`` per minute over the last CHART_MINUTES minutes
    (one bar per sampled interval)."""
    width, height, pad = 600, 120, 30
    start = now - CHART_MINUTES * 60
    shown = [p for p in points if p["t"] > start]
    per_min = [p[key] * 60 / p["seconds"] for p in shown]
    top = max(per_min + [1.0])

    def x(t: float) -> float:
        return pad + (max(t, start) - start) / (CHART_MINUTES * 60) * (width - pad)

    bars = []
    for p, v in zip(shown, per_min, strict=True):
        x0, x1 = x(p["t"] - p["seconds"]), x(p["t"])
        h = v / top * (height - 20)
        stamp = datetime.fromtimestamp(p["t"], UTC).strftime("%H:%M:%S")
        bars.append(
            format_html(
                '<rect x="{}" y="{}" width="{}" height="{}" fill="{}">'
                "<title>{}: {} in {}s until {} UTC ({}/min)</title></rect>",
                _n(x0),
                _n(height - h),
                _n(max(1.0, x1 - x0 - 1)),
                _n(h),
                color,
                label,
                p[key],
                f"{p['seconds']:.0f}",
                stamp,
                _n(v),
            )
        )
    axis = format_html(
        '<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="currentColor" stroke-opacity="0.4"/>'
        '<text x="0" y="12" font-size="11" fill="currentColor">{}/min</text>'
        '<text x="{}" y="{}" font-size="11" fill="currentColor">-{}min</text>'
        '<text x="{}" y="{}" font-size="11" fill="currentColor" text-anchor="end">now</text>',
        pad,
        height,
        width,
        height,
        f"{top:.0f}",
        pad,
        height + 14,
        CHART_MINUTES,
        width,
        height + 14,
    )
    empty = (
        ""
        if shown
        else format_html(
            '<text x="{}" y="{}" font-size="12" fill="currentColor" text-anchor="middle">'
            "no samples yet (workers record one every {}s)</text>",
            _n((width + pad) / 2),
            _n(height / 2),
            f"{activity.sample_interval():g}",
        )
    )
    return format_html(
        '<svg class="vtasks-chart" role="img" aria-label="{}" viewBox="0 0 {} {}" width="100%" '
        'preserveAspectRatio="none" style="max-width:{}px;height:{}px">{}{}{}</svg>',
        label,
        width,
        height + 18,
        width,
        height + 18,
        axis,
        mark_safe("".join(bars)),
        empty,
    )


_STATE_COLORS = (
    ("ready", "#417690"),
    ("delayed", "#79aec8"),
    ("inflight", "#e6a23c"),
    ("dead", "#ba2121"),
)


def depth_bar(info: dict, scale: int) -> str:
    """A horizontal stacked bar of a queue's tasks by state (SVG)."""
    width, x, parts = 200, 0.0, []
    for state, color in _STATE_COLORS:
        n = int(info.get(state, 0))
        if not n:
            continue
        w = n / max(scale, 1) * width
        parts.append(
            format_html(
                '<rect x="{}" y="0" width="{}" height="12" fill="{}"><title>{}: {}</title></rect>',
                _n(x),
                _n(max(w, 1)),
                color,
                state,
                n,
            )
        )
        x += w
    return format_html(
        '<svg class="vtasks-depth" width="{}" height="12" role="img" '
        'aria-label="depth by state">{}</svg>',
        width,
        mark_safe("".join(parts)),
    )


@admin.register(Dashboard)
class DashboardAdmin(admin.ModelAdmin):
    template = "admin/django_vtasks/dashboard.html"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_view_permission(self, request, obj=None):
        return any(self._may_list(request, m) for m in (QueuedTask, RunningTask, FailedTask))

    def _may_list(self, request, model) -> bool:
        model_admin = self.admin_site._registry.get(model)
        return model_admin is not None and model_admin.has_view_or_change_permission(request)

    def has_delete_permission(self, request, obj=None):
        return False

    def get_urls(self):
        name = f"{self.opts.app_label}_{self.opts.model_name}_changelist"
        return [path("", self.admin_site.admin_view(self.changelist_view), name=name)]

    def _list_url(self, model, alias: str, queue: str) -> str:
        return (
            reverse(
                f"admin:django_vtasks_{model._meta.model_name}_changelist",
                current_app=self.admin_site.name,
            )
            + "?"
            + urlencode({"backend": alias, "queue": queue})
        )

    def _backend_context(self, request, alias, backend, now: float) -> dict:
        from .conf import settings as vsettings

        listable = {
            key: model
            for key, model in (
                ("queued", QueuedTask),
                ("running", RunningTask),
                ("failed", FailedTask),
            )
            if self._may_list(request, model)
        }
        broker = backend.broker
        ctx = {
            "alias": alias,
            "kind": broker.kind,
            "queues": [],
            "schedules": [],
            "workers": [],
            "error": None,
        }
        try:
            names = sorted(
                set(broker.queues())
                | set(backend.queues or ())
                | set(vsettings.VTASKS_QUEUES or ())
            )
            infos = {q: broker.info(q) for q in names}
            scale = max(
                [sum(int(i.get(s, 0)) for s, _ in _STATE_COLORS) for i in infos.values()] + [1]
            )
            for q in names:
                i = infos[q]
                ctx["queues"].append(
                    {
                        "name": q,
                        **{s: int(i.get(s, 0)) for s, _ in _STATE_COLORS},
                        "dead_evicted": int(i.get("dead_evicted", 0)),
                        "acked_total": int(i.get("acked_total", 0)),
                        "bar": depth_bar(i, scale),
                        "rate": _rate_text(broker.rate_limit_get(q)),
                        **{
                            f"{key}_url": self._list_url(model, alias, q)
                            for key, model in listable.items()
                        },
                    }
                )
                if i.get("schedules"):
                    for s in broker.schedule_list(q):
                        try:
                            func = decode_envelope(s.payload).get("func", "")
                        except Exception:
                            func = "(undecodable payload)"
                        next_run = s.next_run_ms / 1000
                        ctx["schedules"].append(
                            {
                                "queue": q,
                                "name": s.name,
                                "func": func,
                                "spec": s.spec
                                if s.kind == "cron"
                                else f"every {int(s.spec) / 1000:g}s",
                                "next_run": datetime.fromtimestamp(next_run, UTC),
                                "in": _ago(next_run - now),
                                "paused": s.paused,
                            }
                        )
            points = activity.rates(activity.samples(broker))
            ctx["throughput_chart"] = bar_chart(points, "succeeded", "#2e7d32", now, "succeeded")
            ctx["failure_chart"] = bar_chart(points, "failed", "#ba2121", now, "failed")
            recent = [p for p in points if p["t"] > now - CHART_MINUTES * 60]
            ctx["totals"] = {
                k: sum(p[k] for p in recent) for k in ("succeeded", "failed", "retried")
            }
            for wid, w in sorted(activity.workers(broker).items()):
                ctx["workers"].append(
                    {
                        "id": wid,
                        **w,
                        "queues": ", ".join(w.get("queues") or []),
                        "seen_ago": _ago(now - w.get("seen", 0)),
                        "up": _ago(now - w.get("started", now)),
                        # not seen for 3 report intervals
                        "gone": now - w.get("seen", 0) > 3 * activity.report_interval(),
                    }
                )
        except Exception as e:  # a broker down must not 500 the admin
            logger.warning("dashboard: reading the broker of %r failed: %s", alias, e)
            ctx["error"] = f"{type(e).__name__}: {e}"
        return ctx

    def changelist_view(self, request, extra_context=None):
        if not self.has_view_permission(request):
            raise PermissionDenied
        now = time.time()
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "vtasks dashboard",
            "subtitle": None,
            "backends": [self._backend_context(request, a, b, now) for a, b in vtasks_backends()],
            "chart_minutes": CHART_MINUTES,
            "states": [s for s, _ in _STATE_COLORS],
            "legend": format_html_join(
                " ",
                '<span class="vtasks-swatch" style="background:{}"></span>{}',
                ((c, s) for s, c in _STATE_COLORS),
            ),
        }
        context.update(extra_context or {})
        return TemplateResponse(request, self.template, context)
