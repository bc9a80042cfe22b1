"""The admin of dispatches (outcomes, stop) and their deliveries."""

import json

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from accounts.admin.bases import BigTableAdmin, ReadOnlyAdminMixin, ScopedAdmin
from config.zones import zone, zoned_column
from delivery.admin.contents import _spec_previews_html
from delivery.models import Delivery, Dispatch
from delivery.reports import report_charts, report_charts_html
from delivery.selectors import (
    deliveries_visible_to,
    dispatch_outcomes,
    dispatch_shown_zone,
)
from delivery.services.dispatches import dispatch_counted_now, dispatch_stop


@admin.register(Dispatch)
class DispatchAdmin(ScopedAdmin):
    list_display = (
        "__str__",
        "app",
        "kind",
        "status",
        "progress",
        "accepted",
        "failed",
        "skipped",
        "unknown",
        "created",
    )
    list_filter = ("status", "kind")
    list_select_related = ("app",)
    actions = ["stop"]
    fields = (
        "label",
        "app",
        "kind",
        "status",
        "stream",
        "progress",
        "outcomes",
        "report",
        "total",
        "accepted",
        "failed",
        "skipped",
        "unknown",
        "opened",
        "error",
        "source",
        "content",
        "context",
        "created_by",
        "created",
        "started",
        "finished",
    )
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(shown_zone=dispatch_shown_zone())

    created = zoned_column("created_at", "Created at")

    started = zoned_column("started_at", "Started at")

    finished = zoned_column("finished_at", "Finished at")

    @admin.display(description="Sent by")
    def source(self, obj):
        """A link back to the campaign or the journey that sent it."""
        from django.apps import apps

        if obj.source_id is None:
            return "A test send" if obj.kind == Dispatch.Kind.TEST else "—"
        if obj.kind in (Dispatch.Kind.CAMPAIGN, Dispatch.Kind.API_TRIGGER):
            campaign = apps.get_model("campaigns", "Campaign").objects.filter(pk=obj.source_id).first()
            if campaign is None:
                return f"campaign {obj.source_id} (deleted)"
            url = reverse("admin:campaigns_campaign_change", args=[campaign.pk])
            return format_html('<a href="{}" class="dispatch-source">Campaign “{}”</a>', url, campaign)
        if obj.kind == Dispatch.Kind.JOURNEY:
            version = (
                apps.get_model("journeys", "JourneyVersion")
                .objects.select_related("journey")
                .filter(pk=obj.source_id)
                .first()
            )
            if version is None:
                return f"journey version {obj.source_id} (deleted)"
            url = reverse("admin:journeys_journey_change", args=[version.journey_id])
            return format_html(
                '<a href="{}" class="dispatch-source">Journey “{}”, version {}</a>',
                url,
                version.journey,
                version.number,
            )
        return str(obj.source_id)

    @admin.display(description="Content sent")
    def content(self, obj):
        """The frozen content as phones show it; its JSON one click away."""
        return format_html(
            '{}<details><summary>As JSON</summary><pre style="white-space:pre-wrap">{}</pre></details>',
            _spec_previews_html(obj.content_spec or {}, app_name=obj.app.name, profile=None, context={}),
            json.dumps(obj.content_spec, indent=2, ensure_ascii=False),
        )

    def get_object(self, request, object_id, from_field=None):
        obj = super().get_object(request, object_id, from_field)
        # An open stream's page reloads every two seconds: its counters as they are now.
        return obj if obj is None else dispatch_counted_now(obj)

    def changelist_view(self, request, extra_context=None):
        response = super().changelist_view(request, extra_context)
        changelist = (getattr(response, "context_data", None) or {}).get("cl")
        if changelist is not None:
            for obj in changelist.result_list:
                dispatch_counted_now(obj)
        return response

    def has_add_permission(self, request):
        return False  # dispatches are made by campaigns, journeys, API triggers and test sends

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="Progress")
    def progress(self, obj):
        live = ""
        if obj.status in Dispatch.RUNNING_STATUSES:
            live = mark_safe("<script>setTimeout(function(){location.reload()}, 2000)</script>")  # noqa: S308 (a constant)
        return format_html(
            '<div style="width:160px;background:#eee;border-radius:4px" title="{} of {}">'
            '<div style="width:{}%;background:#417690;height:10px;border-radius:4px"></div></div>'
            "<small>{}% · {} of {}</small>{}",
            obj.done_count,
            obj.total,
            obj.percent,
            obj.percent,
            obj.done_count,
            obj.total,
            live,
        )

    @admin.display(description="Stream")
    def stream(self, obj):
        """A standing dispatch: what it streams, and its last minute (rate, trigger-to-accepted latency)."""
        if not obj.standing:
            return "— (a send run of its own)"
        from delivery.services.streams import stream_live_figures

        figures = stream_live_figures(obj)
        latency = (
            f"p50 {figures['latency_p50_ms']:.0f} ms, p99 {figures['latency_p99_ms']:.0f} ms"
            if figures["latency_p50_ms"] is not None
            else "no push accepted"
        )
        return format_html(
            "Calls append to it during {} (UTC), version {}.<br>"
            "<strong>Last minute: {} messages/s, trigger to accepted {}.</strong>",
            obj.stream_day,
            obj.stream_version[:12],
            figures["rate_per_second"],
            latency,
        )

    @admin.display(description="Outcomes by reason")
    def outcomes(self, obj):
        rows = dispatch_outcomes(obj)
        if not rows:
            return "—"
        deliveries = reverse("admin:delivery_delivery_changelist")
        final = [r for r in rows if r["status"] != "retried"]
        retried = [r for r in rows if r["status"] == "retried"]
        return format_html(
            "<table><tr><th>status</th><th>reason</th><th>count</th></tr>{}{}{}</table>",
            format_html_join(
                "",
                '<tr><td><a href="{}?dispatch__id__exact={}&status__exact={}">{}</a></td><td>{}</td><td>{}</td></tr>',
                (
                    (deliveries, obj.pk, r["status"], r["status"], r["reason"] or "—", r["count"])
                    for r in final
                    if r["status"] != "pending"
                ),
            ),
            format_html_join(
                "",
                '<tr><td><a href="{}?dispatch__id__exact={}">pending</a></td><td>queued or in flight</td>'
                "<td>{}</td></tr>",
                ((deliveries, obj.pk, r["count"]) for r in final if r["status"] == "pending"),
            ),
            format_html_join(
                "",
                "<tr><td>retried after</td><td>{}</td><td>{}</td></tr>",
                ((r["reason"], r["count"]) for r in retried),
            ),
        )

    @admin.display(description="Report")
    def report(self, obj):
        """Accepted and opened over time (in the zone of the page's other times: its campaign's), per
        platform, the funnel, and failures and skips by reason."""
        charts = report_charts(dispatch_ids=[obj.pk], tz=zone(obj.shown_zone))
        return mark_safe(report_charts_html(charts))  # noqa: S308 (a template, autoescaped)

    @admin.action(description="Stop the selected dispatches (queued rows are not sent)", permissions=["stop"])
    def stop(self, request, queryset):
        for dispatch in queryset:
            try:
                dispatch_stop(dispatch_id=dispatch.pk, by=request.user)
            except PermissionDenied as exc:
                self.message_user(request, f"{dispatch}: {exc}", messages.ERROR)
                continue
            self.message_user(request, f"{dispatch}: stopped.", messages.SUCCESS)

    def has_stop_permission(self, request):
        return request.user.has_perm("delivery.stop_dispatch")


@admin.register(Delivery)
class DeliveryAdmin(ReadOnlyAdminMixin, BigTableAdmin):
    list_display = ("id", "dispatch", "device", "status", "reason", "attempts", "finished", "opened")
    list_filter = ("status",)
    search_fields = ("=id", "=provider_message_id")
    list_select_related = ("dispatch", "device")
    raw_id_fields = ("dispatch", "device")
    ordering = ("-id",)
    fields = (
        "dispatch",
        "device",
        "profile_id",
        "status",
        "reason",
        "variant",
        "provider_message_id",
        "attempts",
        "next_attempt",
        "expires",
        "lease_expires",
        "finished",
        "opened",
    )
    readonly_fields = fields

    def get_queryset(self, request):
        # Times in the zone of the dispatch's campaign (UTC for a journey's or a test send's).
        return (
            deliveries_visible_to(request.user)
            .select_related("dispatch", "device")
            .annotate(shown_zone=dispatch_shown_zone("dispatch__"))
        )

    next_attempt = zoned_column("next_attempt_at", "Next attempt at")

    expires = zoned_column("expires_at", "Expires at")

    lease_expires = zoned_column("lease_expires_at", "Lease expires at")

    finished = zoned_column("finished_at", "Finished at")

    opened = zoned_column("opened_at", "Opened at")

    def _get_obj_does_not_exist_redirect(self, request, opts, object_id):
        raise Http404("No delivery with this id.")
