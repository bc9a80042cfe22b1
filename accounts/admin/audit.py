"""The admin of the audit log: read-only, a big table."""

from django.contrib import admin
from django.contrib.admin.utils import display_for_field
from django.contrib.contenttypes.models import ContentType
from django.db.models import Q
from django.utils.html import format_html
from django.utils.text import capfirst, smart_split, unescape_string_literal

from accounts.admin.bases import BigTableAdmin, ReadOnlyAdminMixin, VisibleRelatedFilter
from accounts.models import ApprovalRequest, AuditEvent, audit_action_words
from accounts.selectors import approval_subjects_hidden, audit_events_visible_to, has_every_scope
from config.labels import numbered


class ActionFilter(admin.AllValuesFieldListFilter):
    """The actions recorded, in words (their codes in the address)."""

    def choices(self, changelist):
        choices = super().choices(changelist)
        yield next(choices)  # All
        for code, choice in zip([code for code in self.lookup_choices if code is not None], choices, strict=False):
            yield {**choice, "display": audit_action_words(str(code))}
        yield from choices


class _NamedEmptyRelatedFilter(VisibleRelatedFilter):
    """A related filter (of what the user may see) whose choice for "none" says what none means, not a dash."""

    empty_text = "—"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.empty_value_display = self.empty_text


class ActorFilter(_NamedEmptyRelatedFilter):
    empty_text = "the system"  # events without an actor: the workers', the retention's, the demo's


def object_kind(object_type) -> str:
    """A content type as the kind of object it is ("App"), not as Django names it ("Delivery | app")."""
    if object_type is None:
        return "—"
    model = object_type.model_class()
    return capfirst(model._meta.verbose_name) if model is not None else object_type.model


class ObjectTypeFilter(_NamedEmptyRelatedFilter):
    empty_text = "no object"

    def field_choices(self, field, request, model_admin):
        # The kinds from the content-type cache (a type this process has not met yet is read once).
        choices = super().field_choices(field, request, model_admin)
        return sorted(
            ((pk, object_kind(ContentType.objects.get_for_id(pk))) for pk, _ in choices), key=lambda choice: choice[1]
        )


def events_of_hidden_objects(request, events) -> set[int]:
    """The events whose object is still there but ``request``'s user may not see it now: its admin's
    list does not hold it (as ``protected_lines`` asks), or, for an approval request, its subject
    (``approval_subjects_hidden``: the request is named after it). A kind with no admin page is
    seen by whoever sees every object; nothing is hidden from them. At most three queries per kind
    of object, whatever the events."""
    if has_every_scope(request.user):
        return set()
    wanted: dict[int, set[str]] = {}
    for event in events:
        if event.object_type_id and event.object_id:
            wanted.setdefault(event.object_type_id, set()).add(event.object_id)
    hidden = _hidden_objects(request, wanted)
    return {event.pk for event in events if (event.object_type_id, event.object_id) in hidden}


def _hidden_objects(request, wanted: dict[int, set[str]]) -> set[tuple[int, str]]:
    """Of the objects ``wanted`` (their ids by content type), those still there that ``request``'s
    user may not see now (``events_of_hidden_objects``), as (content type id, id)."""
    site = admin.site
    hidden: set[tuple[int, str]] = set()
    for type_id, ids in wanted.items():
        model = ContentType.objects.get_for_id(type_id).model_class()
        if model is None:  # a model no longer installed
            continue
        seen: set[str] = set()
        if site.is_registered(model) and site.get_model_admin(model).has_view_or_change_permission(request):
            rows = site.get_model_admin(model).get_queryset(request).filter(pk__in=ids)
            if issubclass(model, ApprovalRequest):
                requests = list(rows)
                unseen_subjects = approval_subjects_hidden(request.user, requests)
                seen = {str(row.pk) for row in requests if row.pk not in unseen_subjects}
            else:
                seen = {str(pk) for pk in rows.values_list("pk", flat=True)}
        if unseen := ids - seen:
            there = model._default_manager.filter(pk__in=unseen).values_list("pk", flat=True)
            hidden |= {(type_id, str(pk)) for pk in there}
    return hidden


def _withheld(event: AuditEvent) -> None:
    """Say ``event``'s object by kind and number (``numbered``), as a page names what its reader may
    not see, and keep its summary back (it names the object). Never saved: the log is append-only."""
    event.object_label = numbered(_kind(event.object_type), event.object_id)
    event.summary_withheld = True


def _kind(object_type) -> str:
    model = object_type.model_class() if object_type is not None else None
    return model._meta.verbose_name if model is not None else "object"


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdminMixin, BigTableAdmin):
    """Read-only for everyone, superusers included. Each reader but Administrators reads the events
    of their own actions: an object they may not see now is said by kind and number, its summary
    not shown (``events_of_hidden_objects``)."""

    list_display = ("created_at", "actor_label", "action_shown", "object_kind", "object_label")
    list_filter = (("action", ActionFilter), ("object_type", ObjectTypeFilter), ("actor", ActorFilter))
    date_hierarchy = "created_at"
    search_fields = ("object_label", "actor_label", "action")
    list_select_related = ("object_type",)
    fields = ("created_at", "actor_label", "action_shown", "object_kind", "object_id", "object_label", "summary_shown")
    readonly_fields = fields

    # The fields a reader who may not see an event's object reads withheld (``_withheld``).
    withheld_fields = ("object_label", "summary")
    withheld_columns = ("object_label",)

    def get_queryset(self, request):
        return audit_events_visible_to(request.user).select_related("object_type")

    def changelist_view(self, request, extra_context=None):
        response = super().changelist_view(request, extra_context)
        changelist = (getattr(response, "context_data", None) or {}).get("cl")
        if changelist is not None:
            page = list(changelist.result_list)
            hidden = events_of_hidden_objects(request, page)
            for event in page:
                if event.pk in hidden:
                    _withheld(event)
        return response

    def get_object(self, request, object_id, from_field=None):
        """The event as its reader may read it: its object named (in the page's title and
        breadcrumbs too) and its summary shown only while they may see the object."""
        event = super().get_object(request, object_id, from_field)
        if event is not None and events_of_hidden_objects(request, [event]):
            _withheld(event)
        return event

    def get_search_results(self, request, queryset, search_term):
        """Found by the name of an object their reader may not see now, an event would tell it: such
        events are found by the other fields alone (who, what was done). The objects asked about are
        those whose name holds a word of the search, each once, by kind."""
        results, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        words = [  # as Django's search reads them
            unescape_string_literal(word) if word[0] in "\"'" and len(word) > 1 and word[0] == word[-1] else word
            for word in smart_split(search_term)
        ]
        if not words or has_every_scope(request.user):
            return results, may_have_duplicates
        by_name = Q()
        for word in words:
            by_name |= Q(object_label__icontains=word)
        wanted: dict[int, set[str]] = {}
        for type_id, object_id in (
            queryset.filter(by_name).order_by().values_list("object_type_id", "object_id").distinct()
        ):
            if type_id and object_id:
                wanted.setdefault(type_id, set()).add(object_id)
        hidden: dict[int, set[str]] = {}
        for type_id, object_id in _hidden_objects(request, wanted):
            hidden.setdefault(type_id, set()).add(object_id)
        if not hidden:
            return results, may_have_duplicates
        of_hidden = Q()
        for type_id, ids in hidden.items():
            of_hidden |= Q(object_type_id=type_id, object_id__in=sorted(ids))
        by_the_rest = Q()
        for word in words:
            by_the_rest &= Q(actor_label__icontains=word) | Q(action__icontains=word)
        return results.exclude(of_hidden & ~by_the_rest), may_have_duplicates

    @admin.display(description="Summary")
    def summary_shown(self, obj):
        if getattr(obj, "summary_withheld", False):
            return format_html("<em>not shown: it names a {} you have no access to</em>", _kind(obj.object_type))
        return display_for_field(obj.summary, AuditEvent._meta.get_field("summary"), self.get_empty_value_display())

    def get_actions(self, request):
        return {}

    @admin.display(description="Object type", ordering="object_type")
    def object_kind(self, obj):
        return object_kind(obj.object_type)

    @admin.display(description="Action", ordering="action")
    def action_shown(self, obj):
        """The action in words, its code beside (the code is what the search and the filter's address take)."""
        return format_html("{} <code>{}</code>", audit_action_words(obj.action), obj.action)
