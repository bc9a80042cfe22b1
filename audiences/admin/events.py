"""The admin of events: read-only, a big table."""

from __future__ import annotations

import json

from django.contrib import admin, messages
from django.template.defaultfilters import pluralize
from django.urls import reverse
from django.utils.html import format_html

from accounts.admin.bases import AccessAdmin, BigTableAdmin, EstimatedCountPaginator
from audiences.admin.profiles import ReadOnlyMixin, external_id_terms
from audiences.models import Event, EventReplay
from audiences.selectors import (
    event_names,
    events_newest_ids,
    events_visible_to,
)


def _shortened(text: str, most: int) -> str:
    return text if len(text) <= most else text[: most - 3] + "…"


class EventNameFilter(admin.SimpleListFilter):
    """Event names from a skip scan of the index: no COUNT, no scan of the table."""

    title = "event"
    parameter_name = "name"

    def lookups(self, request, model_admin):
        return [(name, name) for name in event_names()[:100]]

    def queryset(self, request, queryset):
        return queryset.filter(name=self.value()) if self.value() else queryset


class NewestEventsPaginator(EstimatedCountPaginator):
    """The unfiltered list's page, newest first, without sorting every event: its rows are among
    the newest ``page × per_page`` that ``events_newest_ids`` reads by name from an index."""

    def page(self, number):
        number = self.validate_number(number)
        bottom = (number - 1) * self.per_page
        top = bottom + self.per_page
        rows = self.object_list
        newest = events_newest_ids(top) if not rows.query.where else None
        if newest is not None:
            rows = rows.filter(id__in=newest)
        return self._get_page(rows[bottom:top], number, self)


@admin.register(Event)
class EventAdmin(ReadOnlyMixin, BigTableAdmin):
    list_display = ("occurred_at", "name", "profile_link", "properties_short")
    list_filter = (EventNameFilter,)
    list_select_related = ("profile",)
    search_fields = ("=profile__external_id",)
    search_help_text = "A profile's exact external id."
    ordering = ("-occurred_at", "-id")  # the paginator relies on it
    sortable_by = ()
    paginator = NewestEventsPaginator
    raw_id_fields = ("profile",)
    actions = []
    fields = ("profile", "name", "properties", "occurred_at", "received_at")
    readonly_fields = fields

    def get_queryset(self, request):
        return events_visible_to(request.user)

    def get_search_results(self, request, queryset, search_term):
        terms = external_id_terms(search_term)
        return (queryset.filter(profile__external_id__in=terms) if terms else queryset), False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="Profile")
    def profile_link(self, obj):
        url = reverse("admin:audiences_profile_change", args=[obj.profile_id])
        return format_html('<a href="{}">{}</a>', url, obj.profile.external_id)

    @admin.display(description="Properties")
    def properties_short(self, obj):
        return _shortened(json.dumps(obj.properties, ensure_ascii=False), 80)


@admin.register(EventReplay)
class EventReplayAdmin(ReadOnlyMixin, AccessAdmin):
    """Stored events whose listener failed (journeys' entries and exits), waiting to be handled
    again: the beat retries each, waiting twice as long each time; "Replay now" does not wait, and
    a deletion discards a batch whose entries would come too late to matter."""

    list_display = ("created_at", "listener", "events", "attempts", "next_attempt_at", "error_short")
    actions = ["replay_now"]
    fields = ("listener", "event_ids", "attempts", "created_at", "next_attempt_at", "error")
    readonly_fields = fields

    def has_delete_permission(self, request, obj=None):  # discard: entries that would come too late
        return request.user.has_perm("audiences.delete_eventreplay")

    def has_replay_permission(self, request):
        return request.user.has_perm("audiences.change_eventreplay")

    @admin.display(description="Events")
    def events(self, obj):
        return len(obj.event_ids)

    @admin.display(description="Last error")
    def error_short(self, obj):
        return _shortened(obj.error, 100)

    @admin.action(description="Replay the selected events now", permissions=["replay"])
    def replay_now(self, request, queryset):
        from audiences.services.events import events_replay_now

        counts = events_replay_now(ids=list(queryset.values_list("pk", flat=True)), by=request.user)
        level = messages.SUCCESS if not counts["failed"] else messages.WARNING

        def said(outcome: str) -> str:
            batches, held = counts[outcome], counts["events"][outcome]
            if not batches:
                return "none"
            return f"{batches:,} {pluralize(batches, 'batch,batches')} ({held:,} {pluralize(held, 'event,events')})"

        self.message_user(
            request,
            f"Replayed: {said('replayed')}; failed again: {said('failed')}; dropped: {said('dropped')}.",
            level,
        )
