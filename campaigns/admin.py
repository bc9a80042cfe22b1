import datetime as dt
import json
import re

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from accounts.admin.bases import (
    ActiveStatusFilter,
    KeptChoiceField,
    ObjectAccessAdminMixin,
    ScopedAdmin,
    linked_if_visible,
    page_answers,
    related_links_that_work,
    with_reader_sees,
)
from accounts.admin.lifecycle import LifecycleAdminMixin, approval_text, page_request
from accounts.selectors import approver_standing, can, in_scope
from accounts.services import TransitionError
from campaigns import winner_admin
from campaigns.models import Campaign, WinnerTest
from campaigns.occurrence_admin import OccurrenceInline, latest_summary, occurrences_summary
from campaigns.reports import campaign_charts, campaign_report, campaign_report_csv, report_named
from campaigns.review import (
    ReaderNames,
    approved_phones_html,
    audience_count_offered,
    audience_kept_text,
    campaign_phones_html,
    next_send_text,
    version_diff_html,
)
from campaigns.schedule import localize, schedule_check, zone_known, zone_names
from campaigns.selectors import campaign_actions, campaigns_visible_to
from campaigns.services.conversions import campaign_conversion_set
from campaigns.services.lifecycle import (
    EDITABLE_FIELDS,
    campaign_archive,
    campaign_cancel_request,
    campaign_context_check,
    campaign_create,
    campaign_delete,
    campaign_duplicate,
    campaign_stop,
    campaign_submit,
    campaign_update,
    missed_window_check,
    throttle_check,
)
from campaigns.services.scheduling import campaign_test_send
from campaigns.services.variants import campaign_variants_set
from campaigns.variant_admin import (
    VARIANTS_HELP,
    CampaignVariantFormSet,
    CampaignVariantInline,
    conversions_report_html,
    variants_report_html,
)
from config import digits
from config.labels import numbered
from config.zones import zone as schedule_zone
from config.zones import zoned, zoned_column
from delivery.admin.contents import test_send_reach
from delivery.conversion_form import CONVERSION_FIELDS, ConversionFormMixin, conversion_goal_text, conversion_help
from delivery.reports import report_charts_html, rows_deleted_html

Status = Campaign.Status


class DateTimePicker(forms.SplitDateTimeWidget):
    """The browser's own date and time pickers (the values they send: YYYY-MM-DD and HH:MM), the
    zone they are read in named beside them (``zone``, ``local``: set by the form; kept up to date
    by campaigns/schedule_form.js as the time zone or local time is changed)."""

    zone = "UTC"
    local = False

    def __init__(self, attrs=None):
        super().__init__(
            attrs=attrs,
            date_format="%Y-%m-%d",
            time_format="%H:%M",
            date_attrs={"type": "date", "placeholder": "YYYY-MM-DD"},
            time_attrs={"type": "time", "placeholder": "HH:MM"},
        )

    def render(self, name, value, attrs=None, renderer=None):
        return format_html(
            '{} <span class="schedule-zone" data-zone="{}">{}</span>',
            super().render(name, value, attrs, renderer),
            self.zone,
            schedule_zone_text(self.zone, local=self.local),
        )


def schedule_zone_text(time_zone: str, *, local: bool) -> str:
    """The zone a schedule's dates are read in, as the form says it beside them (schedule_form.js
    words it alike): the campaign's, or, sent at each profile's local time, each profile's; a name
    that is no time zone (half typed, in other case, made up) said to be none, not named as one."""
    named = time_zone if zone_known(time_zone) else f"no such time zone: “{time_zone}”"
    if local:
        return f"(each profile's time zone; {named} for profiles without one)"
    return f"({named})"


# What a schedule's date is, and the words for each profile's zone it is read in at local time.
SCHEDULE_DATE_HELP = {
    "send_at": ("The (first) send, for 'at' and 'recurring',", "at that time of day in each profile's own zone"),
    "ends_at": ("No occurrence after this (recurring),", "in each profile's own zone"),
}


def schedule_date_help(field: str, *, local: bool, switched: bool = False) -> str:
    """The help of a schedule's date (``send_at``, ``ends_at``), naming the zone it is read in as
    ``schedule_zone_text`` names it beside the date: the campaign's, or, sent at each profile's
    local time, each profile's (the campaign's for profiles without one). ``switched``: the form's
    help, both sentences drawn and the one for ``local`` shown, for schedule_form.js to show the
    other as At local time is ticked."""
    what, own = SCHEDULE_DATE_HELP[field]
    zones = {False: "in the campaign's time zone.", True: f"{own} (the campaign's for profiles without one)."}
    if not switched:
        return f"{what} {zones[local]}"
    return format_html(
        '{} <span class="schedule-zone-help" data-local="false"{}>{}</span>'
        '<span class="schedule-zone-help" data-local="true"{}>{}</span>',
        what,
        mark_safe(" hidden" if local else ""),  # noqa: S308 (a constant)
        zones[False],
        mark_safe("" if local else " hidden"),  # noqa: S308 (a constant)
        zones[True],
    )


def schedule_date_text(value: dt.datetime | None, campaign: Campaign) -> str:
    """A schedule's date (first send, end) on the page that only reads it, its zone named as the
    form names it beside the date (``schedule_zone_text``): at each profile's local time, each
    profile's."""
    if value is None:
        return "—"
    shown = value.astimezone(schedule_zone(campaign.time_zone))
    return f"{shown:%Y-%m-%d %H:%M} {schedule_zone_text(campaign.time_zone, local=campaign.at_local_time)}"


class ZoneInput(forms.TextInput):
    """A time zone typed by its IANA name, the names a schedule takes offered as it is typed (a
    datalist, which schedule_form.js also reads to tell a name that is no time zone)."""

    def __init__(self, attrs=None):
        super().__init__(attrs={"list": "time-zones", "autocomplete": "off", **(attrs or {})})

    def render(self, name, value, attrs=None, renderer=None):
        return format_html(
            '{}<datalist id="time-zones">{}</datalist>',
            super().render(name, value, attrs, renderer),
            format_html_join("", '<option value="{}">', ((zone_name,) for zone_name in zone_names())),
        )


class ZonedDateTimeField(digits.SplitDateTimeField):
    """A date and a time typed in the campaign's zone; a wrong one is answered with the format."""

    default_error_messages = {
        "invalid_date": "Enter the date as YYYY-MM-DD, e.g. 2026-12-24.",
        "invalid_time": "Enter the time as HH:MM on a 24-hour clock, e.g. 07:10.",
        "incomplete": "Enter both a date and a time.",
    }

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("input_date_formats", ["%Y-%m-%d"])
        kwargs.setdefault("input_time_formats", ["%H:%M", "%H:%M:%S"])
        super().__init__(*args, **kwargs)


CONTEXT_NAME = re.compile(r"\bcontext\.([A-Za-z_][A-Za-z0-9_]*)")

LATEST_SENDS = 10  # the dispatches its page lists; their list has every one
CAMPAIGN_CONVERSION_HELP = conversion_help("per variant and against the holdout")
# While winner mode picks by the goal's rate (``Campaign.approval_covers_goal``).
CAMPAIGN_CONVERSION_COVERED_HELP = conversion_help(
    "per variant and against the holdout",
    approval="Winner mode picks the winner by its conversion rate: the approval covers the goal, and a change "
    "of it on a scheduled or live campaign is a revision, approved as any other.",
)


def trigger_example(campaign: Campaign, *, url: str) -> str:
    """A curl call of the campaign's trigger endpoint, with a sample of each context value its content uses."""
    spec = campaign.content.spec()
    texts = [spec.get(k) or "" for k in ("title", "subtitle", "body", "tap_url")]
    texts += [v for variant in (spec.get("variants") or {}).values() for v in (variant or {}).values()]
    texts += [str(v) for v in (spec.get("data") or {}).values()]
    names = sorted({name for text in texts for name in CONTEXT_NAME.findall(str(text))})
    body = {
        "recipients": [{"external_id": "user-123"}],
        "context": {name: f"sample {name}" for name in names},
    }
    return (
        f"curl -X POST '{url}' \\\n"
        '  -H "Authorization: Bearer $PUSHDESK_API_KEY" \\\n'
        "  -H 'Content-Type: application/json' \\\n"
        '  -H "Idempotency-Key: $(uuidgen)" \\\n'
        f"  -d '{json.dumps(body, ensure_ascii=False)}'"
    )


class CampaignForm(ConversionFormMixin, forms.ModelForm):
    """Dates are entered and shown as wall-clock times in the campaign's own time zone."""

    class Meta:
        model = Campaign
        fields = (*EDITABLE_FIELDS, "holdout_share", *winner_admin.WINNER_FIELDS)
        widgets = {"send_at": DateTimePicker, "ends_at": DateTimePicker, "time_zone": ZoneInput}
        field_classes = {"send_at": ZonedDateTimeField, "ends_at": ZonedDateTimeField}
        help_texts = {
            "send_at": schedule_date_help("send_at", local=False),
            "ends_at": schedule_date_help("ends_at", local=False),
            "missed_window_minutes": "An occurrence missed during downtime is sent late if at most this old, "
            "otherwise skipped: at most 10,080 minutes (7 days).",
        }
        # The read-only page shows the dates through CampaignAdmin.send_at_shown and ends_at_shown,
        # with the same help (the admin reads a read-only field's help here; CampaignAdmin.get_form
        # words it for a campaign sent at local time).
        help_texts.update(send_at_shown=help_texts["send_at"], ends_at_shown=help_texts["ends_at"])

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if "holdout_share" in self.fields:
            self.fields["holdout_share"].required = False  # empty: no holdout
        winner_admin.winner_form_init(self)
        instance = self.instance
        for name in ("send_at", "ends_at"):
            value = getattr(instance, name, None)
            if instance.pk and value is not None:
                wall = value.astimezone(schedule_zone(instance.time_zone)).replace(tzinfo=None)
                self.initial[name] = wall.replace(tzinfo=dt.UTC)  # shown as typed: the admin's zone is UTC
        # Beside the dates, the zone they are read in: as saved, or as typed in a form sent back.
        shown_zone = (self["time_zone"].value() or "UTC") if "time_zone" in self.fields else instance.time_zone
        local = bool(self["at_local_time"].value()) if "at_local_time" in self.fields else instance.at_local_time
        for name in ("send_at", "ends_at"):
            if name in self.fields and isinstance(self.fields[name].widget, DateTimePicker):
                self.fields[name].widget.zone = str(shown_zone).strip() or "UTC"
                self.fields[name].widget.local = local
            if name in self.fields:
                self.fields[name].help_text = schedule_date_help(name, local=local, switched=True)

    def clean(self):
        data = super().clean()
        if "holdout_share" in self.fields:
            data["holdout_share"] = data.get("holdout_share") or 0
        try:
            tz = schedule_zone(data.get("time_zone") or "UTC")
        except ValidationError as exc:
            self.add_error("time_zone", exc.message_dict["time_zone"])
            return data
        for name in ("send_at", "ends_at"):
            value = data.get(name)
            if value is not None:
                wall = value.astimezone(dt.UTC).replace(tzinfo=None)
                try:
                    data[name] = localize(wall, tz).astimezone(dt.UTC)
                    if data[name].astimezone(tz).replace(tzinfo=None) != wall:
                        # Moved past the gap, the first send would set a recurrence's time of day to
                        # another hour for good; an end so moved would come an hour after the one typed.
                        self.add_error(
                            name,
                            f"{wall:%Y-%m-%d %H:%M} does not exist in {tz.key}: the clocks go forward "
                            "then. Choose another time or day.",
                        )
                except OverflowError:
                    self.add_error(
                        name, "This date is out of range in the campaign's time zone: choose an earlier one."
                    )
        self._schedule_clean(data)
        self._context_clean(data)
        winner_admin.winner_form_clean(self, data)
        return data

    def _service_checked(self, name: str, check):
        """The field's value, passed by the services' ``check`` when it is set or changed (one saved
        before the check stays as it is), the check's message at the field."""
        value = self.cleaned_data.get(name)
        if self.instance.pk is None or value != getattr(self.instance, name):
            try:
                check(value)
            except ValidationError as exc:
                raise ValidationError(exc.message_dict[name]) from None
        return value

    def clean_throttle_per_second(self):
        return self._service_checked("throttle_per_second", throttle_check)

    def clean_missed_window_minutes(self):
        return self._service_checked("missed_window_minutes", missed_window_check)

    def _context_clean(self, data: dict) -> None:
        """The services' check of a scheduled campaign's content (``campaign_context_check``: no
        call's context to show), answered at its field with the form kept."""
        content = data.get("content")
        if content is None or "content" in self.errors:
            return
        # The form's user, set on the field when it keeps a colleague's content: named to them by number.
        reader = getattr(self.fields.get("content"), "reader", None)
        try:
            campaign_context_check(Campaign(kind=data.get("kind") or self.instance.kind, content=content), by=reader)
        except ValidationError as exc:
            self.add_error("content", exc.message_dict["content"])

    def _schedule_clean(self, data: dict) -> None:
        """The services' check of the schedule, answered at its field with what was typed kept (on
        save it would only come back as a message, the form lost)."""
        fields = ("kind", "schedule_kind", "send_at", "time_zone", "recurrence", "cron", "ends_at")
        if "schedule_kind" not in self.fields or any(name in self.errors for name in fields):
            return  # already answered at its field
        try:
            schedule_check(
                kind=data.get("kind") or self.instance.kind,
                schedule_kind=data.get("schedule_kind") or "",
                send_at=data.get("send_at"),
                time_zone=data.get("time_zone") or "UTC",
                recurrence=data.get("recurrence") or "",
                cron=data.get("cron") or "",
                ends_at=data.get("ends_at"),
            )
        except ValidationError as exc:
            for name, problems in exc.message_dict.items():
                self.add_error(name if name in self.fields else None, problems)
            return
        self._past_send_clean(data)

    def _past_send_clean(self, data: dict) -> None:
        """Refuse a one-off send at a time that has passed, when it is set: approved, it would be sent
        late or, past its missed-send window, never. One saved before stays as it is (the review says
        what an approval then does)."""
        send_at, schedule_kind = data.get("send_at"), data.get("schedule_kind")
        if (data.get("kind") or self.instance.kind) != Campaign.Kind.SCHEDULED:
            return
        if schedule_kind != Campaign.ScheduleKind.AT or send_at is None or send_at > timezone.now():
            return
        if self.instance.pk and (send_at, schedule_kind) == (self.instance.send_at, self.instance.schedule_kind):
            return
        self.add_error(
            "send_at",
            f"{zoned(send_at, data.get('time_zone') or 'UTC')} has passed: choose a later time, "
            "or 'Send when approved'.",
        )


class _StatusFilter(ActiveStatusFilter):
    """By default the list shows what is being worked on (AJO's default: not finished, not archived)."""

    active_statuses = (Status.DRAFT, Status.IN_REVIEW, Status.SCHEDULED, Status.LIVE)
    active_label = "Draft, in review, scheduled, live"


def _schedule_fields_of(campaign: Campaign, fields: tuple[str, ...]) -> tuple[str, ...]:
    """Of the schedule's ``fields`` (the dates by their shown names), those of ``campaign``'s
    schedule: none for an API-triggered campaign, the kind alone for a send when approved, the
    recurrence, the cron and the end for a recurring one only, the cron for a cron only."""
    if campaign.kind == Campaign.Kind.API_TRIGGERED:
        return ()
    kind = campaign.schedule_kind
    if kind == Campaign.ScheduleKind.NOW:
        return fields[:1]
    recurring_only = {"recurrence", "cron", "ends_at", "ends_at_shown"}
    return tuple(
        name
        for name in fields
        if (kind == Campaign.ScheduleKind.RECURRING or name not in recurring_only)
        and (name != "cron" or campaign.recurrence == Campaign.Recurrence.CRON)
    )


def _has_occurrences_to_show(campaign: Campaign | None) -> bool:
    """Whether a campaign's page lists occurrences: a saved campaign's schedule makes them; an
    API-triggered one shows those it made before it was triggered by the API, if any (asked once a
    page: its inlines and its Sends line read the same answer)."""
    if campaign is None or campaign.pk is None:
        return False
    if campaign.kind != Campaign.Kind.API_TRIGGERED:
        return True
    if not hasattr(campaign, "_occurrences_shown"):
        campaign._occurrences_shown = campaign.occurrences.exists()
    return campaign._occurrences_shown


def _approved_goes_on(campaign: Campaign) -> str:
    """What its approved version does while a revision waits: it stays scheduled until its first send
    starts, and keeps sending after."""
    return "stays scheduled" if campaign.status == Status.SCHEDULED else "keeps sending"


@admin.register(Campaign)
class CampaignAdmin(winner_admin.WinnerAdminMixin, LifecycleAdminMixin, ObjectAccessAdminMixin, ScopedAdmin):
    lifecycle_delete = staticmethod(campaign_delete)
    form = CampaignForm
    list_display = ("name", "app_shown", "kind", "purpose", "status", "next_send", "owner", "updated")
    # Sorted by the app's name, which it says by number to a reader granted the campaign alone.
    withheld_columns = ("app_shown",)
    list_filter = (_StatusFilter, "kind", "purpose", "app")
    list_select_related = ("app", "owner")
    search_fields = ("name",)
    inlines = [CampaignVariantInline, OccurrenceInline]
    readonly_fields = (
        "status",
        "approval",
        "versions",
        "audience_size",
        "api_call",
        "sends",
        "lifecycle_buttons",
        "owner_card",
        "activated",
        "next_send",
        "preview",
        "report",
        "object_access",
        "conversion_goal",
        "winner_status",
        "send_at_shown",
        "ends_at_shown",
        "segment_shown",
        "content_shown",
        "app_shown",
    )

    class Media:
        js = ("campaigns/schedule_form.js",)

    def get_queryset(self, request):
        from delivery.models import App

        # A campaign granted without its app names it only to whoever may see it (``app_shown``).
        return with_reader_sees(
            campaigns_visible_to(request.user), request.user, field="app_id", model=App, name="app_seen"
        )

    def get_inlines(self, request, obj):
        """Occurrences only where a schedule makes them: not on the add page, nor on an
        API-triggered campaign that has none (one made scheduled first keeps its own)."""
        if _has_occurrences_to_show(obj):
            return self.inlines
        return [inline for inline in self.inlines if inline is not OccurrenceInline]

    def get_fieldsets(self, request, obj=None):
        # The form shows the dates in the campaign's zone (CampaignForm); a page read only (a
        # Viewer's, one in review, a finished campaign) shows them so too, the zone named.
        read_only = obj is not None and not self.has_change_permission(request, obj)
        send_at, ends_at = ("send_at_shown", "ends_at_shown") if read_only else ("send_at", "ends_at")
        segment, content = ("segment_shown", "content_shown") if read_only else ("segment", "content")
        app = "app_shown" if read_only else "app"
        schedule = (
            "schedule_kind",
            send_at,
            "time_zone",
            "recurrence",
            "cron",
            ends_at,
            "at_local_time",
            "missed_window_minutes",
        )
        if read_only:  # the fields of its schedule, as the form shows them (campaigns/schedule_form.js)
            schedule = _schedule_fields_of(obj, schedule)
        fieldsets = [
            (None, {"fields": ("name", app, "kind", "purpose", segment, "audience_size", content)}),
            *((("Schedule", {"fields": schedule}),) if schedule else ()),
            ("Delivery", {"fields": ("throttle_per_second",)}),
        ]
        if obj is not None:
            fieldsets.insert(
                0,
                (
                    "Status",
                    {
                        "fields": (
                            "status",
                            "lifecycle_buttons",
                            "approval",
                            "versions",
                            "owner_card",
                            "activated",
                            "next_send",
                        )
                    },
                ),
            )
            if obj.kind == Campaign.Kind.API_TRIGGERED:
                fieldsets.append(("API", {"fields": ("api_call",)}))
            fieldsets.append(("Preview", {"fields": ("preview",)}))
            fieldsets.append(("Report", {"fields": winner_admin.report_fields(obj)}))
            fieldsets.append(("Access", {"fields": ("object_access",)}))
        if not read_only:
            covered = obj is not None and obj.approval_covers_goal()
            help_ = CAMPAIGN_CONVERSION_COVERED_HELP if covered else CAMPAIGN_CONVERSION_HELP
            fieldsets.append(("Conversions", {"fields": CONVERSION_FIELDS, "description": help_}))
        else:
            fieldsets.append(("Conversions", {"fields": ("conversion_goal",)}))
        fieldsets.append(
            ("Winner mode", {"fields": winner_admin.WINNER_FIELDS, "description": winner_admin.WINNER_HELP})
        )
        # Last, so that the variants' inline follows it.
        fieldsets.append(("Variants and holdout", {"fields": ("holdout_share",), "description": VARIANTS_HELP}))
        return fieldsets

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        from audiences.models import Segment
        from delivery.models import App, PushContent

        # What the user may name (``in_scope``): not what they read through a review.
        querysets = {
            "app": lambda: in_scope(request.user, App.objects.all()),
            "segment": lambda: in_scope(request.user, Segment.objects.all()),
            "content": lambda: in_scope(request.user, PushContent.objects.select_related("app")),
        }
        if db_field.name in querysets:
            kwargs["queryset"] = querysets[db_field.name]()
            kwargs["form_class"] = KeptChoiceField
            kwargs["label_fields"] = ("name",)  # each one's __str__
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change=change, **kwargs)
        if obj is not None and "name" in form.base_fields:
            # Whether the approval covers it: only when its sends show it (``Campaign.fingerprint``).
            form.base_fields["name"].help_text = (
                "Its content shows the name (context.campaign.name): the approval covers it, and a rename of a "
                "scheduled or live campaign is a revision, approved as any other."
                if obj.shows_name()
                else "Not part of what an approval covers: its content does not show it (context.campaign.name)."
            )
        if obj is not None and obj.at_local_time:
            # The read-only page's dates, read in each profile's zone: their help says so (a new dict,
            # the form class's own).
            form._meta.help_texts = {
                **(form._meta.help_texts or {}),
                **{f"{name}_shown": schedule_date_help(name, local=True) for name in SCHEDULE_DATE_HELP},
            }
        if obj is not None:
            # Colleagues may keep references they cannot see themselves, offered by number, not by
            # name; they cannot pick new ones.
            for name in ("app", "segment", "content"):
                field = form.base_fields.get(name)
                current = getattr(obj, f"{name}_id")
                if field is not None and current is not None:
                    field.queryset = field.queryset | field.queryset.model.objects.filter(pk=current)
                    field.reader = request.user
        related_links_that_work(request, form)
        return form

    def lifecycle_locked(self, request, obj) -> str:
        if obj.status not in (Status.DRAFT, Status.SCHEDULED, Status.LIVE):
            # locked in review; finished campaigns are duplicated, not edited
            return str(TransitionError(obj, "changed"))
        approval = self.approval_of(obj) if obj.is_active else None  # asked for each field: read once a page
        if approval is not None and approval.status == approval.Status.PENDING:
            return f"'{obj}' has changes waiting for approval: it cannot be changed until they are decided."
        return ""

    def has_delete_permission(self, request, obj=None):
        if obj is not None and obj.status != Status.DRAFT:
            return False
        return super().has_delete_permission(request, obj)

    def save_model(self, request, obj, form, change):
        # A TransitionError (the campaign moved on during the save) is answered by the lifecycle
        # mixin: a message, and the save undone.
        values = {field: form.cleaned_data[field] for field in EDITABLE_FIELDS if field in form.cleaned_data}
        winner_admin.winner_save(request, form, turning_off=True)  # first: the edit may no longer fit winner mode
        if change:
            updated = campaign_update(campaign_id=obj.pk, by=request.user, **values)
            if updated.has_pending_revision:
                request.campaign_revision = updated
        else:
            created = campaign_create(by=request.user, **values)
            obj.pk = created.pk
        if hasattr(form, "conversion_values") and "conversion_event" in form.cleaned_data:
            campaign_conversion_set(campaign_id=obj.pk, by=request.user, **form.conversion_values())

    def save_related(self, request, form, formsets, change):
        # Occurrences are written by the scheduler only; variants through their service.
        for formset in formsets:
            if isinstance(formset, CampaignVariantFormSet):
                campaign_variants_set(
                    campaign_id=form.instance.pk,
                    by=request.user,
                    variants=formset.variant_inputs(),
                    holdout_share=form.cleaned_data.get("holdout_share") or 0,
                )
                winner_admin.winner_save(request, form, turning_off=False)  # last: it needs the variants
                updated = Campaign.objects.get(pk=form.instance.pk)
                if change and updated.has_pending_revision:
                    request.campaign_revision = updated

    def construct_change_message(self, request, form, formsets, add=False):
        # The occurrences inline is read-only and never saved: the change is the campaign's own.
        return super().construct_change_message(request, form, [], add)

    @admin.display(description="Approval")
    def approval(self, obj):
        pending = "Revision waiting for approval" if obj.is_active else ""
        request = self.approval_of(obj)
        text = approval_text(request, time_zone=obj.request_zone(request), pending=pending)
        return format_html("{}{}", text, self._decision_said(request))

    @staticmethod
    def _decision_said(approval) -> str:
        """To an approver reading a request that waits: a link to its review when they may decide it,
        else why not (``approver_standing``), as the inbox, which does not list it, cannot say."""
        page = page_request()
        if approval is None or approval.status != approval.Status.PENDING or page is None:
            return ""
        if not page.user.has_perm("accounts.decide_approvalrequest"):
            return ""
        allowed, reason = approver_standing(page.user, approval)
        if allowed:
            url = reverse("admin:accounts_approvalrequest_review", args=[approval.pk])
            return format_html(' — <a href="{}">Review it</a>', url)
        return format_html('<div class="help">You may not decide it. {}</div>', reason)

    @admin.display(description="Endpoint and an example call")
    def api_call(self, obj):
        if obj is None or obj.pk is None or obj.kind != Campaign.Kind.API_TRIGGERED:
            return "—"
        request = page_request()
        url = reverse("api:campaign-trigger", args=[obj.pk])
        url = request.build_absolute_uri(url) if request is not None else url
        return format_html(
            '<div id="api-call"><p><code>POST {}</code> — with an API key of the <em>trigger</em> scope; '
            "at most 1,000 recipients a call; an <code>Idempotency-Key</code> makes a retry safe.</p>"
            '<pre style="white-space:pre-wrap">{}</pre></div>',
            url,
            trigger_example(obj, url=url),
        )

    @admin.display(description="Owner")
    def owner_card(self, obj):
        """Who owns it, readable by everyone who sees the campaign (the user pages are Administrators')."""
        owner = obj.owner
        return format_html(
            '<span class="user-card">{}{}{} — {}</span>',
            owner.get_username(),
            f" ({owner.get_full_name()})" if owner.get_full_name() else "",
            format_html(' <a href="mailto:{}">{}</a>', owner.email, owner.email) if owner.email else "",
            ", ".join(owner.role_names()) or "no role",
        )

    @admin.display(description="Sends")
    def sends(self, obj):
        """The campaign's latest dispatches (the newest first, each a link) with the count of all and
        a link to their list, then its occurrences'."""
        from delivery.admin.dispatches import campaign_sends, campaign_sends_url
        from delivery.models import Dispatch
        from delivery.selectors import dispatches_visible_to
        from delivery.services.dispatches import dispatches_counted_now

        request = page_request()
        if obj is None or obj.pk is None or request is None:
            return "—"
        sends = campaign_sends(dispatches_visible_to(request.user), obj.pk)
        # An open stream's counters on its row are kept once a minute: summed now, as its page does.
        latest = dispatches_counted_now(list(sends[:LATEST_SENDS]))
        count = sends.count() if latest else 0
        summary = latest_summary(
            count=count, latest=LATEST_SENDS, url=campaign_sends_url(obj.pk), css_class="dispatches-list"
        )
        if not latest and (hidden := campaign_sends(Dispatch.objects.all(), obj.pk).count()):
            # A role that may see campaigns but not dispatches: the report counts them.
            summary = f"{hidden:,}, which your role may not open"
        rows = format_html_join(
            "",
            '<li><a href="{}">{}</a> — {}, {} targeted, {} accepted</li>',
            (
                (reverse("admin:delivery_dispatch_change", args=[d.pk]), d, d.get_status_display(), d.total, d.accepted)
                for d in latest
            ),
        )
        occurrences = ""
        if _has_occurrences_to_show(obj):
            occurrences = format_html("<p>Occurrences (listed below): {}.</p>", occurrences_summary(obj))
        return format_html(
            '<div id="campaign-sends"><p>{}: {}.</p>{}{}</div>',
            "Dispatches, newest first" if count else "Dispatches",
            summary,
            format_html("<ul>{}</ul>", rows) if latest else "",
            occurrences,
        )

    @admin.display(description="Activated", ordering="activated_at")
    def activated(self, obj):
        """When its first approval put it on the air, in the approved schedule's zone (as its sends)."""
        return zoned(obj.activated_at, obj.schedule_zone())

    @admin.display(description="Send at", ordering="send_at")
    def send_at_shown(self, obj):
        return schedule_date_text(obj.send_at, obj)

    @admin.display(description="Ends at", ordering="ends_at")
    def ends_at_shown(self, obj):
        return schedule_date_text(obj.ends_at, obj)

    @admin.display(description="Next send", ordering="next_occurrence_at")
    def next_send(self, obj):
        return next_send_text(obj)

    updated = zoned_column("updated_at", "Updated at", zone_field="time_zone")

    @admin.display(description="Audience size")
    def audience_size(self, obj):
        """Profiles → reachable in the campaign's app (iOS / Android) → opted in, as last counted
        with its age, or not counted yet (a view counts nothing and writes nothing); *Count now*
        for those who may edit it. Not shown to a reader who may not see its segment
        (``audience_kept_text``)."""
        if obj is None or obj.pk is None:
            return "Counted once the campaign is saved."
        request, button = page_request(), ""
        reader = request.user if request is not None else None
        names = ReaderNames.of(reader, segments={obj.segment_id})
        may_count = audience_count_offered(
            obj,
            reader=reader,
            may_edit=obj.segment_id is not None
            and request is not None
            and can(request.user, "campaigns.change_campaign", obj, answers=page_answers(request)),
            names=names,
        )
        text = audience_kept_text(obj, reader=reader, can_count=may_count, names=names)
        if may_count:
            button = format_html(
                ' <button type="submit" id="count-audience" class="button" formaction="{}" '
                "formnovalidate>Count now</button>",
                reverse("admin:campaigns_campaign_count_audience", args=[obj.pk]),
            )
        return format_html('<span id="audience-size">{}</span>{}', text, button)

    @admin.display(description="App", ordering="app__name")
    def app_shown(self, obj):
        """The app, named (and linked on the campaign's page) to a reader who may see it, "app #3"
        to the others: a campaign granted without its app."""
        if not getattr(obj, "app_seen", False):
            return numbered("app", obj.app_id)
        request = page_request()
        return obj.app.name if request is None else linked_if_visible(request, obj.app)

    @admin.display(description="Segment")
    def segment_shown(self, obj):
        """The audience, linked only for a reader who may open the segment's page."""
        return linked_if_visible(page_request(), obj.segment)

    @admin.display(description="Content")
    def content_shown(self, obj):
        """The content, named and linked only for a reader who may open its page."""
        return linked_if_visible(page_request(), obj.content)

    @admin.display(description="Versions")
    def versions(self, obj):
        """The approved version that sends and, when the campaign was edited since, the pending revision."""
        approved = obj.approved() if obj.is_active else None
        if approved is None:
            return "—"
        at = dt.datetime.fromisoformat(approved.approved_at) if approved.approved_at else None
        when = f" on {zoned(at, approved.time_zone)}" if at else ""
        # Scheduled: approved, its first send still to come (the beat makes it live when it starts).
        scheduled = obj.status == Status.SCHEDULED
        sending = format_html(
            '<p id="approved-version">Version {} (approved{}{}) {}.</p>',
            approved.number,
            f" by {approved.approved_by}" if approved.approved_by else "",
            when,
            f"is scheduled: its first send is at {next_send_text(obj)}" if scheduled else "is sending",
        )
        if not obj.has_pending_revision:
            return sending
        return format_html(
            '{}<div id="pending-revision"><p><strong>A revision is pending:</strong> version {} {} until '
            "the revision is approved. Only <em>Stop</em> takes the campaign off the air.</p>{}"
            '<div class="approved-phones"><p>Version {} as phones show it:</p>{}</div></div>',
            sending,
            approved.number,
            _approved_goes_on(obj),
            version_diff_html(
                approved.snapshot,
                obj.snapshot(),
                app_id=obj.app_id,
                reader=page_request().user if page_request() is not None else None,
                before_title=f"Approved version {approved.number} ({'scheduled' if scheduled else 'sending'})",
            ),
            approved.number,
            approved_phones_html(
                approved,
                app_name=obj.app.name if getattr(obj, "app_seen", False) else numbered("app", obj.app_id),
                reader=page_request().user if page_request() is not None else None,
                context=approved.send_context(),
                due=obj.next_occurrence_at,
            ),
        )

    def change_view(self, request, object_id, form_url="", extra_context=None):
        obj = self.get_object(request, object_id) if request.method == "GET" else None
        if obj is not None and obj.is_active and self.has_change_permission(request, obj):
            approved = obj.approved()
            number = approved.number if approved else 1
            covered = [
                *(["name (its content shows it)"] if obj.shows_name() else []),
                *("app", "purpose", "content", "variants", "audience", "schedule", "throttle", "winner mode"),
                *(["conversion goal (winner mode picks by it)"] if obj.approval_covers_goal() else []),
            ]
            self.message_user(
                request,
                f"This campaign is {obj.get_status_display().lower()}. Saving an edit of its {', '.join(covered[:-1])} "
                f"or {covered[-1]} makes a pending revision: version {number} {_approved_goes_on(obj)} until the "
                "revision is approved. Only Stop takes it off the air.",
                messages.WARNING,
            )
        return super().change_view(request, object_id, form_url, extra_context)

    def message_user(self, request, message, level=messages.INFO, *args, **kwargs):
        revision = getattr(request, "campaign_revision", None)
        if revision is not None and level == messages.SUCCESS:
            message = (
                f"Saved as a pending revision of “{revision.name}”: the approved version keeps sending until the "
                "revision is approved. Submit it for review when it is ready."
            )
            level = messages.WARNING
        return super().message_user(request, message, level, *args, **kwargs)

    lifecycle_button_name = "campaign_action"
    # Test send asks first, as the push content list's Send a test does, naming the phones it reaches;
    # a double click on its Yes sends once.
    lifecycle_asked_again = ("stop", "test_send")
    lifecycle_once = "test_send"

    def lifecycle_sent_again(self, request, use):
        """Test send's Yes posted again (a double click): nothing sent again, the dispatch it started
        linked (the first variant's, with variants); Test send pressed again asks anew, and sends anew."""
        from delivery.models import Dispatch

        first = Dispatch.objects.filter(pk=use.result_id).first()
        started = linked_if_visible(request, first) if first is not None else "its dispatch is deleted"
        return format_html(
            "This test send was started already, on {} UTC: {}. Nothing was sent again; press Test send "
            "again to send another test.",
            f"{use.used_at:%Y-%m-%d %H:%M}",
            started,
        )

    def lifecycle_actions(self, user, obj, *, answers=None):
        return campaign_actions(user, obj, answers=answers, approval_of=self.approval_of)

    def lifecycle_consequences(self, obj, action):
        if action == "test_send":
            variants = len(obj.variant_list())
            each = f" as one test send per variant ({variants}): each phone gets each" if variants else ""
            return [
                f"It is sent as it is now, approved or not, to its app's test devices alone{each}; the message "
                "on its page then links each test send, to follow what each device got.",
                test_send_reach([obj.app_id]),
            ]
        lines = []
        if obj.kind == Campaign.Kind.API_TRIGGERED:
            lines.append("Its trigger API refuses every call from now on.")
        elif obj.next_occurrence_at is not None:
            lines.append(f"Its next send ({next_send_text(obj)}) and every one after it are cancelled.")
        test = WinnerTest.objects.filter(campaign=obj, outcome=WinnerTest.Outcome.WAITING).first()
        if test is not None:
            lines.append(
                f"Its winner, due to be picked at {zoned(test.due_at, obj.schedule_zone())}, is not picked: the rest "
                f"of its audience (all but the {test.settings['sample_share']}% sample) gets nothing."
            )
        lines.append("A send under way stops: its pushes not yet handed to Apple or Google are skipped (stopped).")
        approval = self.approval_of(obj)
        if obj.is_active and approval is not None and approval.status == approval.Status.PENDING:
            lines.append(
                f"Its revision waiting for approval, asked by {approval.requested_by}, is cancelled: it will not be"
                " decided."
            )
        lines.append("A stopped campaign cannot be started again; Duplicate makes a new draft of it.")
        return lines

    def lifecycle_handlers(self, request, object_id):
        by = request.user

        def duplicate():
            copy = campaign_duplicate(campaign_id=object_id, by=by)
            return f"Duplicated as a new draft: {copy}.", reverse("admin:campaigns_campaign_change", args=[copy.pk])

        def test_send():
            dispatches = campaign_test_send(campaign_id=object_id, by=by)
            # Linked: the campaign's page lists no test send, each one's page says what it became.
            linked = format_html_join("; ", "{}", ((linked_if_visible(request, d),) for d in dispatches))
            if len(dispatches) == 1:
                return format_html("Test send started: {}.", linked), None, dispatches[0].pk
            return format_html("Test sends started, one per variant: {}.", linked), None, dispatches[0].pk

        def submit():
            campaign_submit(campaign_id=object_id, by=by, message=request.POST.get("message", ""))
            campaign = Campaign.objects.get(pk=object_id)
            if campaign.is_active:
                return (
                    f"Revision submitted for review: “{campaign}” waits in the approvers' inbox; "
                    "the approved version keeps sending meanwhile.",
                    None,
                )
            return (
                f"Submitted for review: “{campaign}” waits in the approvers' inbox; "
                "nothing is sent until one approves it.",
                None,
            )

        def cancel_request():
            campaign = campaign_cancel_request(campaign_id=object_id, by=by)
            if campaign.is_active:
                return (
                    f"Request cancelled: the revision of “{campaign}” is editable again; the approved version keeps sending.",
                    None,
                )
            return f"Request cancelled: “{campaign}” is a draft again, editable.", None

        return {
            "submit": submit,
            "cancel_request": cancel_request,
            "stop": lambda: (f"Stopped: “{campaign_stop(campaign_id=object_id, by=by)}” sends nothing more.", None),
            "archive": lambda: (
                f"Archived: “{campaign_archive(campaign_id=object_id, by=by)}” is hidden from the default list.",
                None,
            ),
            "duplicate": duplicate,
            "test_send": test_send,
        }

    @admin.display(description="As phones show it")
    def preview(self, obj):
        if obj is None or obj.pk is None or obj.content_id is None:
            return "—"
        request = page_request()
        return campaign_phones_html(
            obj, reader=request.user if request is not None else None, app_seen=getattr(obj, "app_seen", None)
        )

    @admin.display(description="Report")
    def report(self, obj):
        if obj is None or obj.pk is None:
            return "—"
        request = page_request()
        data = report_named(campaign_report(obj), reader=request.user if request is not None else None)
        charts = campaign_charts(obj)
        counters = format_html_join(
            "",
            "<tr><th>{}</th><td>{}</td></tr>",
            [
                ("Targeted", data["targeted"]),
                ("Accepted", data["accepted"]),
                ("Failed", data["failed"]),
                ("Skipped", data["skipped"]),
                ("Unknown (worker lost)", data["unknown"]),
                ("Still sending", data["pending"]),
                ("Opened", data["opened"]),
                ("Open rate", f"{data['open_rate']:.1%}" if data["open_rate"] is not None else "—"),
            ],
        )
        csv_url = reverse("admin:campaigns_campaign_report_csv", args=[obj.pk])
        cleared_html = rows_deleted_html(
            data["rows_deleted"], obj.schedule_zone(), per_profile="the profiles per variant and the conversions below"
        )
        # Failures and skips by reason: the charts' figure of them, with its table (the same rollup rows).
        return format_html(
            '<div id="campaign-report"><table>{}</table>{}{}{}{}<p><a href="{}">Export as CSV</a></p></div>',
            counters,
            cleared_html,
            variants_report_html(data["variants"], data["holdout"]),
            conversions_report_html(data["conversions"]),
            mark_safe(report_charts_html(charts)),  # noqa: S308 (a template, autoescaped)
            csv_url,
        )

    @admin.display(description="Conversion event")
    def conversion_goal(self, obj):
        return conversion_goal_text(obj) if obj is not None else "—"

    def report_csv_view(self, request, object_id):
        campaign = self.get_object(request, object_id)
        if campaign is None or not self.has_view_permission(request, campaign):
            raise Http404("No such campaign.")
        response = HttpResponse(
            campaign_report_csv(campaign, reader=request.user), content_type="text/csv; charset=utf-8"
        )
        response["Content-Disposition"] = f'attachment; filename="campaign-{campaign.pk}-report.csv"'
        return response

    def count_audience_view(self, request, object_id):
        """Count the campaign's audience now and keep it (POST, by those who may edit the campaign and
        see its segment: ``audience_kept_text`` refuses the others)."""
        campaign = self.get_object(request, object_id)
        if campaign is None or not self.has_view_permission(request, campaign):
            raise Http404("No such campaign.")
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not can(request.user, "campaigns.change_campaign", campaign):
            raise PermissionDenied("Your role may not count this campaign's audience.")
        from audiences.rules.schema import RulesInvalid
        from audiences.rules.words import rules_invalid_text

        try:
            counted = audience_kept_text(campaign, reader=request.user, count=True)
        except RulesInvalid as exc:  # its segment's rules saved before a check existed: said where they break
            text = rules_invalid_text(campaign.segment.rules, exc.errors)
            self.message_user(request, f"Audience not counted: {text}.", messages.ERROR)
        else:
            self.message_user(request, f"Audience counted: {counted}.", messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:campaigns_campaign_change", args=[campaign.pk]))

    def get_urls(self):
        return [
            path(
                "<path:object_id>/count-audience/",
                self.admin_site.admin_view(self.count_audience_view),
                name="campaigns_campaign_count_audience",
            ),
            path(
                "<path:object_id>/report.csv",
                self.admin_site.admin_view(self.report_csv_view),
                name="campaigns_campaign_report_csv",
            ),
            *super().get_urls(),
        ]
