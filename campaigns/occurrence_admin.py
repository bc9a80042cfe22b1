"""A campaign's occurrences: the latest on its page, and every one in a list of their own.

A campaign recurring every minute records 1,440 occurrences a day. Its page lists the latest
``LATEST_OCCURRENCES``, newest first, with the count of all and a link to their list, which pages,
filters (by outcome, by when they were due) and, like every read of them, holds only the
occurrences of campaigns the user may see (``occurrences_visible_to``). Both are read-only: the
scheduler alone writes occurrences, and the send corrects one whose dispatch its audience check
refused (``campaign_dispatch_refused``).
"""

from __future__ import annotations

import datetime as dt

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db.models import F, OuterRef, QuerySet, Subquery, Sum
from django.db.models.functions import Coalesce
from django.http import Http404
from django.urls import reverse
from django.utils.html import format_html
from django.utils.http import urlencode

from accounts.admin.bases import BigTableAdmin, ReadOnlyAdminMixin, SinceFilter, row_id
from campaigns.models import Campaign, Occurrence
from campaigns.selectors import campaigns_visible_to, occurrences_visible_to
from config.zones import zoned

LATEST_OCCURRENCES = 20

CAMPAIGN_LOOKUP = "campaign__id__exact"  # the list of one campaign's occurrences


def occurrences_url(campaign_id: int) -> str:
    """The list of the campaign's occurrences."""
    return reverse("admin:campaigns_occurrence_changelist") + "?" + urlencode({CAMPAIGN_LOOKUP: campaign_id})


def occurrences_counted(campaign: Campaign) -> int:
    """How many occurrences the campaign had, counted once per page (its heading and its Sends say it)."""
    if "_occurrences_counted" not in campaign.__dict__:
        campaign.__dict__["_occurrences_counted"] = campaign.occurrences.count()
    return campaign.__dict__["_occurrences_counted"]


def latest_summary(*, count: int, latest: int, url: str, css_class: str) -> str:
    """How many there were, how many the page lists (the ``latest``), and a link to all of them at
    ``url``: a campaign page's occurrences and sends say it in the same words."""
    if count == 0:
        return "none yet"
    if count <= latest:
        return format_html('all {} — <a href="{}" class="{}">{}</a>', count, url, css_class, "their list, with filters")
    return format_html(
        'the latest {} of {} — <a href="{}" class="{}">{}</a>',
        latest,
        f"{count:,}",
        url,
        css_class,
        "all of them, with filters",
    )


def occurrences_summary(campaign: Campaign) -> str:
    """How many occurrences there were, how many the page lists, and a link to all of them."""
    return latest_summary(
        count=occurrences_counted(campaign),
        latest=LATEST_OCCURRENCES,
        url=occurrences_url(campaign.pk),
        css_class="occurrences-list",
    )


def _rollup_summed(outcome: str) -> Coalesce:
    """The row's dispatch's rollup rows of ``outcome``, summed (0 before any): its few rows, read
    through the rollup's key, which starts with the dispatch; never its deliveries."""
    from delivery.models import DeliveryRollup

    rows = DeliveryRollup.objects.filter(dispatch_id=OuterRef("dispatch_id"), outcome=outcome).order_by()
    return Coalesce(Subquery(rows.values("dispatch_id").annotate(n=Sum("rows")).values("n")[:1]), 0)


def occurrence_rows(queryset: QuerySet[Occurrence]) -> QuerySet[Occurrence]:
    """``queryset`` as a list of occurrences reads it: each row in its campaign's zone, saying whether
    its dispatch sent at each profile's local time (that one column, not the dispatch's frozen content),
    and what its dispatch did: its status, and what it targeted and had accepted, from its rollup
    (as the campaign's report counts them), in the list's one query."""
    return queryset.select_related("campaign").annotate(
        dispatch_local_time=F("dispatch__local_time"),
        dispatch_status=F("dispatch__status"),
        dispatch_targeted=_rollup_summed("targeted"),
        dispatch_accepted=_rollup_summed("accepted"),
    )


class OccurrenceColumns:
    """An occurrence's times in its campaign's zone, as the schedule was entered, and its dispatch."""

    @admin.display(description="Due at")
    def due(self, obj):
        return obj.due_text()

    @admin.display(description="Fired at")
    def fired(self, obj):
        return zoned(obj.fired_at, obj.campaign.schedule_zone())

    @admin.display(description="What its dispatch did")
    def dispatch_did(self, obj):
        """Beside an outcome that says only that the send started: whether its dispatch is under way,
        done, stopped or failed, and what it targeted and the providers accepted ("—": none made).
        Read from the row as ``occurrence_rows`` annotates it."""
        from delivery.models import Dispatch

        if obj.dispatch_id is None:
            return "—"
        so_far = " so far" if obj.dispatch_status in Dispatch.RUNNING_STATUSES else ""
        return (
            f"{Dispatch.Status(obj.dispatch_status).label}: {obj.dispatch_targeted:,} targeted, "
            f"{obj.dispatch_accepted:,} accepted{so_far}"
        )

    @admin.display(description="Dispatch")
    def dispatch_link(self, obj):
        if obj.dispatch_id is None:
            return "—"
        url = reverse("admin:delivery_dispatch_change", args=[obj.dispatch_id])
        return format_html('<a href="{}">dispatch {}</a>', url, obj.dispatch_id)


# The page offers no row to add: a form counting more rows than it showed was not sent by it.
ROWS_ADDED = (
    "Occurrences are made by the campaign's schedule, not added on this page: the form sent more occurrence "
    "rows than the page showed. Reload the page and save your changes again."
)


class LatestOccurrencesFormSet(forms.BaseInlineFormSet):
    """The campaign's latest occurrences. Posted back with the campaign's form, the rows the page
    showed, though newer ones may have pushed them out of the latest since it was drawn; a form
    counting more rows than that is refused, saying occurrences are the schedule's to make (Django's
    own words were "Please submit at most 0 forms")."""

    default_error_messages = {"too_many_forms": ROWS_ADDED}

    def get_queryset(self):
        if not hasattr(self, "_queryset"):
            rows = super().get_queryset()
            if self.is_bound:
                pk = self.model._meta.pk.name
                shown = min(self.initial_form_count(), self.total_form_count())
                posted = (row_id(self.model, self.data.get(f"{self.add_prefix(i)}-{pk}")) for i in range(shown))
                rows = rows.filter(pk__in=[value for value in posted if value is not None])
            else:
                rows = rows[:LATEST_OCCURRENCES]
            self._queryset = rows
        return self._queryset

    def clean(self):
        super().clean()
        if self.total_form_count() > self.initial_form_count():
            raise ValidationError(ROWS_ADDED, code="too_many_forms")


class OccurrenceInline(OccurrenceColumns, admin.TabularInline):
    """The campaign's latest occurrences, newest first; the heading counts them all and links to their list."""

    model = Occurrence
    formset = LatestOccurrencesFormSet
    fields = ("due", "fired", "outcome", "dispatch_did", "dispatch_link", "note")
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False

    def get_queryset(self, request):
        return occurrence_rows(occurrences_visible_to(request.user)).order_by("-due_at")

    def get_formset(self, request, obj=None, **kwargs):
        if obj is not None and obj.pk is not None:
            # The admin makes this inline anew for each page: the heading is this page's.
            lead = "occurrences, newest first" if occurrences_counted(obj) else "occurrences"
            self.verbose_name_plural = format_html("{}: {}", lead, occurrences_summary(obj))
        # The page posts back the rows it showed: never build more (Django's default builds up to a
        # thousand for a count past any, each shown again).
        kwargs.setdefault("absolute_max", LATEST_OCCURRENCES)
        return super().get_formset(request, obj, **kwargs)

    def has_change_permission(self, request, obj=None):
        return False


class DueFilter(SinceFilter):
    """When the occurrences were due, counted back from now (the same in every campaign's zone)."""

    title = "due"
    parameter_name = "due"
    field = "due_at"
    SPANS = {
        "day": ("In the last 24 hours", dt.timedelta(days=1)),
        "week": ("In the last 7 days", dt.timedelta(days=7)),
        "month": ("In the last 30 days", dt.timedelta(days=30)),
    }
    older_label = "More than 30 days ago"


@admin.register(Occurrence)
class OccurrenceAdmin(ReadOnlyAdminMixin, OccurrenceColumns, BigTableAdmin):
    """Every occurrence of the campaigns the user may see, newest first, read-only; the campaign
    page links to those of one campaign (``?campaign__id__exact=``), which answers 404 to whoever
    may not see that campaign."""

    list_display = ("due", "campaign_link", "fired", "outcome", "dispatch_did", "dispatch_link", "note")
    list_display_links = ("due",)
    list_filter = ("outcome", DueFilter)
    ordering = ("-due_at", "-id")
    sortable_by = ()
    fields = ("campaign_link", "due", "fired", "outcome", "dispatch_did", "dispatch_link", "note")
    readonly_fields = fields

    def get_queryset(self, request):
        return occurrence_rows(occurrences_visible_to(request.user))

    def get_paginator(self, request, queryset, per_page, orphans=0, allow_empty_first_page=True):
        if CAMPAIGN_LOOKUP in request.GET:
            # One campaign's: counted as its page counts them (through the campaign's own index).
            return Paginator(queryset, per_page, orphans, allow_empty_first_page)
        return super().get_paginator(request, queryset, per_page, orphans, allow_empty_first_page)

    def lookup_allowed(self, lookup, value, request=None):
        return lookup == CAMPAIGN_LOOKUP or super().lookup_allowed(lookup, value, request)

    def changelist_view(self, request, extra_context=None):
        extra = dict(extra_context or {})
        value = request.GET.get(CAMPAIGN_LOOKUP)
        if value is not None and self.has_view_permission(request):
            campaign_id = row_id(Campaign, value)
            campaign = campaigns_visible_to(request.user).filter(pk=campaign_id).first() if campaign_id else None
            if campaign is None:
                raise Http404("No such campaign.")
            extra["title"] = f"Occurrences of “{campaign}”"
        return super().changelist_view(request, extra)

    def get_actions(self, request):
        return {}

    @admin.display(description="Campaign")
    def campaign_link(self, obj):
        url = reverse("admin:campaigns_campaign_change", args=[obj.campaign_id])
        return format_html('<a href="{}">{}</a>', url, obj.campaign)
