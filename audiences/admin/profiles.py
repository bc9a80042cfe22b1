"""The admin of profiles: read-only, a big table."""

from __future__ import annotations

import json

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html
from django.utils.http import urlencode

from accounts.admin.bases import BigTableAdmin
from audiences.models import Profile
from audiences.rules.schema import DATE_RE
from audiences.selectors import (
    events_visible_to,
    profile_memberships,
    profiles_visible_to,
    segments_visible_to,
)
from audiences.services.profiles import (
    profile_out_of_reach,
    profiles_delete,
    profiles_delete_counts,
    profiles_hidden_rows,
)

MEMBERSHIPS_CHECKED = 1000  # a profile page tests this many segments, the first by name


def json_kind(value) -> str:
    """What a rule reads a JSON value as: string, number, boolean or date (a string starting with a
    day, which date rules read), else list, object or null, which no rule compares."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "date" if DATE_RE.match(value[:10]) else "string"
    if isinstance(value, list):
        return "list"
    return "object" if isinstance(value, dict) else "null"


def external_id_terms(search_term: str) -> list[str]:
    """The external ids a search for ``search_term`` names: as typed, and without the spaces around
    it (pasted text often carries them). Ids keep their spaces (the API does not trim them), so
    "ann " and "ann" may be two people: a search for "ann " lists both, one for "ann" only "ann"."""
    return [term for term in dict.fromkeys([search_term, search_term.strip()]) if term.strip()]


class ReadOnlyMixin:
    """Profiles and events are written by the API and imports, never by hand in the admin."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Profile)
class ProfileAdmin(ReadOnlyMixin, BigTableAdmin):
    list_display = ("external_id", "locale", "timezone", "created_at", "last_seen_at")
    search_fields = ("=external_id",)
    search_help_text = "An exact external id."
    ordering = ("-id",)
    sortable_by = ("external_id", "created_at")
    actions = []
    fields = ("external_id", "locale", "timezone", "created_at", "updated_at", "last_seen_at")
    readonly_fields = fields
    change_form_template = "admin/audiences/profile/change_form.html"

    def get_queryset(self, request):
        return profiles_visible_to(request.user)

    def get_search_results(self, request, queryset, search_term):
        # Exact and case-sensitive, so the unique index answers (Django's "=" is iexact: a scan).
        terms = external_id_terms(search_term)
        return (queryset.filter(external_id__in=terms) if terms else queryset), False

    def has_delete_permission(self, request, obj=None):
        return request.user.has_perm("audiences.delete_profile")

    def get_deleted_objects(self, objs, request):
        """The confirmation of a delete (one profile's, or the list's action): the profiles, and how
        many rows of each kind go with them (events, devices, memberships...) among those the user
        may reach, all removed by ``profiles_delete`` in one transaction; refused (and nothing
        more said) when some lie outside the user's access. Django's own listing would load every event and
        ask the event admin, which deletes nothing by hand, for leave to delete each: refused."""
        profiles = list(objs)
        listed = [
            format_html('Profile: <a href="{}">{}</a>', reverse("admin:audiences_profile_change", args=[p.pk]), p)
            for p in profiles
        ]
        erased = profiles_delete_counts(profile_ids=[p.pk for p in profiles], by=request.user)
        # Why it is refused, one reason, said by the templates after "You cannot delete ...:".
        perms_needed = set()
        if not self.has_delete_permission(request):
            perms_needed.add("your role may not delete profiles.")
        elif erased.hidden:  # refused, as ``profiles_delete`` would: neither their number nor their kinds
            many = len(profiles) > 1
            who = "one or more of them" if many else "it"
            perms_needed.add(profile_out_of_reach(who=who, many=many, stop="."))
        return listed, erased.counts, perms_needed, []

    def delete_model(self, request, obj):
        profiles_delete(profile_ids=[obj.pk], by=request.user)

    def delete_queryset(self, request, queryset):
        profiles_delete(profile_ids=list(queryset.values_list("pk", flat=True)), by=request.user)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        profile = self.get_object(request, object_id)
        extra = dict(extra_context or {})
        if profile is not None:
            extra["profile_attributes"] = [
                (name, json.dumps(value, ensure_ascii=False), json_kind(value))
                for name, value in sorted(profile.attributes.items())
            ]
            extra["recent_events"] = [
                (event, json.dumps(event.properties, ensure_ascii=False))
                for event in events_visible_to(request.user)
                .filter(profile=profile)
                .order_by("-occurred_at", "-id")[:20]
            ]
            extra["memberships"] = [
                (s, reverse("admin:audiences_segment_change", args=[s.pk]))
                for s in profile_memberships(request.user, profile, limit=MEMBERSHIPS_CHECKED)
            ]
            visible = segments_visible_to(request.user).count()
            if visible > MEMBERSHIPS_CHECKED:  # say so, rather than "in none" of those not tested
                extra["memberships_checked"] = (MEMBERSHIPS_CHECKED, visible)
            # By the profile's id: a search by its external id would trim it (see external_id_terms).
            extra["events_url"] = (
                reverse("admin:audiences_event_changelist") + "?" + urlencode({"profile__id__exact": profile.pk})
            )
            # Delete is offered only where it would go through: ``profiles_delete`` refuses whoever
            # may not reach every row the profile holds (its own check, a few counts per kind).
            if self.has_delete_permission(request) and profiles_hidden_rows(profile_ids=[profile.pk], by=request.user):
                extra["show_delete"] = False
                extra["delete_refused"] = profile_out_of_reach(who="it", many=False, stop=".")
        return super().change_view(request, object_id, form_url, extra)
