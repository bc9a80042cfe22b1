"""The admin of dispatches (outcomes, stop) and their deliveries."""

import json

from django.apps import apps
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode
from django.utils.safestring import mark_safe

from accounts.admin.bases import BigTableAdmin, ReadOnlyAdminMixin, ScopedAdmin, asks_again, row_id, with_reader_sees
from accounts.selectors import visible_to
from audiences.models import Profile
from config.labels import numbered
from config.zones import zone, zoned, zoned_column
from delivery.admin.contents import _spec_previews_html
from delivery.models import App, Delivery, Dispatch, PushContent, rows_within
from delivery.personalization import rendered_in
from delivery.reasons import reason_html
from delivery.reports import dispatch_held, report_charts, report_charts_html
from delivery.rules import profile_zone
from delivery.selectors import (
    deliveries_visible_to,
    devices_visible_to,
    dispatch_named,
    dispatch_outcomes,
    dispatch_rows_visible,
    dispatch_rows_withheld,
    dispatch_shown_zone,
    dispatches_visible_to,
    with_source_seen,
)
from delivery.services.dispatches import dispatch_counted_now, dispatch_stop, dispatches_counted_now

CAMPAIGN_PARAMETER = "campaign"  # the list of one campaign's sends


def _sent_html(spec: dict | None, *, app_name: str, context: dict | None) -> str:
    """A frozen content spec as phones show it, with the context its send gave it; its JSON a click away."""
    if not spec:
        return "—"
    return format_html(
        '{}<details><summary>As JSON</summary><pre style="white-space:pre-wrap">{}</pre></details>',
        _spec_previews_html(spec, app_name=app_name, profile=None, context=context or {}),
        json.dumps(spec, indent=2, ensure_ascii=False),
    )


# The keys of a send's context that name what sent it, and the kind each names.
CONTEXT_SOURCES = {"campaign": "campaign", "journey": "journey"}


def _context_as_seen(dispatch: Dispatch) -> dict:
    """The send's context as its reader may read it (``source_seen``): what names a campaign or a
    journey they may not see says its kind and number alone, its name and version left out."""
    context = dict(dispatch.context or {})
    if getattr(dispatch, "source_seen", True):
        return context
    for key, kind in CONTEXT_SOURCES.items():
        named = context.get(key)
        if isinstance(named, dict):
            context[key] = {"id": named.get("id"), "name": numbered(kind, named.get("id"))}
    return context


def _context_withheld(dispatch: Dispatch) -> dict[str, str]:
    """The keys of the send's context (``CONTEXT_SOURCES``) that name what sent it to a reader who may
    not see it (``source_seen``), with the kind each names: their values but the id are not shown."""
    if getattr(dispatch, "source_seen", True):
        return {}
    return {key: kind for key, kind in CONTEXT_SOURCES.items() if isinstance((dispatch.context or {}).get(key), dict)}


def _preview_substitutes(dispatch: Dispatch) -> str:
    """A line under a preview drawn with ``_context_as_seen``: what it reads in place of the names
    its reader may not see, so no one takes it for what the phones received."""
    return format_html_join(
        "",
        '<p class="help preview-substitutes">The preview reads “{}” where this send gave its content the {}’s'
        " name, which you have no access to.</p>",
        ((numbered(kind, dispatch.context[key].get("id")), kind) for key, kind in _context_withheld(dispatch).items()),
    )


def _context_lines(value, path: str = "context") -> list[tuple[str, str]]:
    """(Liquid path, value) for each value of a context, nested keys flattened, a text as it is and
    any other value as JSON: ("context.campaign.name", "Spring sale"), ("context.campaign.id", "12")."""
    if isinstance(value, dict) and value:
        return [line for key, item in value.items() for line in _context_lines(item, f"{path}.{key}")]
    return [(path, value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))]


def campaign_sends(queryset: QuerySet[Dispatch], campaign_id: int) -> QuerySet[Dispatch]:
    """The dispatches of ``queryset`` that the campaign sent (its runs, its API triggers' streams),
    the newest first: read through ``dispatch_campaign_sends_idx``, however many it sent."""
    kinds = [Dispatch.Kind.CAMPAIGN, Dispatch.Kind.API_TRIGGER]  # the index's condition
    return queryset.filter(source_id=campaign_id, kind__in=kinds).order_by("-created_at", "-id")


def campaign_sends_url(campaign_id: int) -> str:
    """The list of the campaign's sends."""
    return reverse("admin:delivery_dispatch_changelist") + "?" + urlencode({CAMPAIGN_PARAMETER: campaign_id})


def _campaign_asked(request):
    """The campaign whose sends the list is asked for (``?campaign=``), or None when it is not asked;
    raises Http404 for one the user may not see, as for one that does not exist."""
    if CAMPAIGN_PARAMETER not in request.GET:
        return None
    if "_pushdesk_sends_of" not in request.__dict__:
        model = apps.get_model("campaigns", "Campaign")
        campaign_id = row_id(model, request.GET[CAMPAIGN_PARAMETER])
        found = visible_to(request.user, model.objects.filter(pk=campaign_id)).first() if campaign_id else None
        if found is None:
            raise Http404("No such campaign.")
        request.__dict__["_pushdesk_sends_of"] = found
    return request.__dict__["_pushdesk_sends_of"]


JOURNEY_STEP_PARAMETER = "journey_step"  # the list of one journey push step's sends: "<version id>:<step id>"


def journey_step_sends_url(version_id: int, step: str) -> str:
    """The list of the batches a journey version's push step sent."""
    query = urlencode({JOURNEY_STEP_PARAMETER: f"{version_id}:{step}"})
    return reverse("admin:delivery_dispatch_changelist") + "?" + query


def _journey_step_asked(request):
    """The (journey version, step id) whose sends the list is asked for (``?journey_step=``), or None
    when it is not asked; raises Http404 for a step of a journey the user may not see, as for a
    version or a step that does not exist."""
    if JOURNEY_STEP_PARAMETER not in request.GET:
        return None
    if "_pushdesk_step_sends_of" not in request.__dict__:
        versions = apps.get_model("journeys", "JourneyVersion").objects.select_related("journey")
        version_id, _, step = request.GET[JOURNEY_STEP_PARAMETER].partition(":")
        version_id = row_id(versions.model, version_id)
        version = versions.filter(pk=version_id).first() if version_id else None
        journeys = apps.get_model("journeys", "Journey").objects
        if version is None or not visible_to(request.user, journeys.filter(pk=version.journey_id)).exists():
            raise Http404("No such journey.")
        if step not in version.step_map():
            raise Http404("No such step in this journey version.")
        request.__dict__["_pushdesk_step_sends_of"] = (version, step)
    return request.__dict__["_pushdesk_step_sends_of"]


def _journey_step_said(version, step: str) -> str:
    return f"journey “{version.journey}”, version {version.number}, step '{step}'"


class JourneyStepFilter(admin.SimpleListFilter):
    """One journey push step's sends, the list its box on the journey's page links to; offered once
    chosen."""

    title = "journey step"
    parameter_name = JOURNEY_STEP_PARAMETER

    def lookups(self, request, model_admin):
        asked = _journey_step_asked(request)
        return [] if asked is None else [(self.value(), _journey_step_said(*asked))]

    def queryset(self, request, queryset):
        asked = _journey_step_asked(request)
        if asked is None:
            return queryset
        version, step = asked
        # The version's batches (``dispatch_source_idx``), of the step their context names.
        return queryset.filter(kind=Dispatch.Kind.JOURNEY, source_id=version.pk, context__journey__step=step)


class CampaignFilter(admin.SimpleListFilter):
    """One campaign's sends, the list its page links to; offered once chosen (a choice of every
    campaign would be long)."""

    title = "campaign"
    parameter_name = CAMPAIGN_PARAMETER

    def lookups(self, request, model_admin):
        campaign = _campaign_asked(request)
        return [] if campaign is None else [(str(campaign.pk), str(campaign))]

    def queryset(self, request, queryset):
        campaign = _campaign_asked(request)
        return queryset if campaign is None else campaign_sends(queryset, campaign.pk)


@admin.register(Dispatch)
class DispatchAdmin(ScopedAdmin):
    """The dispatches the user may see, newest first; a campaign's page links to its own
    (``?campaign=``), which answers 404 to whoever may not see that campaign. A campaign recurring
    every minute makes 1,440 a day: the list never counts the whole table."""

    empty_hint = (
        "A send is listed here once it starts: a campaign approved to send now, due on its schedule or "
        "triggered through the API, a test send, or a journey's push step."
    )

    list_display = (
        "name_shown",
        "app_shown",
        "kind",
        "status",
        "progress",
        "accepted",
        "failed",
        "skipped",
        "unknown",
        "created",
    )
    list_filter = (CampaignFilter, JourneyStepFilter, "status", "kind")
    list_select_related = ("app",)
    show_full_result_count = False
    actions = ["stop"]
    fields = (
        "label",
        "app_shown",
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
        "content_shown",
        "content_sent",
        "context_shown",
        "created_by",
        "time_zone_shown",
        "created",
        "started",
        "finished",
    )
    readonly_fields = fields

    def get_queryset(self, request):
        # Not the app's scope alone (``ScopedAdmin``): a journey granted without its app shows its sends.
        rows = dispatches_visible_to(request.user, super(ScopedAdmin, self).get_queryset(request))
        # A send of a campaign or a journey granted without its app (or its content) is read
        # without them: each is named to whoever may see it, read with the rows in the same query.
        rows = with_reader_sees(rows, request.user, field="app_id", model=App, name="app_seen")
        rows = with_reader_sees(rows, request.user, field="content_id", model=PushContent, name="content_seen")
        # What sent it may have moved to an app outside the reader's access since (``with_source_seen``).
        return with_source_seen(rows, request.user).annotate(shown_zone=dispatch_shown_zone())

    @admin.display(description="Dispatch", ordering="label")
    def name_shown(self, obj):
        """Its label (which names what sent it) to a reader who may see what sent it, its number to
        the others ("Dispatch #12")."""
        return self.object_named(obj)

    @admin.display(description="Context")
    def context_shown(self, obj):
        """What the send gave its content as ``context.*``, one value a line as Liquid reads it
        (``context.campaign.name``: “Spring sale”): the campaign or journey it names told only to a
        reader who may see what sent it; to the others its id alone, each other value of it said
        not shown, and why."""
        context = obj.context or {}
        if not context:
            return "Nothing: the content could read no context.* value."
        withheld = {f"context.{key}.": kind for key, kind in _context_withheld(obj).items()}

        def shown(path: str, value: str) -> str:
            for prefix, kind in withheld.items():
                if path.startswith(prefix) and path != f"{prefix}id":
                    return format_html("<em>not shown: it names a {} you have no access to</em>", kind)
            return value

        return format_html(
            '<table class="dispatch-context">{}</table>',
            format_html_join(
                "",
                "<tr><th><code>{}</code></th><td>{}</td></tr>",
                ((path, shown(path, value)) for path, value in _context_lines(context)),
            ),
        )

    @admin.display(description="App", ordering="app__name")
    def app_shown(self, obj):
        """The app it sends for, named to a reader who may see it, "app #3" to the others."""
        return obj.app.name if getattr(obj, "app_seen", False) else numbered("app", obj.app_id)

    @admin.display(description="Content")
    def content_shown(self, obj):
        """The push content it was made from, named and linked to a reader who may open it,
        "content #7" to the others."""
        if obj.content_id is None:
            return "—"
        if not getattr(obj, "content_seen", False):
            return numbered("content", obj.content_id)
        url = reverse("admin:delivery_pushcontent_change", args=[obj.content_id])
        return format_html('<a href="{}">{}</a>', url, obj.content)

    created = zoned_column("created_at", "Created at")

    started = zoned_column("started_at", "Started at")

    finished = zoned_column("finished_at", "Finished at")

    @admin.display(description="Time zone")
    def time_zone_shown(self, obj):
        """The zone the send renders its content's ``now`` in (``Dispatch.time_zone``, its campaign's):
        at a local time, each profile's own; none named (a journey's send, a test's, one made before
        sends named theirs): UTC, the server's clock."""
        if obj.local_time:
            without = profile_zone("", obj.local_default_timezone or obj.time_zone)
            return f"Each profile's own (for a profile without one: {without})"
        return obj.time_zone or "UTC"

    @admin.display(description="Sent by")
    def source(self, obj):
        """A link back to the campaign or the journey that sent it; a test send, and the campaign it
        tested (its context names it; its source is its content). What its reader may not see
        (``source_seen``) is said by kind and number."""
        seen = getattr(obj, "source_seen", True)
        if obj.kind == Dispatch.Kind.TEST:
            tested = obj.campaign_sent_by
            if tested is None:
                return "A test send"
            if not seen:
                return f"A test send of {numbered('campaign', tested)}"
            return format_html("A test send of {}", self._campaign_link(tested))
        if obj.source_id is None:
            return "—"
        if not seen:
            kind = "journey version" if obj.kind == Dispatch.Kind.JOURNEY else "campaign"
            return numbered(kind, obj.source_id)
        if obj.kind in (Dispatch.Kind.CAMPAIGN, Dispatch.Kind.API_TRIGGER):
            return self._campaign_link(obj.source_id, word="Campaign")
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

    @staticmethod
    def _campaign_link(campaign_id: int, *, word: str = "campaign") -> str:
        """'campaign “Spring sale”', linked to its page; 'campaign 5 (deleted)' once it is gone."""
        campaign = apps.get_model("campaigns", "Campaign").objects.filter(pk=campaign_id).first()
        if campaign is None:
            return f"{word} {campaign_id} (deleted)"
        url = reverse("admin:campaigns_campaign_change", args=[campaign.pk])
        return format_html('<a href="{}" class="dispatch-source">{} “{}”</a>', url, word, campaign)

    @admin.display(description="Content sent")
    def content_sent(self, obj):
        """What it sent as phones show it: its frozen content, or each frozen variant under its label
        and share (its content named to a reader who may see it, "content #7" to the others) and the
        holdout's share; each one's JSON a click away. The text is the send's own: whoever may read
        the send reads it (a Viewer granted its campaign alone), as the campaign's page shows it; its
        ``now`` in the send's zone (``Dispatch.time_zone``; at a local time, for a profile without one)."""
        with rendered_in(profile_zone(obj.time_zone, obj.local_default_timezone)):
            return self._content_sent(obj)

    def _content_sent(self, obj):
        app_name = obj.app.name if getattr(obj, "app_seen", False) else numbered("app", obj.app_id)
        if not obj.variants:
            sent = _sent_html(obj.content_spec, app_name=app_name, context=_context_as_seen(obj))
            return format_html("{}{}", sent, _preview_substitutes(obj)) if obj.content_spec else sent
        seen = getattr(obj, "variant_contents_seen", set())
        variants = format_html_join(
            "",
            '<div class="variant-sent" data-variant="{}"><h4>Variant {} — {} ({}%)</h4>{}</div>',
            (
                (
                    v.get("label", ""),
                    v.get("label", ""),
                    v["content"]
                    if v.get("content_id") in seen and v.get("content")
                    else numbered("content", v.get("content_id")),
                    v.get("share", ""),
                    _sent_html(v.get("spec"), app_name=app_name, context=_context_as_seen(obj)),
                )
                for v in obj.variants
            ),
        )
        holdout = (
            format_html("<p>Holdout: {}% of the audience got nothing (the control group).</p>", obj.holdout_share)
            if obj.holdout_share
            else ""
        )
        return format_html("{}{}{}", variants, _preview_substitutes(obj), holdout)

    def get_object(self, request, object_id, from_field=None):
        obj = super().get_object(request, object_id, from_field)
        if obj is None:
            return None
        contents = {v.get("content_id") for v in obj.variants} - {None}
        if contents:
            # Its frozen variants name their contents: only those the reader may see are named.
            seen = visible_to(request.user, PushContent.objects.filter(pk__in=contents))
            obj.variant_contents_seen = set(seen.values_list("pk", flat=True))
        if not getattr(obj, "source_seen", True):
            # Its label names what sent it: the page's title, breadcrumbs and history say its number.
            obj.label = dispatch_named(obj, seen=False)
        # Read through a campaign or a journey seen through another app's access: its counts, not its rows.
        obj.rows_seen = dispatch_rows_visible(request.user, obj)
        # An open stream's page reloads every two seconds: its counters as they are now.
        return dispatch_counted_now(obj)

    def get_ordering(self, request):
        if CAMPAIGN_PARAMETER in request.GET or JOURNEY_STEP_PARAMETER in request.GET:
            return ("-created_at", "-id")  # as its page lists the latest, and as the index reads them
        return super().get_ordering(request)

    def changelist_view(self, request, extra_context=None):
        extra = dict(extra_context or {})
        if self.has_view_permission(request):
            campaign = _campaign_asked(request)
            if campaign is not None:
                extra["title"] = f"Sends of “{campaign}”"
            step = _journey_step_asked(request)
            if step is not None:
                extra["title"] = f"Sends of {_journey_step_said(*step)}"
        response = super().changelist_view(request, extra)
        changelist = (getattr(response, "context_data", None) or {}).get("cl")
        if changelist is not None:
            dispatches_counted_now(list(changelist.result_list))  # the page's open streams, in one query
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
            f"trigger to accepted p50 {figures['latency_p50_ms']:.0f} ms, p99 {figures['latency_p99_ms']:.0f} ms "
            "(rows held by quiet hours are left out)"
            if figures["latency_p50_ms"] is not None
            else "only pushes held by quiet hours accepted in it, so no time from trigger to accepted"
            if figures["accepted"]
            else "no push accepted in it, so no time from trigger to accepted"
        )
        return format_html(
            "Calls append to it during {} (UTC), version {}.<br><strong>Last minute: {} accepted messages/s, {}.</strong>",
            obj.stream_day,
            obj.stream_version[:12],
            figures["rate_per_second"],
            latency,
        )

    @admin.display(description="Outcomes by reason")
    def outcomes(self, obj):
        """Counts by status and reason, each linked to its deliveries for a reader who may read them
        (``dispatch_rows_visible``); unlinked for the others, saying why."""
        rows = dispatch_outcomes(obj)
        if not rows:
            return "—"
        if not getattr(obj, "rows_seen", True):
            return format_html(
                '{}<p class="help">{}</p>', self._outcomes_html(obj, rows, linked=False), dispatch_rows_withheld(obj)
            )
        return self._outcomes_html(obj, rows, linked=True)

    @staticmethod
    def _outcomes_html(obj, rows: list[dict], *, linked: bool) -> str:
        deliveries = reverse("admin:delivery_delivery_changelist")

        def status_cell(label: str, status: str | None) -> str:
            """The status, linked to the dispatch's deliveries of it (``None``: those not final) when ``linked``."""
            if not linked:
                return label
            if status is None:
                return format_html('<a href="{}?dispatch__id__exact={}">{}</a>', deliveries, obj.pk, label)
            return format_html(
                '<a href="{}?dispatch__id__exact={}&status__exact={}">{}</a>', deliveries, obj.pk, status, label
            )

        final = [r for r in rows if r["status"] != "retried"]
        retried = [r for r in rows if r["status"] == "retried"]
        waiting = sum(r["count"] for r in final if r["status"] == "pending")
        pending = []
        if waiting:
            # Held until the quiet hours end, a push waits for hours: counted apart, with when the first goes.
            held, first = dispatch_held(obj)
            held = min(held, waiting)
            if held:
                pending.append((held, f"held until quiet hours end, the first at {zoned(first, obj.shown_zone)}"))
            if waiting > held:
                pending.append((waiting - held, "queued or in flight"))
        return format_html(
            "<table><tr><th>status</th><th>reason</th><th>count</th></tr>{}{}{}</table>",
            format_html_join(
                "",
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                (
                    (status_cell(Delivery.Status(r["status"]).label, r["status"]), reason_html(r["reason"]), r["count"])
                    for r in final
                    if r["status"] != "pending"
                ),
            ),
            format_html_join(
                "",
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                ((status_cell("Pending", None), said, count) for count, said in pending),
            ),
            format_html_join(
                "",
                "<tr><td>Retried after</td><td>{}</td><td>{}</td></tr>",
                ((reason_html(r["reason"]), r["count"]) for r in retried),
            ),
        )

    @admin.display(description="Report")
    def report(self, obj):
        """Accepted and opened over time (in the zone of the page's other times: its campaign's), per
        platform, the funnel, and failures and skips by reason."""
        charts = report_charts(dispatch_ids=[obj.pk], tz=zone(obj.shown_zone))
        return mark_safe(report_charts_html(charts))  # noqa: S308 (a template, autoescaped)

    @admin.action(description="Stop the selected dispatches (queued rows are not sent)", permissions=["stop"])
    @asks_again(
        verb="Stop",
        consequences=[
            "Their pushes not yet handed to Apple or Google are skipped (stopped); those already handed over "
            "keep their outcome. A finished dispatch is left as it is.",
            "The campaign or journey that made them goes on (its next send, trigger call or journey step opens "
            "a new dispatch): stop it to stop sending.",
        ],
    )
    def stop(self, request, queryset):
        for dispatch in queryset:
            try:
                dispatch_stop(dispatch_id=dispatch.pk, by=request.user)
            except PermissionDenied as exc:
                self.message_user(request, f"{self.object_named(dispatch)}: {exc}", messages.ERROR)
                continue
            self.message_user(request, f"{self.object_named(dispatch)}: stopped.", messages.SUCCESS)

    def object_named(self, obj) -> str:
        """A send in an action's question and messages, as its list names it (``dispatch_named``)."""
        return dispatch_named(obj, seen=getattr(obj, "source_seen", True))

    # What a reader who may not see what sent a send (or its variants' contents) reads withheld:
    # its label and context name the campaign or journey, its variants their contents.
    withheld_fields = ("label", "context", "variants")
    # Sorted by the label, which names what sent it, and by the app's name, which a send of a campaign
    # or journey granted without its app says by number.
    withheld_columns = ("name_shown", "app_shown")

    def has_stop_permission(self, request):
        return request.user.has_perm("delivery.stop_dispatch")


@admin.register(Delivery)
class DeliveryAdmin(ReadOnlyAdminMixin, BigTableAdmin):
    list_display = ("id", "dispatch_shown", "device", "status", "reason_shown", "attempts", "finished", "opened")
    list_filter = ("status",)
    search_fields = ("=id", "=provider_message_id")
    list_select_related = ("dispatch", "device")
    raw_id_fields = ("dispatch", "device")
    ordering = ("-id",)
    fields = (
        "dispatch_shown",
        "device_shown",
        "profile_shown",
        "status",
        "reason_shown",
        "variant",
        "provider_message_id",
        "attempts",
        "next_attempt",
        "held",
        "expires",
        "lease_expires",
        "finished",
        "opened",
    )
    readonly_fields = fields

    def get_queryset(self, request):
        # Times in the zone of the dispatch's campaign (UTC for a journey's or a test send's).
        rows = (
            deliveries_visible_to(request.user)
            .select_related("dispatch", "device")
            .annotate(shown_zone=dispatch_shown_zone("dispatch__"))
        )
        rows = with_source_seen(rows, request.user, prefix="dispatch__")
        return self._within_dispatch(request, rows)

    @admin.display(description="Dispatch", ordering="dispatch")
    def dispatch_shown(self, obj):
        """Its send, linked, named as its reader may be told it (``dispatch_named``)."""
        url = reverse("admin:delivery_dispatch_change", args=[obj.dispatch_id])
        return format_html('<a href="{}">{}</a>', url, dispatch_named(obj.dispatch, seen=obj.source_seen))

    def get_object(self, request, object_id, from_field=None):
        obj = super().get_object(request, object_id, from_field)
        if obj is not None and obj.device is not None:
            # A reader granted the send's campaign or journey, not its app, may not open the device's page.
            obj.device_seen = devices_visible_to(request.user).filter(pk=obj.device_id).exists()
        return obj

    @staticmethod
    def _within_dispatch(request, rows):
        """Listed for one dispatch (its page's links), the list reads only the ids its rows lie
        between: in id order, the table's newer rows are not walked past first."""
        wanted = request.GET.get("dispatch__id__exact", "")
        if not wanted.isascii() or not wanted.isdigit() or len(wanted) > 18:
            return rows
        bounds = Dispatch.objects.filter(pk=int(wanted)).values_list("rows_after_id", "rows_until_id").first()
        if bounds is None:
            return rows
        return rows_within(rows, *bounds)

    @admin.display(description="Device")
    def device_shown(self, obj):
        """The device ("iOS …1234"), linked to its page for a reader who may open it, unlinked for
        the others; one deleted since by the id it had (the row keeps it)."""
        if obj.device_id is None:
            return "—"
        if obj.device is None:
            return f"a deleted device (#{obj.device_id})"
        if not getattr(obj, "device_seen", False):
            return str(obj.device)
        url = reverse("admin:delivery_device_change", args=[obj.device_id])
        return format_html('<a href="{}">{}</a>', url, obj.device)

    @admin.display(description="Profile")
    def profile_shown(self, obj):
        """The profile by its external id, leading to its page (every role reads profiles); one
        deleted since by the id it had (the row keeps it)."""
        if obj.profile_id is None:
            return "—"
        profile = Profile.objects.filter(pk=obj.profile_id).only("external_id").first()
        if profile is None:
            return f"a deleted profile (#{obj.profile_id})"
        url = reverse("admin:audiences_profile_change", args=[profile.pk])
        return format_html('<a href="{}">{}</a>', url, profile.external_id)

    @admin.display(description="Reason", ordering="reason")
    def reason_shown(self, obj):
        return reason_html(obj.reason)

    next_attempt = zoned_column("next_attempt_at", "Next attempt at")

    held = zoned_column("held_until", "Held by quiet hours until")

    expires = zoned_column("expires_at", "Expires at")

    lease_expires = zoned_column("lease_expires_at", "Lease expires at")

    finished = zoned_column("finished_at", "Finished at")

    opened = zoned_column("opened_at", "Opened at")

    def _get_obj_does_not_exist_redirect(self, request, opts, object_id):
        raise Http404("No delivery with this id.")
