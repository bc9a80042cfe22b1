"""The admin bases every app uses: scoped (object access), big-table, the access page, a status
filter and a filter by how long ago."""

import contextvars
import datetime as dt
import functools
import re
from collections.abc import Sequence

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.utils import NotRelationField, get_fields_from_path, quote
from django.contrib.admin.views.main import IGNORED_PARAMS, ChangeList
from django.contrib.auth.models import Group
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import FieldDoesNotExist, PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.db import connection, models, transaction
from django.db.models.constants import LOOKUP_SEP
from django.db.models.deletion import ProtectedError, RestrictedError
from django.http import Http404, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.utils.text import capfirst

from accounts.form_tokens import (
    FORM_TOKEN_FIELD,
    FormTokenRefused,
    FormTokenUsed,
    form_token_issue,
    form_token_subject,
    form_token_use,
)
from accounts.json_values import JsonValueFormField
from accounts.middleware import UNREADABLE_PART
from accounts.models import User
from accounts.selectors import (
    access_key,
    can,
    grants_on,
    has_every_scope,
    visible_to,
)
from accounts.services import (
    access_grant,
    access_revoke,
    audit,
    audited_objects,
)
from config import digits
from config.db import ROW_IDS, deletion_counts
from config.digits import ascii_int, digits_plain
from config.labels import no_access, numbered


def page_answers(request) -> dict | None:
    """Where a page that only reads keeps its answers of ``can`` (None for a request that writes:
    each of its checks reads the access as it stands)."""
    if request is None or request.method not in ("GET", "HEAD"):
        return None
    return request.__dict__.setdefault("_pushdesk_can", {})


class _KeptChoiceIterator(forms.models.ModelChoiceIterator):
    """The field's objects read in one plain query, the first time a copy of the field needs them."""

    def _objects(self) -> list:
        kept = self.field._kept_objects
        if kept[0] is None:
            queryset = self.queryset
            if self.field.label_fields:
                queryset = queryset.select_related(None).only(*self.field.label_fields)
            if self.field.reader is not None:
                queryset = with_reader_sees(queryset, self.field.reader)
            kept[0] = list(queryset)
        return kept[0]

    def __iter__(self):
        if self.field.empty_label is not None:
            yield ("", self.field.empty_label)
        for obj in self._objects():
            yield self.choice(obj)

    def __len__(self):
        return len(self._objects()) + (1 if self.field.empty_label is not None else 0)

    def __bool__(self):
        return self.field.empty_label is not None or bool(self._objects())


class KeptChoiceField(digits.ModelChoiceField):
    """A select of objects whose choices are read once per form class: every form of a formset
    (each inline row and the empty row) shows the list the first one read, instead of one query
    each, and in one round trip rather than through a server-side cursor. ``label_fields``: the
    fields the labels show, the only ones read for the list. Choosing is checked against the
    queryset as usual (the chosen object is read whole)."""

    iterator = _KeptChoiceIterator
    # Set to the form's user when it keeps choices they may not see (a colleague's references):
    # those are offered by number, never by name (``unseen_label``), read with the list.
    reader = None

    def __init__(self, queryset, *, label_fields: tuple[str, ...] = (), **kwargs):
        self.label_fields = label_fields
        super().__init__(queryset, **kwargs)

    def _set_queryset(self, queryset):
        self._kept_objects = [None]  # a new queryset: read again
        super()._set_queryset(queryset)

    queryset = property(forms.ModelChoiceField._get_queryset, _set_queryset)

    def __deepcopy__(self, memo):
        result = super().__deepcopy__(memo)
        result._kept_objects = self._kept_objects  # the copy's queryset is the same query
        return result

    def label_from_instance(self, obj):
        if not getattr(obj, "reader_sees", True):
            return unseen_label(obj)
        return super().label_from_instance(obj)


def unseen_label(obj) -> str:
    """How a choice kept for a reader who may not see it is offered: "a segment you have no access
    to (#12)", as a rule's segment is in the rule builder."""
    return no_access(obj._meta.verbose_name, obj.pk)


def with_reader_sees(
    queryset: models.QuerySet, reader, *, field: str = "pk", model=None, name: str = "reader_sees"
) -> models.QuerySet:
    """``queryset`` with ``name`` (``reader_sees``) on each row, in the same query: whether
    ``reader`` may see it (``visible_to``), or the object of ``model`` its ``field`` names, for a
    list that keeps a colleague's references (or one's own, to what one no longer sees) to name
    only those; a campaign's app, say, as ``app_seen``."""
    seen = visible_to(reader, (model or queryset.model)._default_manager.all()).values("pk")
    return queryset.annotate(
        **{name: models.ExpressionWrapper(models.Q(**{f"{field}__in": seen}), output_field=models.BooleanField())}
    )


def linked_if_visible(request, obj) -> str:
    """``obj`` named and linked to its admin page only when ``request``'s user may open that page;
    "segment #12" to anyone else, as a segment's rules say what their reader may not see.

    Django links a read-only foreign key whatever the reader's access: a Viewer of a campaign was
    led to its segment's page, which answers 404 outside the segment's access, and told its name.
    """
    if obj is None:
        return "—"
    model_admin = admin.site._registry.get(type(obj))
    if model_admin is None or not model_admin.has_view_or_change_permission(request, obj):
        return numbered(obj._meta.verbose_name, obj.pk)
    opts = obj._meta
    url = reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[quote(obj.pk)])
    return format_html('<a href="{}">{}</a>', url, obj)


class EstimatedCountPaginator(Paginator):
    """Never counts a big table: the planner's estimate for the unfiltered list, a capped count otherwise."""

    cap = 10_000

    @cached_property
    def count(self):
        qs = self.object_list
        if connection.vendor == "postgresql" and not qs.query.where:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass", [qs.model._meta.db_table]
                )
                row = cursor.fetchone()
            if row and row[0] and row[0] > self.cap:
                return int(row[0])
        return qs[: self.cap + 1].count()


class VisibleRelatedFilter(admin.RelatedOnlyFieldListFilter):
    """A filter on a relation that offers only what the user may see: for objects under access
    control (apps, segments...) those in the user's access, for others (owners, actors...) those
    of the rows in the user's list."""

    def field_choices(self, field, request, model_admin):
        related = field.related_model
        queryset = related._default_manager.all()
        if isinstance(admin.site._registry.get(related), ScopedAdmin):
            queryset = visible_to(request.user, queryset)
        else:
            queryset = queryset.filter(pk__in=model_admin.get_queryset(request).values(f"{self.field_path}__pk"))
        ordering = self.field_admin_ordering(field, request, model_admin)
        return [(obj.pk, str(obj)) for obj in queryset.order_by(*ordering)]


class AdminAuditMixin:
    """Every write done through the admin (add, change, delete, list edits, delete action) leaves
    an audit event: the admin's own log calls are collected during the view, and those whose object
    no service audited in the same view are audited at its end (``<model>_added``/``_changed``/``_deleted``)."""

    def _audited_view(self, view, request, *args, **kwargs):
        seen, pending = set(), []
        token = audited_objects.set(seen)
        request._admin_audit_pending = pending
        try:
            response = view(request, *args, **kwargs)
        finally:
            audited_objects.reset(token)
        actor = request.user if request.user.is_authenticated else None
        for obj, verb, pk in pending:
            content_type = ContentType.objects.get_for_model(obj, for_concrete_model=False)
            if (content_type.pk, str(pk)) in seen:
                continue
            if obj.pk is None:
                obj.pk = pk  # a deleted object: its event still names it
            audit(actor=actor, action=f"{obj._meta.model_name}_{verb}", obj=obj, summary={"through": "admin"})
        return response

    def _admin_audit_later(self, request, obj, verb):
        pending = getattr(request, "_admin_audit_pending", None)
        if pending is not None:
            pending.append((obj, verb, obj.pk))

    def changeform_view(self, request, *args, **kwargs):
        return self._audited_view(super().changeform_view, request, *args, **kwargs)

    def delete_view(self, request, *args, **kwargs):
        return self._audited_view(super().delete_view, request, *args, **kwargs)

    def changelist_view(self, request, *args, **kwargs):
        return self._audited_view(super().changelist_view, request, *args, **kwargs)

    def log_addition(self, request, obj, message):
        self._admin_audit_later(request, obj, "added")
        return super().log_addition(request, obj, message)

    def log_change(self, request, obj, message):
        self._admin_audit_later(request, obj, "changed")
        return super().log_change(request, obj, message)

    def log_deletions(self, request, queryset):
        for obj in queryset:
            self._admin_audit_later(request, obj, "deleted")
        return super().log_deletions(request, queryset)


def _reads_text(model, lookup: str) -> bool:
    """Whether a list's query-string ``lookup`` compares text (a text or JSON column, or no column
    at all): any other compares a number, an id or a time."""
    opts, field = model._meta, None
    for name in lookup.split(LOOKUP_SEP):
        try:
            field = opts.get_field(name)
        except FieldDoesNotExist:
            break  # a lookup (``__gte``) or a transform (``__date``) of the field before it
        if field.is_relation and field.related_model is not None:
            opts = field.related_model._meta  # a relation compares its target's id
    return field is None or isinstance(field, models.CharField | models.TextField | models.JSONField)


class BoundedDateChangeList(ChangeList):
    """A change list whose date hierarchy refuses a day it cannot step past (a year outside 1 to
    9998, or one too long to be a number) as it refuses an unknown filter (``?e=1``): Django
    builds the next year or month from it unchecked, and the overflow answered 500. A number, an
    id or a time written with digits of another script, or with an underscore, is refused alike
    (``config.digits``): Django reads "١" and "0_1" as the id 1 and "١٩٧٠-01-01" as a day."""

    def get_filters(self, request):
        for lookup, value in self.params.items():
            if not digits_plain(value) and lookup not in IGNORED_PARAMS and not _reads_text(self.model, lookup):
                raise IncorrectLookupParameters(f"No number or time {value[:20]}.")
        if self.date_hierarchy:
            # (part, its most digits, its highest value): Django checks the rest of the date.
            for part, digits, highest in (("year", 4, 9998), ("month", 2, 99), ("day", 2, 99)):
                value = self.params.get(f"{self.date_hierarchy}__{part}")
                # isascii(): "²" is a digit to isdigit(), not to int().
                plain = value is not None and value.isascii() and value.isdigit()
                if value is not None and not (plain and len(value) <= digits and 1 <= int(value) <= highest):
                    raise IncorrectLookupParameters(f"No {part} {value[:20]} in the calendar.")
        return super().get_filters(request)

    def get_ordering_field(self, field_name):
        # Django sorts by any column named in ``?o=``, sortable or not: only the sortable ones sort.
        if self.sortable_by is not None and field_name not in self.sortable_by:
            return None
        return super().get_ordering_field(field_name)


def row_id(model, value):
    """``value`` (from a form) as the id of one of ``model``'s rows, or None when it cannot be one:
    not a number (digits of another script or an underscore included, ``config.digits``), or past the ids a row can
    have (``ROW_IDS``; SQLite cannot bind such a number)."""
    if not digits_plain(value):
        return None
    try:
        pk = model._meta.pk.to_python(value)
    except ValidationError:
        return None
    return None if pk is None or (isinstance(pk, int) and pk not in ROW_IDS) else pk


class RowsChoiceField(forms.ModelMultipleChoiceField):
    """A many-to-many field whose values past any row's id are an invalid choice, as on PostgreSQL,
    instead of an OverflowError from SQLite's list of ids (a 500)."""

    def _check_values(self, value):
        if not self.to_field_name and isinstance(value, list | tuple):
            for item in value:
                try:
                    number = ascii_int(item) if isinstance(item, str) else int(item)
                except (TypeError, ValueError):
                    if not digits_plain(item):  # Django's own check reads "١" as 1
                        raise ValidationError(
                            self.error_messages["invalid_choice"], code="invalid_choice", params={"value": item}
                        ) from None
                    continue  # not a number at all: Django's own check words it
                if number not in ROW_IDS:
                    raise ValidationError(
                        self.error_messages["invalid_choice"], code="invalid_choice", params={"value": item}
                    )
        return super()._check_values(value)


class ReadOnlyAdminMixin:
    """A record nobody adds, changes or deletes through the admin (an audit trail, outcomes): its
    pages read only, whatever the role."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


# The lookups and transforms a list's query string may not use (``BoundedLookupsMixin``).
REFUSED_LOOKUPS = frozenset({"regex", "iregex", "range", "year", "iso_year"})


class BoundedLookupsMixin:
    """An admin whose list refuses the query-string lookups of ``REFUSED_LOOKUPS``, and those on its
    ``withheld_fields`` to whoever is not told them (by default, whoever does not see every object)."""

    # The fields whose value a page says only to a reader who may see what it names (a subject's
    # name kept on a row, say): Django's list takes a lookup on any field in its address, and
    # asked letter by letter (``?name__startswith=S``), it would spell the value out.
    withheld_fields: tuple[str, ...] = ()
    # The list's columns that say such a value (or a name) only to whoever may see it: sorted by
    # them, the list would place a row among the reader's own by what it withholds.
    withheld_columns: tuple[str, ...] = ()

    def reads_withheld(self, request) -> bool:
        """Whether the reader is told what ``withheld_fields`` and ``withheld_columns`` hold:
        whoever sees every object, unless a list says otherwise."""
        return has_every_scope(request.user)

    def get_sortable_by(self, request):
        sortable = super().get_sortable_by(request)
        if self.withheld_columns and not self.reads_withheld(request):
            return [column for column in sortable if column not in self.withheld_columns]
        return sortable

    def lookup_allowed(self, lookup, value, request=None):
        """Refuse (400) a query-string lookup that no filter of the list makes and that fails as the
        list is read rather than as Django builds its filter (which it refuses with ``?e=1``): a
        regular expression the database cannot compile, or one that backtracks for minutes; a range
        that is not two values; a year outside the calendar. The date hierarchy's own year, month
        and day are checked by ``BoundedDateChangeList``. A lookup on one of ``withheld_fields`` is
        refused to whoever is not told them (``reads_withheld``)."""
        if lookup.split(LOOKUP_SEP, 1)[0] in self.withheld_fields and (
            request is None or not self.reads_withheld(request)
        ):
            return False
        if self.date_hierarchy and lookup in {f"{self.date_hierarchy}__{part}" for part in ("year", "month", "day")}:
            return super().lookup_allowed(lookup, value, request)
        if REFUSED_LOOKUPS.intersection(lookup.split(LOOKUP_SEP)[1:]):
            return False
        return super().lookup_allowed(lookup, value, request)


UNREADABLE_TEXT = (
    "Holds bytes that are not UTF-8 (or U+FFFD, the sign that stands for them), which would be saved as "
    "that sign: send the text in UTF-8."
)


class ReadableTextForm:
    """A form mixin refusing, under its field, a text value holding U+FFFD: what Django reads bytes
    that are not UTF-8 as, in a urlencoded or a multipart body alike (its 'replace' handler), which
    the form would otherwise save in place of what was sent. The API refuses them as its parsers
    read the body (``accounts.parsers``). A split widget's parts (``schedule_0``) count as its
    field's. Only a changed value is checked: text that really holds U+FFFD, saved before the rule
    or through a path that takes it, passes as long as it is sent back as it is kept. A part Django
    left out, its header not UTF-8 (``unreadable_parts``: a file whose name is not), is said so
    under its field, in place of "No file was submitted"."""

    unreadable_parts: Sequence[str] = ()

    def full_clean(self):
        super().full_clean()
        if not self.is_bound or not hasattr(self, "cleaned_data"):
            return
        getlist = getattr(self.data, "getlist", None)
        unsaid = set(self.unreadable_parts)
        changed = set(self.changed_data)
        for name in list(self.fields):
            key = self.add_prefix(name)
            parts = re.compile(rf"{re.escape(key)}(?:_\d+)?")
            if key in unsaid:
                unsaid.discard(key)
                self._errors.pop(name, None)  # "This field is required": it was sent, unread
                self.add_error(name, UNREADABLE_PART)
                continue
            if name not in changed:
                continue
            for sent in self.data:
                values = getlist(sent) if getlist else [self.data[sent]]
                if parts.fullmatch(sent) and any(isinstance(v, str) and "\ufffd" in v for v in values):
                    self.add_error(name, UNREADABLE_TEXT)
                    break


class AccessAdmin(BoundedLookupsMixin, AdminAuditMixin, admin.ModelAdmin):
    """An admin whose object pages answer 404 for an object outside ``get_queryset``, before any permission check.

    Django checks the role's permission first, so a user without it got 403 for an object that
    exists and a redirect for one that does not; here both answer 404 and tell nothing. Its JSON
    fields pass the JSON value check (``accounts.json_values``). Its list filters on a relation
    offer only the related objects the user may see (``VisibleRelatedFilter``).
    """

    def object_named(self, obj) -> str:
        """How a list action names one of the objects it acts on, in its question
        (``action_asked_again``) and its messages: as the object names itself. An admin whose
        objects' names tell what some of their readers may not see names them otherwise."""
        return str(obj)

    # Numbers, times and choices typed in digits of another script are refused (``config.digits``).
    formfield_overrides = {
        models.JSONField: {"form_class": JsonValueFormField},
        models.IntegerField: {"form_class": digits.IntegerField},
        models.DecimalField: {"form_class": digits.DecimalField},
        models.FloatField: {"form_class": digits.FloatField},
        models.DateField: {"form_class": digits.DateField},
        models.DateTimeField: {"form_class": digits.SplitDateTimeField},
        models.TimeField: {"form_class": digits.TimeField},
        models.DurationField: {"form_class": digits.DurationField},
        models.ForeignKey: {"form_class": digits.ModelChoiceField},
        models.OneToOneField: {"form_class": digits.ModelChoiceField},
    }
    # What an empty list says besides "0 …": where its rows come from (templates/admin/change_list.html).
    empty_hint = ""

    def get_changelist(self, request, **kwargs):
        return BoundedDateChangeList

    def get_form(self, request, obj=None, change=False, **kwargs):
        return self.form_reading_text(request, super().get_form(request, obj, change=change, **kwargs))

    def form_reading_text(self, request, form: type[forms.BaseForm]) -> type[forms.BaseForm]:
        """``form``, refusing text Django read from bytes that are not UTF-8 (``ReadableTextForm``):
        every page's form goes through it, one an admin builds apart from ``get_form`` too."""
        # The parts Django leaves out of the body for headers that are not UTF-8
        # (``UnreadablePartsMiddleware``): the list itself, filled as the body is read.
        attrs = {"__module__": form.__module__, "unreadable_parts": getattr(request, "unreadable_parts", ())}
        return type(form.__name__, (ReadableTextForm, form), attrs)

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        # Django's note counts the fields in error, not the errors: two errors on one field (two
        # reserved data keys, two faults in a journey's steps) read "Please correct the error
        # below."; counted one by one, they read "Please correct the errors below.", as two
        # fields' do.
        if context.get("errors"):
            context["errors"] = [
                message
                for field in context["errors"]  # a field's ErrorList, or a formset's own error (a string)
                for message in ([field] if isinstance(field, str) else field)
            ]
        return super().render_change_form(request, context, add, change, form_url, obj)

    def response_action(self, request, queryset):
        """An action's selection is ids: one that is not (a forged POST) is refused with a message,
        as an empty selection is, before Django filters by it (a ValueError, a 500)."""
        selected = request.POST.getlist(helpers.ACTION_CHECKBOX_NAME)
        if any(row_id(self.model, value) is None for value in selected):
            self.message_user(request, "Items are selected by their ids: nothing was done.", messages.WARNING)
            return HttpResponseRedirect(request.get_full_path())
        return super().response_action(request, queryset)

    def formfield_for_manytomany(self, db_field, request, **kwargs):
        kwargs.setdefault("form_class", RowsChoiceField)
        return super().formfield_for_manytomany(db_field, request, **kwargs)

    def get_list_filter(self, request):
        filters = []
        for spec in super().get_list_filter(request):
            name, kind = (spec, None) if isinstance(spec, str) else (spec if isinstance(spec, tuple) else (None, spec))
            if name and kind in (None, admin.RelatedFieldListFilter, admin.RelatedOnlyFieldListFilter):
                try:
                    field = get_fields_from_path(self.model, name)[-1]
                except (FieldDoesNotExist, NotRelationField):
                    field = None
                if field is not None and field.is_relation and field.related_model is not Group:
                    spec = (name, VisibleRelatedFilter)
            filters.append(spec)
        return filters

    def get_object(self, request, object_id, from_field=None):
        # A role that may not even view this kind of object learns nothing about which ids exist.
        if not self.has_view_or_change_permission(request) or not digits_plain(object_id):
            # An id in another script's digits names no row (Django's pk field reads "١" as 1).
            raise Http404(f"No {self.model._meta.verbose_name} with this id.")
        if request.method in ("GET", "HEAD"):
            # A page that only reads loads its object once, however many of its parts ask for it.
            loaded = request.__dict__.setdefault("_pushdesk_objects", {})
            key = (self.model._meta.label_lower, str(object_id), from_field)
            if key not in loaded:
                loaded[key] = super().get_object(request, object_id, from_field)
            obj = loaded[key]
        else:
            obj = super().get_object(request, object_id, from_field)
        if obj is None:
            raise Http404(f"No {self.model._meta.verbose_name} with this id.")
        return obj

    def _get_obj_does_not_exist_redirect(self, request, opts, object_id):
        raise Http404(f"No {opts.verbose_name} with this id.")


ASKED_LISTED = 20  # the objects a list action's question names; the rest are counted


def action_asked_again(
    model_admin: admin.ModelAdmin,
    request,
    queryset,
    *,
    action: str,
    verb: str,
    consequences: list[str],
    form_token: str = "",
    refused: str = "",
) -> TemplateResponse | None:
    """The page a list action that cannot be undone shows before it acts (as Django's own delete
    does): the objects chosen (the first ``ASKED_LISTED``, named by the admin's ``object_named``, the
    rest counted), what it will do, and a
    Yes posting the same choice back with Django's ``post`` answer, and ``form_token`` when given.
    None once that answer is posted (unless the page says why the answer was ``refused``), or when
    none of the chosen objects is within the reader's queryset (the action then has nothing to do)."""
    if request.POST.get("post") == "yes" and not refused:
        return None
    shown = list(queryset.order_by("-pk")[: ASKED_LISTED + 1])
    if not shown:
        return None
    count = len(shown) if len(shown) <= ASKED_LISTED else queryset.count()
    named = getattr(model_admin, "object_named", str)
    opts = model_admin.model._meta
    name = opts.verbose_name if count == 1 else opts.verbose_name_plural
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": opts,
        "title": f"{verb} {name}?",
        "crumb": f"{verb} {name}",  # "Send a test of push content": a verb ending in "of" or "for" says its object
        "question": f"{verb} {count:,} {name}? This cannot be undone.",
        "verb": verb,
        "action": action,
        "shown": [(obj.pk, named(obj)) for obj in shown[:ASKED_LISTED]],
        "count": count,
        "more": count - min(count, ASKED_LISTED),
        "consequences": consequences,
        "selected": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
        "select_across": request.POST.get("select_across") == "1",
        "action_url": request.get_full_path(),
        "form_token_field": FORM_TOKEN_FIELD,
        "form_token": form_token,
        "refused": refused,
    }
    return TemplateResponse(request, "admin/action_confirm.html", context)


def asks_again(*, verb: str, consequences, once: str = ""):
    """A list action that cannot be undone, asked again first (``action_asked_again``): put it under
    ``@admin.action``; the action runs once the page's Yes is posted. ``consequences``: the lines
    the question says, or a function of (model admin, request, queryset) returning them (what the
    chosen objects would reach, counted when asked).

    With ``once``, the name of the admin's method answering a Yes posted again, the action acts once
    per question drawn (a secret shown once, a test send: a reload or a double click must not act
    again): the question carries a one-time token (``accounts.form_tokens``) for its user, the action
    and the objects chosen, used in the action's transaction. A Yes posted with a used token is answered by
    ``once(request, queryset, use)``; one without a token of its own is asked again, saying why.
    The action may note what it made (``form_token_done(request.form_token_use, result_id=...)``) for
    ``once`` to link it."""

    def wrap(action):
        @functools.wraps(action)
        def run(model_admin, request, queryset):
            purpose = f"{model_admin.model._meta.label_lower}:{action.__name__}"
            said = consequences(model_admin, request, queryset) if callable(consequences) else consequences
            asking = {"action": action.__name__, "verb": verb, "consequences": said}
            if once:
                subject = form_token_subject(queryset.values_list("pk", flat=True))
                asking["form_token"] = form_token_issue(user=request.user, purpose=purpose, subject=subject)
            asked = action_asked_again(model_admin, request, queryset, **asking)
            if asked or not once:
                return asked or action(model_admin, request, queryset)
            try:
                with transaction.atomic():
                    request.form_token_use = form_token_use(
                        token=request.POST.get(FORM_TOKEN_FIELD, ""),
                        user=request.user,
                        purpose=purpose,
                        subject=subject,
                    )
                    return action(model_admin, request, queryset)
            except FormTokenRefused as exc:
                return action_asked_again(model_admin, request, queryset, **asking, refused=str(exc))
            except FormTokenUsed as exc:
                return getattr(model_admin, once)(request, queryset, exc.use)

        return run

    return wrap


def deleted_objects_counted(model_admin: admin.ModelAdmin, request, objs) -> tuple[list, dict, set, list]:
    """What Django's delete confirmation takes (``get_deleted_objects``), with counts instead of a
    line per related object: the objects themselves (linked), how many rows of each kind go with
    them (``config.db.deletion_counts``), the kinds the user may not delete, and what protects
    them, as the reader may be told it (``protected_lines``). Django's own listing loads and links
    every related object: an app's million devices would make a page that never comes back."""
    objs = list(objs)
    site = model_admin.admin_site

    def line(obj) -> str:
        opts = obj._meta
        if site.is_registered(type(obj)):
            url = reverse(f"{site.name}:{opts.app_label}_{opts.model_name}_change", args=[obj.pk])
            return format_html('{}: <a href="{}">{}</a>', capfirst(opts.verbose_name), url, obj)
        return f"{capfirst(opts.verbose_name)}: {obj}"

    listed = [line(obj) for obj in objs]
    try:
        counts = deletion_counts(objs)
    except ProtectedError as exc:
        return listed, {}, set(), protected_lines(model_admin, request, exc.protected_objects, line=line)
    except RestrictedError as exc:
        return listed, {}, set(), protected_lines(model_admin, request, exc.restricted_objects, line=line)
    perms_needed = {
        str(model._meta.verbose_name)
        for model in counts
        if site.is_registered(model) and not site.get_model_admin(model).has_delete_permission(request)
    }
    return listed, {str(model._meta.verbose_name_plural): n for model, n in counts.items()}, perms_needed, []


def protected_lines(model_admin: admin.ModelAdmin, request, objects, *, line, most: int = 100) -> list:
    """What keeps a deletion from happening, as ``request``'s user may be told it: ``line(obj)`` for
    each object they may open (its admin's list holds it, as ``uses_described`` names an owner they
    may see), at most ``most``; the others counted by kind, "a campaign you cannot see", "3 journeys
    you cannot see", without a name or a link. A kind with no admin page is named to whoever sees
    every object. One query per kind of object."""
    site = model_admin.admin_site
    by_kind: dict[type[models.Model], list] = {}
    for obj in objects:
        by_kind.setdefault(type(obj), []).append(obj)
    named: list = []
    unseen: list[str] = []
    for model, group in by_kind.items():
        if site.is_registered(model):
            kind_admin = site.get_model_admin(model)
            pks = [obj.pk for obj in group]
            seen = (
                set(kind_admin.get_queryset(request).filter(pk__in=pks).values_list("pk", flat=True))
                if kind_admin.has_view_or_change_permission(request)
                else set()
            )
        else:
            seen = {obj.pk for obj in group} if has_every_scope(request.user) else set()
        named += [line(obj) for obj in [obj for obj in group if obj.pk in seen][: max(most - len(named), 0)]]
        hidden = sum(1 for obj in group if obj.pk not in seen)
        if hidden:
            opts = model._meta
            unseen.append(
                f"a {opts.verbose_name} you cannot see"
                if hidden == 1
                else f"{hidden} {opts.verbose_name_plural} you cannot see"
            )
    return [*named, *unseen]


class BigTableAdmin(AccessAdmin):
    """The cheap admin for tables that grow (STYLE rule 4): no full count, estimated pages, no facets."""

    show_full_result_count = False
    paginator = EstimatedCountPaginator
    show_facets = admin.ShowFacets.NEVER
    list_per_page = 50


class ScopedAdmin(AccessAdmin):
    """An admin whose lists and pages hold only what the user has object access to.

    An object outside the user's access answers 404 on every page, as if it did not exist.
    ``get_queryset`` narrows through ``visible_to`` (a subclass may narrow further, never widen).
    """

    def get_queryset(self, request):
        return visible_to(request.user, super().get_queryset(request))

    def get_object(self, request, object_id, from_field=None):
        obj = super().get_object(request, object_id, from_field)
        answers = page_answers(request)
        if answers is not None:
            # Read through get_queryset: within the user's access for viewing, no need to ask again.
            answers.setdefault(access_key(obj, None), True)
        return obj

    def _get_obj_does_not_exist_redirect(self, request, opts, object_id):
        raise Http404(f"No {opts.verbose_name} with this id.")

    def _perm(self, action: str) -> str:
        opts = self.model._meta
        return f"{opts.app_label}.{action}_{opts.model_name}"

    def _can(self, request, action: str, obj) -> bool:
        """``can`` for this request's user; a page that only reads looks the object's access up
        once (the change form asks a dozen times per object), a request that writes asks every time."""
        return can(request.user, self._perm(action), obj, answers=page_answers(request))

    def has_change_permission(self, request, obj=None):
        if not super().has_change_permission(request, obj):
            return False
        return obj is None or self._can(request, "change", obj)

    def has_delete_permission(self, request, obj=None):
        if not super().has_delete_permission(request, obj):
            return False
        return obj is None or self._can(request, "delete", obj)

    def has_view_permission(self, request, obj=None):
        if not super().has_view_permission(request, obj):
            return False
        return obj is None or self._can(request, "view", obj)


def related_links_that_work(request, form_class) -> None:
    """Keep each related field's change, delete and view links (Django's ``RelatedFieldWidgetWrapper``)
    only where the reader may use them on every choice the field offers, a colleague's kept one too.

    Django asks the related admin without an object, so a role allowed to delete segments saw the
    delete link beside one it had no access to, and the link answered 403. A ``ScopedAdmin``
    answers per object (``visible_to`` for the action's permission, as its ``has_*_permission``):
    one query per field, none where Django already left the links out.
    """
    from django.contrib.admin.widgets import RelatedFieldWidgetWrapper

    for field in form_class.base_fields.values():
        widget = field.widget
        if not isinstance(widget, RelatedFieldWidgetWrapper):
            continue
        related_admin = widget.admin_site._registry.get(widget.rel.model)
        actions = [a for a in ("change", "delete", "view") if getattr(widget, f"can_{a}_related")]
        if not isinstance(related_admin, ScopedAdmin) or not actions:
            continue
        everything = related_admin.model._default_manager.all()
        refused = field.queryset.aggregate(
            **{
                action: models.Count(
                    "pk",
                    filter=~models.Q(
                        pk__in=visible_to(request.user, everything, perm=related_admin._perm(action)).values("pk")
                    ),
                )
                for action in actions
            }
        )
        for action in actions:
            if refused[action]:
                setattr(widget, f"can_{action}_related", False)


class _AccessForm(forms.Form):
    user = digits.ModelChoiceField(queryset=User.objects.filter(is_active=True).order_by("username"), required=False)
    group = digits.ModelChoiceField(queryset=Group.objects.order_by("name"), required=False)

    def clean(self):
        data = super().clean()
        if bool(data.get("user")) == bool(data.get("group")):
            raise ValidationError("Choose either a user or a group.")
        return data


# The admin instance is shared by every request; the request whose page is being drawn lives here,
# so that readonly fields (which see only the object) can draw its buttons and links for that user.
_drawing_for: contextvars.ContextVar = contextvars.ContextVar("admin_page_request", default=None)


def page_request():
    """The request whose object page is being drawn (None outside one): for a readonly field that
    reads as that user may."""
    return _drawing_for.get()


def senders_html(element_id: str, senders: list[str], *, none: str, edit: str, more: str = ""):
    """What still to send reads an object (a segment, push content), a line each, then ``more``
    and what an edit of it does to them (``edit``); ``none`` when nothing does."""
    if not senders:
        return format_html('<div id="{}"><p>{}</p></div>', element_id, none)
    # Paragraphs, not a list or a help text: an aligned form sets those off by its labels' width.
    return format_html(
        '<div id="{}"><p>{}</p>{}<p><small>{}</small></p></div>',
        element_id,
        format_html_join(mark_safe("<br>"), "{}", ((line,) for line in senders)),
        format_html("<p>{}</p>", more) if more else "",
        edit,
    )


def drawn_for(request, view):
    """``view()``'s answer (an object's page), drawn while ``page_request`` gives ``request``: a
    template answer is rendered here, while the request is known to the readonly fields."""
    token = _drawing_for.set(request)
    try:
        response = view()
        if getattr(response, "is_rendered", True) is False:
            response.render()
        return response
    finally:
        _drawing_for.reset(token)


class ObjectAccessAdminMixin:
    """Adds an "Access" page to an object's admin: who was granted it, grant and revoke."""

    def get_urls(self):
        opts = self.model._meta
        return [
            path(
                "<path:object_id>/access/",
                self.admin_site.admin_view(self.access_view),
                name=f"{opts.app_label}_{opts.model_name}_access",
            ),
            *super().get_urls(),
        ]

    @admin.display(description="Object access")
    def object_access(self, obj):
        if obj is None or obj.pk is None:
            return "Saved objects only."
        principals = grants_on(obj)
        label = (
            ", ".join(f"group {p.name}" if isinstance(p, Group) else p.get_username() for p in principals)
            or "nobody yet (Administrators see everything)"
        )
        opts = self.model._meta
        url = reverse(f"admin:{opts.app_label}_{opts.model_name}_access", args=[obj.pk])
        # Only who may grant and revoke is offered to; the others read the list there.
        request = page_request()
        may_manage = request is not None and request.user.has_perm("accounts.manage_object_access")
        return format_html(
            '{} — <a href="{}">{}</a>', label, url, "manage access" if may_manage else "see who has access"
        )

    def change_view(self, request, object_id, form_url="", extra_context=None):
        # The reader, for the access link (``page_request``).
        return drawn_for(request, functools.partial(super().change_view, request, object_id, form_url, extra_context))

    def access_view(self, request, object_id):
        obj = self.get_object(request, object_id)
        if obj is None or not self.has_view_permission(request, obj):
            raise Http404("No such object.")
        may_manage = request.user.has_perm("accounts.manage_object_access")
        form = _AccessForm(request.POST or None)
        if request.method == "POST":
            if not may_manage:
                raise PermissionDenied("Only an Administrator can grant or revoke object access.")
            revoke = request.POST.get("revoke", "")
            if revoke:
                kind, _, pk = revoke.partition(":")
                model = Group if kind == "group" else User
                pk = row_id(model, pk)
                principal = model.objects.filter(pk=pk).first() if pk is not None else None
                if principal is None:
                    raise Http404("No such user or group.")
                try:
                    access_revoke(obj=obj, to=principal, by=request.user)
                except ValidationError as exc:
                    for message in exc.messages:
                        self.message_user(request, message, messages.ERROR)
                else:
                    self.message_user(request, f"Access revoked from {principal}.", messages.SUCCESS)
                return HttpResponseRedirect(request.path)
            if form.is_valid():
                principal = form.cleaned_data["user"] or form.cleaned_data["group"]
                access_grant(obj=obj, to=principal, by=request.user)
                self.message_user(request, f"Access granted to {principal}.", messages.SUCCESS)
                return HttpResponseRedirect(request.path)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "object": obj,
            "title": f"Access to {obj}",
            "grants": [
                {
                    "label": f"group {p.name}" if isinstance(p, Group) else p.get_username(),
                    "key": f"{'group' if isinstance(p, Group) else 'user'}:{p.pk}",
                }
                for p in grants_on(obj)
            ],
            "form": form,
            "may_manage": may_manage,
        }
        return TemplateResponse(request, "admin/object_access.html", context)


class ActiveStatusFilter(admin.SimpleListFilter):
    """A status filter whose default shows what is being worked on (``active_statuses``); a value
    that is no status is refused as an unknown filter is (``?e=1``)."""

    title = "status"
    parameter_name = "status"
    active_statuses: tuple[str, ...] = ()
    active_label = "Being worked on"

    def lookups(self, request, model_admin):
        return (("active", self.active_label), *model_admin.model.Status.choices, ("all", "All"))

    def choices(self, changelist):
        value = self.value() or "active"
        for lookup, title in self.lookup_choices:
            yield {
                "selected": value == str(lookup),
                "query_string": changelist.get_query_string({self.parameter_name: lookup}),
                "display": title,
            }

    def queryset(self, request, queryset):
        value = self.value() or "active"
        if value == "active":
            return queryset.filter(status__in=self.active_statuses)
        if value == "all":
            return queryset
        if value not in queryset.model.Status.values:
            raise IncorrectLookupParameters(f"No status {value[:20]}.")
        return queryset.filter(status=value)


class SinceFilter(admin.SimpleListFilter):
    """A filter by how long ago ``field`` holds, counted back from now: within each of ``SPANS``
    (value: (label, span)), or before the longest (``older``, ``older_label``). Read through the
    field's index; an unknown value is refused as an unknown filter is (``?e=1``)."""

    field = "created_at"
    SPANS: dict[str, tuple[str, dt.timedelta]] = {}
    older_label = ""

    def lookups(self, request, model_admin):
        return [*((value, label) for value, (label, _) in self.SPANS.items()), ("older", self.older_label)]

    def queryset(self, request, queryset):
        value = self.value()
        if value is None:
            return queryset
        now = timezone.now()
        if value == "older":
            return queryset.filter(**{f"{self.field}__lt": now - max(span for _, span in self.SPANS.values())})
        if value not in self.SPANS:
            raise IncorrectLookupParameters(f"No {self.title} {value[:20]}.")
        return queryset.filter(**{f"{self.field}__gte": now - self.SPANS[value][1]})
