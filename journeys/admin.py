import datetime as dt
import json
from urllib.parse import quote

from django import forms
from django.contrib import admin
from django.db.models import Prefetch, Sum
from django.template.defaultfilters import pluralize
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from accounts.admin.bases import (
    ActiveStatusFilter,
    BigTableAdmin,
    KeptChoiceField,
    ObjectAccessAdminMixin,
    ReadOnlyAdminMixin,
    ScopedAdmin,
    linked_if_visible,
    row_id,
    unseen_label,
    with_reader_sees,
)
from accounts.admin.lifecycle import LifecycleAdminMixin, approval_text, page_request
from accounts.json_values import JsonValueFormField
from accounts.selectors import in_scope
from accounts.services import TransitionError
from config import digits
from config.labels import numbered
from config.zones import zone, zoned, zoned_column
from delivery.admin.dispatches import journey_step_sends_url
from delivery.conversion_form import CONVERSION_FIELDS, ConversionFormMixin, conversion_goal_text, conversion_help
from journeys.diagram import version_svg
from journeys.graph import (
    DAY_SECONDS,
    ELSE_LABEL,
    EVENT_NAME_MAX,
    WAIT_UNITS,
    GraphInvalid,
    contents_of,
    duration_parts,
    graph_validate,
    rules_of,
    segments_of,
)
from journeys.models import Enrollment, Journey, JourneyPause, JourneyVersion, StepStat
from journeys.review import conditions_html, content_names, entry_audience_text, entry_segment_names, entry_text
from journeys.selectors import (
    enrollments_visible_to,
    journey_actions,
    journey_open_version,
    journey_shown_version,
    journeys_visible_to,
    version_dispatches,
    version_others_sent,
    version_step_stats,
    version_totals,
)
from journeys.services.conversions import journey_conversion_set
from journeys.services.lifecycle import (
    MAX_ENTRY_EVERY_HOURS,
    MAX_WHOLE_NUMBER,
    VERSION_FIELDS,
    journey_archive,
    journey_cancel_request,
    journey_create,
    journey_delete,
    journey_draft_discard,
    journey_pause,
    journey_rename,
    journey_resume,
    journey_stop,
    journey_submit,
    journey_version_edit,
    name_unapproved_text,
    segments_changed_text,
    segments_unfrozen_text,
    version_entry_fields_clear,
    version_reference_checks,
)

Status = Journey.Status

# A journey has no time zone of its own: its times are shown in UTC, named "(UTC)".
JOURNEY_ZONE = "UTC"
JOURNEY_CONVERSION_HELP = conversion_help("per push step")


class StepEditorWidget(forms.Textarea):
    """The graph as JSON, edited through a step-by-step form drawn by step_editor.js; after a refused
    save, ``faults`` (``GraphInvalid.faults``) tell it which of a step's fields to mark."""

    template_name = "admin/journeys/step_editor_widget.html"

    class Media:
        # The audiences rule builder draws a condition's "matches rule" branches.
        js = ["audiences/rule_builder.js", "journeys/step_editor.js", "pushdesk/fields_by_choice.js"]
        css = {"all": ["audiences/rule_builder.css", "journeys/step_editor.css"]}

    def __init__(self, *args, meta=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.meta = meta or {}
        self.faults: list[dict] = []

    def get_context(self, name, value, attrs):
        context = super().get_context(name, value, attrs)
        context["widget"]["meta_json"] = json.dumps(self.meta)
        context["widget"]["faults_json"] = json.dumps(self.faults)
        return context


# The wait units as the form offers them: minutes (a new wait's), hours, days, then seconds.
_UNIT_CHOICES = [(str(unit), typed) for unit, typed, _ in sorted(WAIT_UNITS, key=lambda u: (u[0] == 1, u[0]))]


class WaitWidget(forms.MultiWidget):
    """An amount and its unit; a stored wait opens as ``duration_parts`` reads it (none: 0 minutes)."""

    def __init__(self, attrs=None):
        amount = forms.NumberInput(attrs={"min": 0, "class": "vIntegerField"})
        super().__init__((amount, forms.Select(choices=_UNIT_CHOICES)), attrs)

    def decompress(self, value):
        if value in (None, ""):
            return [None, "60"]
        amount, unit = duration_parts(int(value))
        return [amount, str(unit) if amount else "60"]


class WaitField(forms.MultiValueField):
    """A wait typed as an amount of minutes, hours, days (or seconds), cleaned to seconds."""

    widget = WaitWidget

    def __init__(self, **kwargs):
        fields = (
            digits.IntegerField(min_value=0, error_messages={"min_value": "The amount is 0 or more."}),
            forms.TypedChoiceField(choices=_UNIT_CHOICES, coerce=int),
        )
        super().__init__(fields, require_all_fields=True, **kwargs)

    def compress(self, data_list):
        if not data_list:
            return 0
        amount, unit = data_list
        seconds = (amount or 0) * unit
        if seconds > MAX_WHOLE_NUMBER:
            raise forms.ValidationError(f"At most {MAX_WHOLE_NUMBER // DAY_SECONDS:,} days.")
        return seconds


class JourneyForm(ConversionFormMixin, forms.ModelForm):
    """The journey and its editable version: entry, re-entry, exit criteria and the steps."""

    entry_kind = forms.ChoiceField(
        choices=JourneyVersion.EntryKind.choices,
        initial="segment",
        # The fields of the entry chosen (pushdesk/fields_by_choice.js).
        widget=forms.Select(
            attrs={
                "data-shows": json.dumps({"segment": ["entry_segment", "entry_every_hours"], "event": ["entry_event"]})
            }
        ),
    )
    entry_segment = KeptChoiceField(queryset=None, required=False, help_text="Segment entry: who enters.")
    entry_every_hours = digits.IntegerField(
        label="Read the segment again every (hours)",
        min_value=0,
        max_value=MAX_ENTRY_EVERY_HOURS,
        initial=0,
        help_text="Segment entry: 0 reads the segment once; N reads it again every N hours (at most a year).",
    )
    entry_event = forms.CharField(
        required=False, max_length=EVENT_NAME_MAX, help_text="Event entry: the event's name, e.g. signed_up."
    )
    reentry = forms.ChoiceField(label="Re-entry", choices=JourneyVersion.Reentry.choices, initial="never")
    reentry_wait_seconds = WaitField(
        label="Re-entry wait", initial=0, help_text="With re-entry: the least time between two entries of a profile."
    )
    exit_event = forms.CharField(
        required=False,
        max_length=EVENT_NAME_MAX,
        help_text="An event that ends the journey for the profile (optional).",
    )
    graph = JsonValueFormField(widget=StepEditorWidget, help_text="Build the steps; each error names its step.")

    class Meta:
        model = Journey
        fields = ("name", "app")

    user = None
    kept = None  # the version being changed (its draft, else its live one): what it names stays

    def clean(self):
        cleaned = super().clean()
        app = cleaned.get("app") or getattr(self.instance, "app", None)
        graph = cleaned.get("graph")
        if app is None or graph is None:
            return cleaned
        try:
            graph_validate(graph, **version_reference_checks(app_id=app.pk, by=self.user, kept=self.kept))
        except GraphInvalid as exc:
            for message in exc.errors_list:
                self.add_error("graph", message)
            if isinstance(self.fields["graph"].widget, StepEditorWidget):
                self.fields["graph"].widget.faults = exc.faults
        if cleaned.get("entry_kind") == "segment" and not cleaned.get("entry_segment"):
            self.add_error("entry_segment", "A segment entry needs a segment.")
        if cleaned.get("entry_kind") == "event" and not (cleaned.get("entry_event") or "").strip():
            self.add_error("entry_event", "An event entry needs the event's name.")
        return cleaned


class _StatusFilter(ActiveStatusFilter):
    """By default the list shows what is being worked on: not stopped, closed or archived."""

    active_statuses = (Status.DRAFT, Status.IN_REVIEW, Status.LIVE, Status.PAUSED)
    active_label = "Draft, in review, live, paused"


@admin.register(Journey)
class JourneyAdmin(LifecycleAdminMixin, ObjectAccessAdminMixin, ScopedAdmin):
    lifecycle_delete = staticmethod(journey_delete)
    form = JourneyForm
    list_display = ("name", "app_shown", "status", "version_label", "owner", "updated")
    # Sorted by the app's name, which it says by number to a reader granted the journey alone.
    withheld_columns = ("app_shown",)
    list_filter = (_StatusFilter, "app")
    list_select_related = ("app", "owner", "live_version")
    search_fields = ("name",)
    readonly_fields = (
        "status",
        "lifecycle_buttons",
        "approval",
        "versions_summary",
        "next_entry",
        "journey_graph",
        "conditions",
        "entry_audience",
        "report",
        "owner",
        "object_access",
        "conversion_goal",
    )

    def get_queryset(self, request):
        # Each row of the list shows its draft or version in review: read for the whole page at once.
        open_versions = JourneyVersion.objects.filter(
            status__in=(JourneyVersion.Status.DRAFT, JourneyVersion.Status.IN_REVIEW)
        ).order_by("-number")
        from delivery.models import App

        # A journey granted without its app names it only to whoever may see it (``app_shown``).
        return with_reader_sees(
            journeys_visible_to(request.user), request.user, field="app_id", model=App, name="app_seen"
        ).prefetch_related(Prefetch("versions", queryset=open_versions, to_attr="open_versions"))

    @admin.display(description="App", ordering="app__name")
    def app_shown(self, obj):
        """The app, named (and linked on the journey's page) to a reader who may see it, "app #3" to
        the others: a journey granted without its app."""
        if not getattr(obj, "app_seen", False):
            return numbered("app", obj.app_id)
        request = page_request()
        return obj.app.name if request is None else linked_if_visible(request, obj.app)

    updated = zoned_column("updated_at", "Updated at", time_zone=JOURNEY_ZONE)

    @admin.display(description="Version")
    def version_label(self, obj):
        if hasattr(obj, "open_versions"):
            open_version = obj.open_versions[0] if obj.open_versions else None
        else:
            open_version = journey_open_version(obj)
        live = ""
        if obj.live_version_id:
            said = {Status.LIVE: "live", Status.PAUSED: "live, paused"}.get(obj.status, "(was live)")
            live = f"v{obj.live_version.number} {said}"
        draft = f"v{open_version.number} {open_version.get_status_display().lower()}" if open_version else ""
        return ", ".join(x for x in (live, draft) if x) or "—"

    def get_fieldsets(self, request, obj=None):
        fieldsets = [
            (None, {"fields": ("name", "app" if obj is None else "app_shown")}),
            ("Entry", {"fields": ("entry_kind", "entry_segment", "entry_every_hours", "entry_event")}),
            ("Re-entry and exit", {"fields": ("reentry", "reentry_wait_seconds", "exit_event")}),
            ("Steps", {"fields": ("graph",)}),
            ("Conversions", {"fields": CONVERSION_FIELDS, "description": JOURNEY_CONVERSION_HELP}),
        ]
        if obj is not None:
            # The next read of the entry segment, while one is due (a segment entry on the air).
            next_entry = ("next_entry",) if obj.next_entry_at is not None else ()
            fieldsets.insert(
                0,
                (
                    "Status",
                    {"fields": ("status", "lifecycle_buttons", "approval", "versions_summary", *next_entry, "owner")},
                ),
            )
            fieldsets.insert(
                1, ("Journey", {"fields": ("journey_graph", "conditions", "entry_audience"), "classes": ("wide",)})
            )
            fieldsets.insert(2, ("Report", {"fields": ("report",), "classes": ("wide",)}))
            fieldsets.append(("Access", {"fields": ("object_access",)}))
        if obj is not None and not self.has_change_permission(request, obj):
            fieldsets = [fs for fs in fieldsets if fs[0] not in ("Entry", "Re-entry and exit", "Steps", "Conversions")]
            fieldsets.insert(3, ("Conversions", {"fields": ("conversion_goal",)}))
        return fieldsets

    def get_form(self, request, obj=None, change=False, **kwargs):
        from audiences.admin.segments import builder_meta, builder_meta_name
        from audiences.models import Segment
        from delivery.models import App, PushContent

        form = super().get_form(request, obj, change=change, **kwargs)
        if "graph" not in form.base_fields:
            return form
        admin_self = self

        class BoundForm(form):
            user = request.user

            def __init__(self, *args, **kw):
                super().__init__(*args, **kw)
                segments = in_scope(request.user, Segment.objects.order_by("name"))
                shown = (admin_self._open_version(request, obj) or obj.live_version) if obj is not None else None
                self.kept = shown
                if shown is not None and shown.entry_segment_id:
                    # Never blank a reference: colleagues keep a segment they were not granted,
                    # offered by number, not by name, to a reader who may not see it.
                    segments = segments | Segment.objects.filter(pk=shown.entry_segment_id)
                if "entry_segment" in self.fields:
                    self.fields["entry_segment"].queryset = segments
                    self.fields["entry_segment"].reader = request.user
                contents = in_scope(request.user, PushContent.objects.select_related("app")).order_by("name")
                if obj is not None:
                    contents = contents.filter(app=obj.app)
                # The builder lists what the steps name too, so that a step on a segment or a content
                # the colleague was not granted shows as its own (its list showed another as chosen):
                # by name to a reader who may see it, by number to the others.
                reader = request.user
                listed = list(with_reader_sees(segments, reader)[:500])
                named = segments_of(shown.graph) - {s.pk for s in listed} if shown is not None else set()
                listed += (
                    with_reader_sees(Segment.objects.filter(pk__in=named), reader).order_by("name") if named else []
                )

                # A content is listed with its app, named only to a reader who may see it (a content
                # granted alone, its app not: "Welcome (app #3)"), as the journey's page names it.
                def with_app_seen(rows):
                    return with_reader_sees(rows, reader, field="app_id", model=App, name="app_seen")

                offered = list(with_app_seen(with_reader_sees(contents, reader))[:500])
                named = set(contents_of(shown.graph).values()) if shown is not None else set()
                named -= {c.pk for c in offered}
                offered += (
                    with_app_seen(
                        with_reader_sees(PushContent.objects.select_related("app").filter(pk__in=named), reader)
                    ).order_by("name")
                    if named
                    else []
                )
                rules = builder_meta(request.user)
                trees = rules_of(shown.graph) if shown is not None else []
                if trees:  # a rule's segment or app not granted, as above
                    builder_meta_name(rules, {"all": trees}, user=request.user)
                meta = {
                    "segments": [{"id": s.pk, "name": s.name if s.reader_sees else unseen_label(s)} for s in listed],
                    "contents": [
                        {
                            "id": c.pk,
                            "name": f"{c.name} ({c.app.name if c.app_seen else numbered('app', c.app_id)})"
                            if c.reader_sees
                            else unseen_label(c),
                        }
                        for c in offered
                    ],
                    "rules": rules,
                    "wait_units": [[str(unit), typed] for unit, typed in _UNIT_CHOICES],
                }
                if obj is not None:  # a wait until a time of day reads it for a profile without a zone
                    from journeys.services.engine import journey_default_zone

                    meta["wait_zone"] = journey_default_zone(obj)
                self.fields["graph"].widget = StepEditorWidget(meta=meta)
                version = shown
                if version is not None and not self.is_bound:
                    for name in VERSION_FIELDS:
                        value = getattr(version, name)
                        self.initial[name] = value.pk if hasattr(value, "pk") else value
                elif not self.is_bound:
                    self.initial.setdefault("graph", {"steps": [{"id": "end", "type": "exit"}]})

        return BoundForm

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        from delivery.models import App

        if db_field.name == "app":
            kwargs["queryset"] = in_scope(request.user, App.objects.all())
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def get_readonly_fields(self, request, obj=None):
        if obj is not None:
            return (*self.readonly_fields, "app_shown")
        return self.readonly_fields

    @staticmethod
    def _open_version(request, obj):
        """The journey's draft or version in review; a page that only reads looks it up once (the
        change form asks for the permission a dozen times), a request that writes every time."""
        if request.method not in ("GET", "HEAD"):
            return journey_open_version(obj)
        found = request.__dict__.setdefault("_pushdesk_open_versions", {})
        if obj.pk not in found:
            found[obj.pk] = journey_open_version(obj)
        return found[obj.pk]

    def lifecycle_locked(self, request, obj) -> str:
        if obj.status not in (Status.DRAFT, *Journey.ON_AIR):
            return str(TransitionError(obj, "changed"))  # in review (locked), or finished
        open_version = self._open_version(request, obj)
        if open_version is not None and open_version.status == JourneyVersion.Status.IN_REVIEW:
            return f"'{obj}' has version {open_version.number} waiting for approval: it cannot be changed until it is decided."
        return ""

    def has_delete_permission(self, request, obj=None):
        if obj is not None and (obj.status != Status.DRAFT or obj.live_version_id):
            return False
        return super().has_delete_permission(request, obj)

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        values = {name: data.get(name) for name in VERSION_FIELDS}
        values["entry_event"] = (values["entry_event"] or "").strip()
        values["exit_event"] = (values["exit_event"] or "").strip()
        cleared = JourneyVersion(**values)  # as saved: a segment left chosen for an event entry is not a change
        version_entry_fields_clear(cleared)
        values = {name: getattr(cleared, name) for name in VERSION_FIELDS}
        # A TransitionError (the journey moved on during the save) is answered by the lifecycle
        # mixin: a message, and the save undone.
        if not change:
            created = journey_create(by=request.user, name=data["name"], app=data["app"], **values)
            obj.pk = created.pk
        else:
            current = Journey.objects.get(pk=obj.pk)
            if data["name"] != current.name:
                journey_rename(journey_id=obj.pk, by=request.user, name=data["name"])
            base = journey_open_version(current) or current.live_version
            changed = {n: v for n, v in values.items() if base is None or getattr(base, n) != v}
            if changed:
                journey_version_edit(journey_id=obj.pk, by=request.user, **changed)
        journey_conversion_set(journey_id=obj.pk, by=request.user, **form.conversion_values())

    def save_related(self, request, form, formsets, change):
        pass

    @admin.display(description="Approval")
    def approval(self, obj):
        pending = "New version waiting for approval" if obj.status in Journey.ON_AIR else ""
        text = approval_text(self.approval_of(obj), time_zone=JOURNEY_ZONE, pending=pending)
        live = obj.live_version if obj.status in Journey.ON_AIR else None
        request = page_request()
        reader = request.user if request is not None else None
        changed = segments_changed_text(live, reader=reader) if live is not None and reader is not None else ""
        # Renamed since its live version was approved, whose pushes show the name: they keep the approved one.
        renamed = name_unapproved_text(obj) if live is not None else ""
        text = format_html('{}<p id="name-unapproved">{}</p>', text, renamed) if renamed else text
        if changed:  # its reads of that segment are refused until a new version is approved
            return format_html('{}<p class="errornote" id="segments-changed">{}</p>', text, changed)
        unfrozen = segments_unfrozen_text(live) if live is not None else ""
        if unfrozen:  # approved before approvals covered the segments: an edit of one reaches it unapproved
            return format_html('{}<p id="segments-unfrozen">{}</p>', text, unfrozen)
        return text

    @admin.display(description="Next segment read")
    def next_entry(self, obj):
        """When the entry segment is read next (its profiles not yet in enter), in UTC, named."""
        when = zoned(obj.next_entry_at, JOURNEY_ZONE)
        if obj.status == Status.PAUSED:
            return f"{when}, unless it is still paused then (a read due while paused is skipped)"
        return when

    @admin.display(description="Versions")
    def versions_summary(self, obj):
        """The last ten versions, each entry's segment named only to a reader who may see it."""
        versions = list(obj.versions.order_by("-number")[:10])
        request = page_request()
        segment_names = entry_segment_names(request.user if request is not None else None, versions)
        rows = [
            (
                v.number,
                version_status_text(obj, v),
                entry_text(v, segment_names=segment_names),
                version_live_text(v),
                v.exit_event or "—",
                f"{sum(version_totals(v).values()):,}",
            )
            for v in versions
        ]
        return format_html(
            '<table class="journey-versions"><tr><th>#</th><th>status</th><th>entry</th><th>live</th>'
            "<th>exit event</th><th>enrollments</th></tr>{}</table>",
            format_html_join("", "<tr><td>v{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", rows),
        )

    @admin.display(description="Who enters")
    def entry_audience(self, obj):
        """The entry segment's size as profiles → reachable in the journey's app → opted in, as the
        approver's review shows it (``entry_audience_text``), the segment named only to a reader who
        may see it."""
        version = self._shown_version(obj)
        request = page_request()
        if version is None or request is None:
            return "—"
        text = entry_audience_text(
            version, app_id=obj.app_id, segment_names=entry_segment_names(request.user, [version])
        )
        if version.entry_kind != version.EntryKind.SEGMENT or version.entry_segment is None:
            return text
        return format_html('<span id="entry-audience">{}</span>', text)

    @admin.display(description="Conversion event")
    def conversion_goal(self, obj):
        return conversion_goal_text(obj) if obj is not None else "—"

    @admin.display(description="Graph")
    def journey_graph(self, obj):
        """The shown version drawn, its push contents and entry segment named only to a reader who
        may see them."""
        version = self._shown_version(obj)
        request = page_request()
        if version is None or request is None:
            return "—"
        totals = version_totals(version)
        link = reverse("admin:journeys_enrollment_changelist") + f"?version__id__exact={version.pk}"
        summary = ", ".join(f"{status} {count:,}" for status, count in totals.items())
        stats = self._shown_stats(obj)
        if version.status == version.Status.DRAFT:
            step_url = "#step-{}".format  # the step's row in the editor below
        else:

            def step_url(step: str) -> str:
                counts = stats.get(step) or {}
                # A profile passes a push at once: the step's sends show what it did, unless it sent
                # nothing and refused its profiles, who ended there (its enrollments say why).
                if counts.get("type") == "push" and (counts.get("pushed") or not counts.get("failed")):
                    return step_sends_url(version, step)
                return f"{link}&step={quote(step)}"  # its enrollments at that step

        return format_html(
            '<div class="journey-graph-box"><p>Version {} ({}): {} — <a href="{}">enrollments</a></p>{}</div>',
            version.number,
            _status_in_brackets(obj, version),
            summary,
            link,
            version_svg(
                version,
                stats=stats,
                names=content_names(version, user=request.user),
                segment_names=entry_segment_names(request.user, [version]),
                step_url=step_url,
            ),
        )

    @admin.display(description="Conditions")
    def conditions(self, obj):
        """The shown version's condition steps in words, read-only (the steps' editor below edits a
        draft), naming only the segments and apps the reader may see."""
        version = self._shown_version(obj)
        request = page_request()
        if version is None or request is None:
            return "—"
        return conditions_html(version, user=request.user)

    @staticmethod
    def _shown_version(obj):
        """The shown version, read once per page (the graph, the audience and the report show it)."""
        if "_shown_version" not in obj.__dict__:
            obj.__dict__["_shown_version"] = journey_shown_version(obj)
        return obj.__dict__["_shown_version"]

    def _shown_stats(self, obj) -> dict:
        """The shown version's counters per step, counted once per page (the graph and the report)."""
        if "_shown_stats" not in obj.__dict__:
            obj.__dict__["_shown_stats"] = version_step_stats(self._shown_version(obj))
        return obj.__dict__["_shown_stats"]

    @admin.display(description="Report")
    def report(self, obj):
        """The shown version's sends over time, per platform, the funnel and the reasons, and its
        counters per step."""
        from delivery.conversions import Goal
        from delivery.reports import (
            conversions_html,
            report_charts,
            report_charts_html,
            rows_deleted,
            rows_deleted_html,
            step_series,
        )

        version = self._shown_version(obj)
        if version is None:
            return "—"
        dispatches = version_dispatches(version)
        # Their rollup joined to them, however many; in the journey's zone, as its other times.
        charts = report_charts(dispatch_ids=dispatches, tz=zone(JOURNEY_ZONE))
        stats = self._shown_stats(obj)
        charts["steps"] = step_series(stats)
        head = _report_version_html(obj, version)  # above the conversions too: they are the version's
        html = format_html(
            "{}{}",
            rows_deleted_html(rows_deleted(dispatches), JOURNEY_ZONE, per_profile="the conversions per step"),
            mark_safe(report_charts_html(charts)),  # noqa: S308 (a template, autoescaped)
        )
        goal = Goal.of(obj)
        if goal is None:
            return format_html("{}{}", head, html)
        rows = [(step, counts["conversions"]) for step, counts in stats.items() if "conversions" in counts]
        conversions = conversions_html(rows, goal.as_dict(), table_id="journey-conversions")
        return format_html("{}{}{}", head, conversions, html)

    lifecycle_button_name = "journey_action"
    lifecycle_asked_again = ("pause", "resume", "stop")
    lifecycle_undoable = ("pause", "resume")

    def lifecycle_actions(self, user, obj, *, answers=None):
        return journey_actions(user, obj, answers=answers, approval_of=self.approval_of)

    def lifecycle_consequences(self, obj, action):
        inside = Enrollment.objects.filter(journey=obj, status__in=Enrollment.OPEN_STATUSES).count()
        if action == "pause":
            return _pause_consequences(obj, inside)
        if action == "resume":
            return _resume_consequences(obj, inside)
        lines = [
            f"{inside:,} profile{pluralize(inside)} inside leave{'s' if inside == 1 else ''} it now, at whatever "
            "step they are (exit: journey stopped); its pushes not yet handed to Apple or Google are skipped.",
            "No profile enters it again.",
        ]
        open_version = journey_open_version(obj)
        if open_version is not None and open_version.status == JourneyVersion.Status.IN_REVIEW:
            lines.append(
                f"Version {open_version.number}, waiting for approval, goes back to draft; its request is closed."
            )
        lines.append("A stopped journey cannot be started again.")
        return lines

    def lifecycle_handlers(self, request, object_id):
        by = request.user
        return {
            "submit": lambda: _submitted(
                journey_submit(journey_id=object_id, by=by, message=request.POST.get("message", "")), object_id
            ),
            "cancel_request": lambda: _request_cancelled(journey_cancel_request(journey_id=object_id, by=by)),
            "discard_draft": lambda: _draft_discarded(journey_draft_discard(journey_id=object_id, by=by)),
            "pause": lambda: (
                f"Paused: '{journey_pause(journey_id=object_id, by=by)}' holds everyone where they are.",
                None,
            ),
            "resume": lambda: (f"Resumed: '{journey_resume(journey_id=object_id, by=by)}' is live again.", None),
            "stop": lambda: (
                f"Stopped: '{journey_stop(journey_id=object_id, by=by)}' has let everyone inside out; "
                "no one enters it again.",
                None,
            ),
            "archive": lambda: (
                f"Archived: '{journey_archive(journey_id=object_id, by=by)}' is left out of the journeys' default list.",
                None,
            ),
        }


def _submitted(_request, journey_id: int) -> tuple[str, None]:
    """What Submit for review did, in words: which version now waits, and for whom."""
    journey = Journey.objects.get(pk=journey_id)
    version = journey_open_version(journey)
    number = f"version {version.number} of " if version is not None else ""
    return f"Submitted for review: {number}'{journey}' waits for an approver's decision.", None


def _request_cancelled(journey: Journey) -> tuple[str, None]:
    """What Cancel request did, in words: the version is a draft again (a live version runs on)."""
    version = journey_open_version(journey)
    number = f"version {version.number} of " if version is not None else ""
    return f"Request cancelled: {number}'{journey}' is a draft again, editable.", None


def _pause_consequences(journey: Journey, inside: int) -> list[str]:
    """What a pause of ``journey`` holds, said on the page that asks again."""
    version = journey.live_version
    entry = "its entry events are counted, not entered"
    if version is not None and version.entry_kind == JourneyVersion.EntryKind.SEGMENT:
        entry = "its segment is not read (a recurring read due meanwhile is skipped, and counted)"
    return [
        f"{inside:,} profile{pluralize(inside)} inside stay{'s' if inside == 1 else ''} where "
        f"{'it is' if inside == 1 else 'they are'}: no step runs, a wait that ends meanwhile goes on at the resume.",
        "Its push steps start no new batch; a batch already made goes out as approved.",
        f"No one enters while it is paused: {entry}. An exit event still ends a profile's passage.",
        "Resume puts it back on the air on the same approved version, without a new approval.",
    ]


def _resume_consequences(journey: Journey, inside: int) -> list[str]:
    """What a resume of ``journey`` releases, said on the page that asks again."""
    version = journey.live_version
    number = f" {version.number}" if version is not None else ""
    held = Enrollment.objects.filter(journey=journey, held_due_at__isnull=False)
    due = held.filter(held_due_at__lte=timezone.now()).count()
    return [
        f"It goes live again on its approved version{number}, without a new approval.",
        f"{inside:,} profile{pluralize(inside)} inside go{'es' if inside == 1 else ''} on from where "
        f"{'it was' if inside == 1 else 'they were'}; {due:,} whose wait ended during the pause "
        f"{'is' if due == 1 else 'are'} due now and run{'s' if due == 1 else ''} in due order.",
        "Entries are taken again.",
    ]


def step_sends_url(version: JourneyVersion, step: str) -> str:
    """The list of the batches a push step of ``version`` sent, newest first, titled with the
    journey, the version and the step."""
    return journey_step_sends_url(version.pk, step)


def _report_version_html(journey: Journey, version) -> str:
    """Whose sends the report counts: the shown version's, and what the other versions sent besides,
    which it does not count (a version's steps are its own)."""
    others = version_others_sent(version)
    besides = "; ".join(
        f"version {number}: {targeted:,} targeted, {accepted:,} accepted" for number, targeted, accepted in others
    )
    return format_html(
        '<p id="report-version">The figures below are version {} ({}).{}</p>{}',
        version.number,
        _status_in_brackets(journey, version),
        f" Not counted in them, the sends of {besides}." if besides else "",
        _report_paused_html(journey, version),
    )


def _report_paused_html(journey: Journey, version) -> str:
    """While paused, since when and how many it holds; and what pauses held back at the entry, and
    replayed entry events stored before the journey took them."""
    from journeys.services.lifecycle import READS_SKIPPED_PAUSED, SKIPPED_NOT_LIVE, SKIPPED_PAUSED

    skipped = dict(
        StepStat.objects.filter(version=version, metric__in=(SKIPPED_PAUSED, READS_SKIPPED_PAUSED, SKIPPED_NOT_LIVE))
        .values_list("metric")
        .annotate(n=Sum("count"))
        .order_by()
    )
    said = []
    if journey.status == Status.PAUSED:
        held = Enrollment.objects.filter(journey=journey, held_due_at__isnull=False).count()
        since = zoned(journey.paused_at, JOURNEY_ZONE) if journey.paused_at else "—"
        said.append(f"Paused since {since}: {held:,} profile{pluralize(held)} held where they are.")
    if skipped.get(SKIPPED_PAUSED):
        said.append(f"Entries not taken while paused: {skipped[SKIPPED_PAUSED]:,} (entry events).")
    if skipped.get(READS_SKIPPED_PAUSED):
        said.append(f"Segment reads skipped while paused: {skipped[READS_SKIPPED_PAUSED]:,}.")
    if skipped.get(SKIPPED_NOT_LIVE):
        said.append(
            "Replayed entry events not taken, the journey not live when they were stored: "
            f"{skipped[SKIPPED_NOT_LIVE]:,}."
        )
    if not said:
        return ""
    return format_html('<p id="report-paused">{}</p>', " ".join(said))


def _draft_discarded(journey: Journey) -> tuple[str, None]:
    live = journey.live_version
    return f"Draft discarded: '{journey}' is back to version {live.number}, as it was before the edit.", None


def version_status_text(journey: Journey, version) -> str:
    """A version's status as the journey stands: the last live version of a stopped or closed journey
    says so, not "Live", and its retired versions are no longer finished on by anyone."""
    if version.status == version.Status.LIVE and journey.status == Journey.Status.PAUSED:
        return "Live, paused"
    if version.status == version.Status.LIVE and journey.status != Journey.Status.LIVE:
        return f"{journey.get_status_display()} (was live)"
    if version.status == version.Status.RETIRED and journey.status not in Journey.ON_AIR:
        return "Retired"
    return version.get_status_display()


def version_live_text(version) -> str:
    """When a version was live, in the journey's zone (UTC), named: from its approval to its
    replacement by the next one ("from ..." while no version replaced it); "not yet" for one still to
    be decided (a draft, one in review), "never" for one that went without being approved."""
    if version.live_at is None:
        return "not yet" if version.status in (version.Status.DRAFT, version.Status.IN_REVIEW) else "never"
    if version.retired_at is None:
        return f"from {zoned(version.live_at, JOURNEY_ZONE)}"
    return f"{zoned(version.live_at, JOURNEY_ZONE)} to {zoned(version.retired_at, JOURNEY_ZONE)}"


def _status_in_brackets(journey: Journey, version) -> str:
    """The version's status as said after its number, in brackets: "stopped, was live", not
    "stopped (was live)" inside brackets of its own."""
    return version_status_text(journey, version).lower().replace(" (was live)", ", was live")


@admin.register(Enrollment)
class EnrollmentAdmin(ReadOnlyAdminMixin, BigTableAdmin):
    """Enrollments, read-only: search a profile's external id to see its history in every journey."""

    list_display = ("profile", "journey", "version_number", "entry_number", "step", "status", "due", "entered")
    list_filter = ("status",)
    list_select_related = ("profile", "journey", "version")
    search_fields = ("=profile__external_id",)
    search_help_text = "A profile's exact external id: its history in every journey."
    ordering = ("-id",)
    fields = (
        "profile",
        "journey",
        "version_number",
        "entry_number",
        "status",
        "step",
        "due",
        "entered_detail",
        "finished",
        "exit_reason",
        "history_table",
    )
    readonly_fields = fields

    def get_queryset(self, request):
        return enrollments_visible_to(request.user).select_related("profile", "journey", "version")

    def get_actions(self, request):
        return {}

    def changelist_view(self, request, extra_context=None):
        """The list a journey's page opens (a version's enrollments, at one step) says whose they are."""
        extra = dict(extra_context or {})
        title = _enrollments_title(request)
        if title:
            extra["title"] = title
        return super().changelist_view(request, extra)

    def lookup_allowed(self, lookup, value, request=None):
        return lookup in ("version__id__exact", "journey__id__exact", "profile__id__exact") or super().lookup_allowed(
            lookup, value, request
        )

    @admin.display(description="Version")
    def version_number(self, obj):
        return f"v{obj.version.number}"

    due = zoned_column("due_at", "Due at", time_zone=JOURNEY_ZONE)

    entered = zoned_column("entered_at", "Entered at", time_zone=JOURNEY_ZONE)

    finished = zoned_column("finished_at", "Finished at", time_zone=JOURNEY_ZONE)

    @admin.display(description="Entered at")
    def entered_detail(self, obj):
        """When it entered; for an entry made late by a replay of its event, also when its steps ran.

        A replay dates the entry when its event was stored, as the call would have, and runs its
        steps (its push goes out) at its own time, which the history keeps: the page says so,
        rather than leave a gap at the first step unexplained. An event's entry made as its event
        came runs its first steps at its own date (the history's seconds, truncated, never after
        it); one dated before its first step is a replay's."""
        entered = zoned(obj.entered_at, JOURNEY_ZONE)
        ran = _history_first_time(obj.history)
        if obj.version.entry_kind != JourneyVersion.EntryKind.EVENT or ran is None or ran <= obj.entered_at:
            return entered
        said = (
            f"{entered}, when its entry event was stored. Its entry failed then and was made later, when the "
            f"event was replayed: its steps ran from {zoned(ran, JOURNEY_ZONE)}."
        )
        # A replay run during a pause holds whom it enters until the resume: the pauses between the
        # event and its steps are named, as what the steps waited for.
        pauses = JourneyPause.objects.filter(
            journey_id=obj.journey_id, paused_at__lt=ran, ended_at__gt=obj.entered_at, ended_at__lte=ran
        ).order_by("paused_at")
        if spans := [f"from {zoned(p.paused_at, JOURNEY_ZONE)} to {zoned(p.ended_at, JOURNEY_ZONE)}" for p in pauses]:
            said += f" The journey was paused meanwhile, {' and '.join(spans)}."
        return said

    @admin.display(description="History")
    def history_table(self, obj):
        kinds = {step_id: step.get("type") for step_id, step in obj.version.step_map().items()}
        rows = (
            (step, _history_time(at), _history_outcome(outcome, kinds.get(step)))
            for step, at, outcome in obj.history or []
        )
        return format_html(
            '<table class="enrollment-history"><tr><th>step</th><th>at</th><th>outcome</th></tr>{}</table>',
            format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td></tr>", rows),
        )


def _enrollments_title(request) -> str:
    """ "Enrollments of journey “X”, version N[, at step 'S']" for a list of one version's enrollments
    (``?version__id__exact=``, ``&step=``) of a journey the user may see; "" otherwise."""
    version_id = row_id(JourneyVersion, request.GET.get("version__id__exact", ""))
    if version_id is None:
        return ""
    version = (
        JourneyVersion.objects.select_related("journey")
        .filter(pk=version_id, journey__in=journeys_visible_to(request.user).values("pk"))
        .first()
    )
    if version is None:
        return ""
    title = f"Enrollments of journey “{version.journey}”, version {version.number}"
    step = request.GET.get("step")
    return f"{title}, at step '{step}'" if step in version.step_map() else title


_HISTORY_WORDS = {
    "waiting": "waiting",
    "waited": "waited",
    "passed": "went on (its wait was over)",
    "failed": "failed (see the exit reason)",
    "exit": "exited",
}


def _history_outcome(outcome: str, step_type: str | None = None):
    """A history step's outcome in words: the branch taken by its label (a condition's "else" as
    "all others"; a split may label a branch "else" itself), a push with a link to its send; the
    stored codes (``branch:else``, ``pushed:12``) are the engine's."""
    kind, _, rest = str(outcome).partition(":")
    if kind == "branch" and rest:
        return f"took “{ELSE_LABEL if rest == 'else' and step_type != 'split' else rest}”"
    if kind == "pushed" and rest.isdigit():
        return format_html(
            '<a href="{}">push sent (send #{})</a>', reverse("admin:delivery_dispatch_change", args=[rest]), rest
        )
    return _HISTORY_WORDS.get(outcome, outcome)


def _history_first_time(history) -> dt.datetime | None:
    """When the first step of a history ran, or None (no step yet, or a time not read)."""
    try:
        ran = dt.datetime.fromisoformat(history[0][1])
    except (TypeError, ValueError, IndexError, KeyError):
        return None
    return ran if ran.tzinfo is not None else ran.replace(tzinfo=dt.UTC)


def _history_time(stamp: str) -> str:
    """A history step's time (stored as ISO text) as the journey's other times show: in UTC, named."""
    try:
        return zoned(dt.datetime.fromisoformat(stamp), JOURNEY_ZONE)
    except (TypeError, ValueError):
        return str(stamp)
