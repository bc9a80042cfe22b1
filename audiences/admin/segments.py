"""The admin of segments, with the rule builder and its preview."""

from __future__ import annotations

import contextlib
import contextvars
import json
from datetime import datetime

from django import forms
from django.apps import apps as django_apps
from django.contrib import admin, messages
from django.core.exceptions import NON_FIELD_ERRORS, PermissionDenied, ValidationError
from django.db import router, transaction
from django.db.models import ProtectedError
from django.http import Http404, HttpResponseNotAllowed, JsonResponse
from django.shortcuts import redirect
from django.template.defaultfilters import pluralize
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.timesince import timesince

from accounts.admin.bases import (
    ObjectAccessAdminMixin,
    ScopedAdmin,
    asks_again,
    deleted_objects_counted,
    page_request,
    row_id,
    senders_html,
)
from accounts.json_values import JsonValueFormField, json_parse, json_value_check
from accounts.selectors import approvals_outdated_said, approvals_reading, can, in_scope, visible_to
from audiences.models import Segment
from audiences.rules.schema import COLUMNS, OPERATOR_LABELS, OPERATORS, RELATIVE_UNITS, TYPES, RulesInvalid
from audiences.rules.validation import rules_validate, rules_validate_for
from audiences.rules.words import rule_error_place, rules_invalid_text
from audiences.selectors import (
    attribute_keys,
    event_names,
    event_property_keys,
    reach_apps_for,
    reach_of,
)
from audiences.services.segments import (
    segment_count_keep,
    segment_create,
    segment_delete,
    segment_holders,
    segment_members_change,
    segment_members_check,
    segment_preview,
    segment_update,
    segment_uses_described,
)
from config.db import deletion_counts
from config.labels import no_access


class RuleBuilderWidget(forms.Textarea):
    """A hidden JSON field plus the vanilla-JS builder that edits it (no JSON typing needed).

    The builder is fed by ``meta``: the columns, types and operators of the rule language, and
    the attribute names, event names, event properties, segments and apps seen in the data.
    ``error_paths`` are the JSON paths of the form's rule errors, whose messages say the place in
    words: the builder outlines the conditions they name.
    """

    template_name = "admin/audiences/rule_builder_widget.html"

    class Media:
        css = {"all": ["audiences/rule_builder.css"]}
        js = ["audiences/rule_builder.js"]

    def __init__(self, *args, meta: dict | None = None, preview_url: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self.meta = meta or {}
        self.preview_url = preview_url
        self.error_paths: list[str] = []

    def get_context(self, name, value, attrs):
        context = super().get_context(name, value, attrs)
        context["widget"]["meta_json"] = json.dumps(self.meta)
        context["widget"]["errors_json"] = json.dumps(self.error_paths)
        context["widget"]["preview_url"] = self.preview_url
        return context

    def format_value(self, value):
        if value is None or value == "":
            return ""
        if isinstance(value, str):
            return value
        return json.dumps(value)


def builder_meta(user, *, exclude_segment: int | None = None) -> dict:
    """What the rule builder offers: the segments and apps a rule of ``user``'s may name (``in_scope``)."""
    segments = in_scope(user, Segment.objects.order_by("name")).values("id", "name", "kind")[:500]
    try:
        app_model = django_apps.get_model("delivery", "App")
        app_list = list(in_scope(user, app_model.objects.all()).order_by("name").values("id", "name")[:200])
    except LookupError:
        app_list = []
    return {
        "columns": COLUMNS,
        "types": list(TYPES),
        "operators": OPERATORS,
        "labels": OPERATOR_LABELS,
        "units": list(RELATIVE_UNITS),
        "attributes": attribute_keys(),
        "events": event_names(),
        "properties": event_property_keys(),
        "segments": [s for s in segments if s["id"] != exclude_segment],
        "apps": app_list,
        "reachability": django_apps.is_installed("delivery") and _has_devices(),
    }


def builder_meta_name(meta: dict, rules, *, user) -> None:
    """Add to ``meta`` the segments and apps ``rules`` names that it does not offer (not granted to
    the reader, or past its first 500 and 200): the builder draws each condition with its own
    segment or app, where it showed the first one offered in its place. Each is named only to a
    reader who may see it (``visible_to``: an approver reads what the review they decide shows);
    to others it is "a segment you have no access to (#12)", its id kept, never its name. Saving
    the rules again may keep them; one named anew asks that its author may use it
    (``rules_validate_for``'s ``kept``)."""
    from accounts.selectors import visible_to
    from audiences.rules.schema import app_references, segment_references

    segments = segment_references(rules) - {s["id"] for s in meta["segments"]}
    if segments:
        named = {
            s["id"]: s for s in visible_to(user, Segment.objects.filter(pk__in=segments)).values("id", "name", "kind")
        }
        meta["segments"] += sorted(named.values(), key=lambda s: s["name"])
        known = set(Segment.objects.filter(pk__in=segments - set(named)).values_list("pk", flat=True))
        meta["segments"] += [{"id": pk, "name": no_access("segment", pk), "kind": ""} for pk in sorted(known)]
    apps = app_references(rules) - {a["id"] for a in meta["apps"]}
    if apps:
        app_model = django_apps.get_model("delivery", "App")
        named = {a["id"]: a for a in visible_to(user, app_model.objects.filter(pk__in=apps)).values("id", "name")}
        meta["apps"] += sorted(named.values(), key=lambda a: a["name"])
        known = set(app_model.objects.filter(pk__in=apps - set(named)).values_list("pk", flat=True))
        meta["apps"] += [{"id": pk, "name": no_access("app", pk)} for pk in sorted(known)]


def _has_devices() -> bool:
    from audiences.rules.schema import device_model

    return device_model() is not None


class SegmentForm(forms.ModelForm):
    rules = JsonValueFormField(required=False, widget=RuleBuilderWidget, help_text="Build the rules: no JSON needed.")
    add_members = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Static segments: external ids to add, one per line.",
    )
    remove_members = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Static segments: external ids to remove, one per line.",
    )

    class Meta:
        model = Segment
        fields = ("name", "description", "kind", "rules")

    def __init__(self, *args, user=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.user = user
        if "kind" in self.fields:  # imported segments come from imports, not from this form
            self.fields["kind"].choices = [
                c for c in Segment.Kind.choices if c[0] in (Segment.Kind.RULES, Segment.Kind.STATIC)
            ]

    def clean(self):
        data = super().clean()
        kind = data.get("kind") or (self.instance.kind if self.instance.pk else Segment.Kind.RULES)
        rules = data.get("rules")
        if kind == Segment.Kind.RULES:
            if not rules:
                self.add_error("rules", "Add at least one condition.")
            else:
                try:
                    if self.user is not None:
                        kept = self.instance.rules if self.instance.pk else None  # as saved: set after clean()
                        rules_validate_for(rules, by=self.user, segment_id=self.instance.pk, kept=kept)
                    else:
                        rules_validate(rules, segment_id=self.instance.pk)
                except RulesInvalid as exc:
                    self.add_error(
                        "rules",
                        [
                            ValidationError(f"{rule_error_place(rules, e.path)}: {e.message}", code=e.code)
                            for e in exc.errors
                        ],
                    )
                    self.fields["rules"].widget.error_paths = [e.path for e in exc.errors]
        else:
            data["rules"] = None
        if kind == Segment.Kind.STATIC:
            try:
                segment_members_check(
                    add=(data.get("add_members") or "").splitlines(),
                    remove=(data.get("remove_members") or "").splitlines(),
                )
            except ValidationError as exc:
                self.add_error(None, exc)
        return data


# The apps whose kept reach the current request's user may read (the list's columns take no request).
reach_app_ids: contextvars.ContextVar[frozenset] = contextvars.ContextVar("reach_app_ids", default=frozenset())
# Who reads the segment page: its rules in words name only the segments and apps they may see.
rules_reader: contextvars.ContextVar = contextvars.ContextVar("rules_reader", default=None)
# Whether the list's reader has its "Count reach now" action (a Viewer has not): only they are sent to it.
count_action_offered: contextvars.ContextVar[bool] = contextvars.ContextVar("count_action_offered", default=False)
# The segments of the list's page its reader may change: the action counts only those (one query a page).
count_changeable: contextvars.ContextVar[frozenset] = contextvars.ContextVar("count_changeable", default=frozenset())


@contextlib.contextmanager
def _reach_readable_by(user, *, counts: bool = False):
    token = reach_app_ids.set(frozenset(app.pk for app in reach_apps_for(user)))
    reader = rules_reader.set(user)
    offered = count_action_offered.set(counts)
    try:
        yield
    finally:
        count_action_offered.reset(offered)
        rules_reader.reset(reader)
        reach_app_ids.reset(token)


def _rendered(response):
    if hasattr(response, "render"):  # a template response renders after the view returns: render it now
        response.render()
    return response


def _age(counted_at: str | None) -> str:
    return f" (counted {timesince(datetime.fromisoformat(counted_at))} ago)" if counted_at else ""


COUNT_REACH_AT_ONCE = 20  # each count is a query per app: a page's worth keeps the request short


@admin.register(Segment)
class SegmentAdmin(ObjectAccessAdminMixin, ScopedAdmin):
    form = SegmentForm
    list_display = ("name", "kind", "reach", "counted", "updated_at")
    list_filter = ("kind",)
    search_fields = ("name",)
    readonly_fields = (
        "rules_in_words",
        "used_by",
        "members_summary",
        "reach",
        "reach_on_page",
        "last_counted_at",
        "object_access",
        "created_at",
        "updated_at",
    )
    actions = ["count_reach", "delete_segments"]

    def changelist_view(self, request, extra_context=None):
        offered = "count_reach" in self.get_actions(request)
        changeable = count_changeable.set(frozenset())
        try:
            with _reach_readable_by(request.user, counts=offered):
                return _rendered(super().changelist_view(request, extra_context))
        finally:
            count_changeable.reset(changeable)

    def get_changelist_instance(self, request):
        changelist = super().get_changelist_instance(request)
        if count_action_offered.get():
            # The action counts only the segments one may change (``segment_count_keep``): the
            # uncounted rows point to it only for those, a segment one may only view saying so.
            page = [segment.pk for segment in changelist.result_list if segment.last_count is None]
            if page:
                changeable = visible_to(
                    request.user, Segment.objects.filter(pk__in=page), perm="audiences.change_segment"
                )
                count_changeable.set(frozenset(changeable.values_list("pk", flat=True)))
        return changelist

    def change_view(self, request, object_id, form_url="", extra_context=None):
        with _reach_readable_by(request.user):
            return _rendered(super().change_view(request, object_id, form_url, extra_context))

    def _changeform_view(self, request, object_id, form_url, extra_context):
        # A save whose rules the form found valid and the service then refused: a segment they use
        # changed between the two (made to use this one, saved at the same moment). Its writes are
        # undone and the form is read again, its check reading the segments as they are now: the
        # page says why on the rules, as it does for rules refused by the form itself.
        try:
            with transaction.atomic(using=router.db_for_write(self.model)):
                return super()._changeform_view(request, object_id, form_url, extra_context)
        except RulesInvalid:
            pass
        try:
            return super()._changeform_view(request, object_id, form_url, extra_context)
        except RulesInvalid as exc:  # changed again meanwhile
            raise PermissionDenied("; ".join(exc.messages)) from exc

    @admin.display(description="Reach at the last count")
    def reach(self, obj):
        """Kept figures, never counted here: the profiles, then for each app the user sees the
        reachable (iOS / Android) and opted-in profiles, with the age of an app's figures counted
        apart from the profile count (by a colleague who sees other apps, or a campaign page)."""
        if obj is None or obj.last_count is None:
            if not count_action_offered.get() or (  # a reader without the action (a Viewer), as the page says it
                obj is not None and obj.pk not in count_changeable.get()  # or who may only view this one
            ):
                return "Not counted yet (whoever may change it can count it)."
            # Where a count is made: the Preview of a rules segment's page, the list's action.
            action = "select it in the segment list and run its “Count reach now” action."
            if obj is not None and obj.kind == Segment.Kind.RULES:
                return f"Not counted yet: press Preview under its rules, or {action}"
            return f"Not counted yet: {action}"
        readable = reach_app_ids.get()
        lines = [
            (figures["name"], reach_of(figures).text(), _age(figures.get("counted_at")))
            for figures in obj.last_reach or []
            if figures.get("app") in readable
        ]
        if not lines:
            return f"{obj.last_count:,} profile{pluralize(obj.last_count)}"
        return format_html_join("", '<div class="segment-reach"><strong>{}</strong>: {}{}</div>', lines)

    @admin.display(description="Counted", ordering="last_counted_at")
    def counted(self, obj):
        if obj.last_counted_at is None:
            return "—"
        return f"{timesince(obj.last_counted_at)} ago"

    @admin.display(description="Reach at the last count")
    def reach_on_page(self, obj):
        """``reach`` on the segment's page, with *Count now* for a reader who may change the segment
        (the count keeps its figures, which everyone reads, as the list's action does)."""
        reader = rules_reader.get()
        may_count = obj is not None and reader is not None and can(reader, "audiences.change_segment", obj)
        if obj is not None and obj.last_count is None:
            text = f"Not counted yet ({'Count now counts it' if may_count else 'whoever may change it can count it'})."
        else:
            text = self.reach(obj)
        if not may_count:
            return text
        button = format_html(
            ' <button type="submit" id="count-reach" class="button" formaction="{}" formnovalidate>Count now</button>',
            reverse("admin:audiences_segment_count", args=[obj.pk]),
        )
        return format_html('<span id="segment-reach">{}</span>{}', text, button)

    def count_view(self, request, object_id: int):
        """Count the segment now and keep its figures (POST, by those who may change it), as the
        list's "Count reach now" does for the segments selected."""
        segment = self.get_object(request, str(object_id))
        if segment is None or not self.has_view_permission(request, segment):
            raise Http404("No segment with this id.")  # as for any object outside one's access
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        try:
            segment_count_keep(segment_id=object_id, by=request.user)  # 403 without change access
        except RulesInvalid as exc:  # rules saved before a check existed: said where they break
            self.message_user(request, f"Not counted: {rules_invalid_text(segment.rules, exc.errors)}.", messages.ERROR)
        else:
            self.message_user(request, "Segment counted: its reach below is as it is now.", messages.SUCCESS)
        return redirect(reverse("admin:audiences_segment_change", args=[object_id]))

    def get_fieldsets(self, request, obj=None):
        main = ["name", "description", "kind"] if obj is None else ["name", "description"]
        sets = [(None, {"fields": main})]
        if obj is None or obj.kind == Segment.Kind.RULES:
            # Read-only, the builder is not drawn: the rules read in words above their JSON.
            read_only = obj is not None and not self.has_change_permission(request, obj)
            fields = ["rules_in_words", "rules"] if read_only else ["rules"]
            sets.append(("Rules", {"fields": fields, "classes": ["rules-fieldset"]}))
        if obj is not None and obj.has_members_table:
            fields = ["members_summary"]
            if obj.kind == Segment.Kind.STATIC:
                fields += ["add_members", "remove_members"]
            sets.append(("Members", {"fields": fields}))
        if obj is not None:
            sets.append(("Status", {"fields": ["reach_on_page", "last_counted_at", "created_at", "updated_at"]}))
            sets.append(("Sent to by", {"fields": ["used_by"]}))
            sets.append(("Access", {"fields": ["object_access"]}))
        return sets

    def get_form(self, request, obj=None, change=False, **kwargs):
        form_class = super().get_form(request, obj, change=change, **kwargs)
        preview_url = reverse("admin:audiences_segment_preview_rules")
        meta = builder_meta(request.user, exclude_segment=obj.pk if obj else None)
        if obj is not None and obj.rules:
            builder_meta_name(meta, obj.rules, user=request.user)
        user = request.user

        class BoundForm(form_class):
            def __init__(self, *args, **kw):
                kw["user"] = user
                super().__init__(*args, **kw)
                if "rules" in self.fields:
                    self.fields["rules"].widget = RuleBuilderWidget(meta=meta, preview_url=preview_url)

        return BoundForm

    def get_readonly_fields(self, request, obj=None):
        return self.readonly_fields

    @admin.display(description="In words")
    def rules_in_words(self, obj):
        """The rules as a sentence, naming the segments and apps they use that the reader may see
        ("segment #12", "app #3" for the others, as the builder keeps their names from them)."""
        if obj is None or not obj.rules:
            return "—"
        from audiences.rules.schema import app_references, segment_references
        from audiences.rules.words import names_visible_to, rules_text

        segment_names, app_names = names_visible_to(
            rules_reader.get(), segments=segment_references(obj.rules), apps=app_references(obj.rules)
        )
        text = rules_text(obj.rules, segment_names=segment_names, app_names=app_names)
        return format_html('<span id="segment-rules-in-words">{}</span>', text)

    @admin.display(description="Used by")
    def used_by(self, obj):
        """What still to send reads this segment (a campaign's audience, a journey's entry or
        conditions), directly or through the segments using it, as the reader may be told, and
        what an edit of it does to them: each waits for a new approval before it sends to it again."""
        from audiences.services.segments import segment_senders, segments_using

        request = page_request()
        by = request.user if request is not None else None
        using = segments_using(obj.pk)
        through = ""
        if using:
            users = Segment.objects.filter(pk__in=using)
            seen = list(
                (users if by is None else visible_to(by, users)).order_by("name").values_list("name", flat=True)
            )
            hidden = len(using) - len(seen)
            names = [f"“{name}”" for name in seen] + ([f"{hidden} you cannot see"] if hidden else [])
            through = f"Also through the segments using it: {', '.join(names)}."
        return senders_html(
            "segment-used-by",
            segment_senders(obj.pk, by=by, using=using),
            none="Nothing still to send sends to it.",
            edit="An edit of its rules or members needs a new approval of each before it sends to this segment "
            "again (a renaming does not): until then, its sends to it are refused.",
            more=through,
        )

    @admin.display(description="Members")
    def members_summary(self, obj):
        if obj is None or not obj.pk:
            return "—"
        count = obj.members.count()
        return f"{count:,} profile{pluralize(count)}"

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        # The requests waiting that approve this segment as it was: a save changing it outdates them.
        reading = approvals_reading(obj) if change else []
        try:
            if change:
                saved = segment_update(
                    segment_id=obj.pk,
                    by=request.user,
                    name=data["name"],
                    description=data.get("description", ""),
                    **({"rules": data["rules"]} if obj.kind == Segment.Kind.RULES else {}),
                )
                if obj.kind == Segment.Kind.STATIC and (data.get("add_members") or data.get("remove_members")):
                    added, removed, unknown = segment_members_change(
                        segment_id=obj.pk,
                        by=request.user,
                        add=(data.get("add_members") or "").splitlines(),
                        remove=(data.get("remove_members") or "").splitlines(),
                    )
                    self.message_user(
                        request, f"{added} member{pluralize(added)} added, {removed} removed.", messages.SUCCESS
                    )
                    if unknown:
                        shown = ", ".join(unknown[:10]) + ("…" if len(unknown) > 10 else "")
                        self.message_user(request, f"Unknown external ids: {shown}", messages.WARNING)
            else:
                saved = segment_create(
                    name=data["name"],
                    description=data.get("description", ""),
                    kind=data.get("kind") or Segment.Kind.RULES,
                    rules=data.get("rules"),
                    by=request.user,
                )
        except RulesInvalid:
            raise  # said on the form (``_changeform_view``)
        except ValidationError as exc:
            raise PermissionDenied("; ".join(exc.messages)) from exc
        obj.pk = saved.pk
        obj.refresh_from_db()
        if outdated := approvals_outdated_said(request.user, reading, what="this segment"):
            self.message_user(request, outdated, messages.WARNING)

    def save_related(self, request, form, formsets, change):
        pass  # the service saved everything

    def delete_model(self, request, obj):
        segment_delete(segment_id=obj.pk, by=request.user)

    def get_deleted_objects(self, objs, request):
        """The confirmation counts what goes with the segment (its members...) instead of listing
        each: Django's own listing loads every member of a static segment. What keeps it is told
        as its deletion tells it (``segment_uses_described``): a campaign or journey the reader
        may not see, without its name or link."""
        objs = list(objs)
        listed, counts, perms_needed, protected = deleted_objects_counted(self, request, objs)
        if protected:
            try:
                deletion_counts(objs)
            except ProtectedError as exc:
                protected = segment_uses_described(objects=exc.protected_objects, by=request.user)
        # Journeys' conditions name segments in their graphs, which no foreign key protects.
        return listed, counts, perms_needed, [*protected, *segment_holders([o.pk for o in objs], by=request.user)]

    def delete_view(self, request, object_id, extra_context=None):
        try:
            return super().delete_view(request, object_id, extra_context)
        except ValidationError as exc:
            self.message_user(request, " ".join(exc.messages), messages.ERROR)
            return redirect(reverse("admin:audiences_segment_change", args=[object_id]))

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    @admin.action(description="Count reach now", permissions=["change"])
    def count_reach(self, request, queryset):
        """Count the selected segments (at most COUNT_REACH_AT_ONCE) and keep their reach for the list;
        those the user may only view are refused, as an edit of them is."""
        chosen = list(queryset.order_by("pk")[: COUNT_REACH_AT_ONCE + 1])
        counted, refused = 0, []
        for segment in chosen[:COUNT_REACH_AT_ONCE]:
            try:
                segment_count_keep(segment_id=segment.pk, by=request.user)
                counted += 1
            except (PermissionDenied, Http404):
                refused.append(segment.name)
            except RulesInvalid as exc:  # rules saved before a check existed: said where they break
                text = rules_invalid_text(segment.rules, exc.errors)
                self.message_user(request, f"{segment.name} not counted: {text}.", messages.ERROR)
        if counted:
            self.message_user(request, f"{counted} segment{pluralize(counted)} counted.", messages.SUCCESS)
        if refused:
            self.message_user(
                request, f"Not counted, as you may not change them: {', '.join(refused)}.", messages.ERROR
            )
        if len(chosen) > COUNT_REACH_AT_ONCE:
            self.message_user(
                request, f"At most {COUNT_REACH_AT_ONCE} segments are counted at once: select fewer.", messages.WARNING
            )

    @admin.action(description="Delete selected segments", permissions=["delete"])
    @asks_again(
        verb="Delete",
        consequences=[
            "Their rules and members go with them (the profiles stay). One that another segment, a campaign "
            "or a journey uses is not deleted: each is named."
        ],
    )
    def delete_segments(self, request, queryset):
        deleted = 0
        for segment in queryset:
            try:
                segment_delete(segment_id=segment.pk, by=request.user)
                deleted += 1
            except (ValidationError, PermissionDenied) as exc:
                self.message_user(
                    request, f"{segment}: {' '.join(getattr(exc, 'messages', [str(exc)]))}", messages.ERROR
                )
        if deleted:
            self.message_user(request, f"{deleted} segment{pluralize(deleted)} deleted.", messages.SUCCESS)

    def get_urls(self):
        return [
            path(
                "preview/",
                self.admin_site.admin_view(self.preview_view),
                name="audiences_segment_preview_rules",
            ),
            path(
                "<int:object_id>/count/",
                self.admin_site.admin_view(self.count_view),
                name="audiences_segment_count",
            ),
            path(
                "<int:object_id>/preview/",
                self.admin_site.admin_view(self.preview_view),
                name="audiences_segment_preview",
            ),
            *super().get_urls(),
        ]

    def preview_view(self, request, object_id: int | None = None):
        """JSON: the count and 20 sample profiles of a saved segment (GET) or of the tree being edited (POST).

        A GET writes nothing; the segment page's POST keeps the figures of a saved segment counted
        from its saved rules when the user may change it (``segment_preview``'s ``keep``).
        """
        if not self.has_view_permission(request):
            if object_id is not None:
                raise Http404("No segment with this id.")  # as for any object outside one's access
            raise PermissionDenied
        rules = None
        segment_id = object_id
        if request.method == "POST":
            try:
                body = json_parse(request.body.decode("utf-8") or "{}", unique_keys=True)
                json_value_check(body.get("rules") if isinstance(body, dict) else None, field="rules")
            except ValidationError as exc:
                errors = [
                    {"path": "" if path == NON_FIELD_ERRORS else path, "message": m}
                    for path, ms in exc.message_dict.items()
                    for m in ms
                ]
                return JsonResponse({"errors": errors}, status=400)
            except ValueError:
                return JsonResponse({"errors": [{"path": "", "message": "The request is not JSON."}]}, status=400)
            if not isinstance(body, dict):
                return JsonResponse({"errors": [{"path": "", "message": "Send a JSON object."}]}, status=400)
            rules = body.get("rules")
            asked = body.get("segment") or object_id
            segment_id = None  # not an id (a float, a word, true): the posted rules are previewed
            if (isinstance(asked, int) and not isinstance(asked, bool)) or (isinstance(asked, str) and asked.isdigit()):
                # Digits int() cannot read ("²", or more than it reads) name no row, as ids past any row's.
                segment_id = row_id(Segment, asked)
                if segment_id is None:
                    raise Http404("No segment with this id.")
        try:
            preview = segment_preview(
                by=request.user, segment_id=segment_id, rules=rules, keep=request.method == "POST"
            )
        except RulesInvalid as exc:
            if rules is None:  # a saved segment's: its errors are about its saved rules
                rules = Segment.objects.filter(pk=segment_id).values_list("rules", flat=True).first()
            errors = [
                {"path": e.path, "place": rule_error_place(rules, e.path), "code": e.code, "message": e.message}
                for e in exc.errors
            ]
            return JsonResponse({"errors": errors}, status=400)
        sample = [
            {
                "external_id": p.external_id,
                "url": reverse("admin:audiences_profile_change", args=[p.pk]),
                "locale": p.locale,
                "attributes": dict(sorted((p.attributes or {}).items())[:20]),
            }
            for p in preview.sample
        ]
        reach = [{"app": figures["name"], "text": reach_of(figures).text()} for figures in preview.reach]
        return JsonResponse(
            {
                "count": preview.count,
                "took_ms": preview.took_ms,
                "sample": sample,
                "reach": reach,
                "unread": preview.unread,
            }
        )
