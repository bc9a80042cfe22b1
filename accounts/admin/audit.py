"""The admin of the audit log: read-only, a big table."""

from django.contrib import admin
from django.contrib.contenttypes.models import ContentType
from django.utils.html import format_html
from django.utils.text import capfirst

from accounts.admin.bases import BigTableAdmin, ReadOnlyAdminMixin, VisibleRelatedFilter
from accounts.models import AuditEvent, audit_action_words
from accounts.selectors import (
    audit_events_visible_to,
)


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


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdminMixin, BigTableAdmin):
    """Read-only for everyone, superusers included."""

    list_display = ("created_at", "actor_label", "action_shown", "object_kind", "object_label")
    list_filter = (("action", ActionFilter), ("object_type", ObjectTypeFilter), ("actor", ActorFilter))
    date_hierarchy = "created_at"
    search_fields = ("object_label", "actor_label", "action")
    list_select_related = ("object_type",)
    fields = ("created_at", "actor_label", "action_shown", "object_kind", "object_id", "object_label", "summary")
    readonly_fields = fields

    def get_queryset(self, request):
        return audit_events_visible_to(request.user).select_related("object_type")

    def get_actions(self, request):
        return {}

    @admin.display(description="Object type", ordering="object_type")
    def object_kind(self, obj):
        return object_kind(obj.object_type)

    @admin.display(description="Action", ordering="action")
    def action_shown(self, obj):
        """The action in words, its code beside (the code is what the search and the filter's address take)."""
        return format_html("{} <code>{}</code>", audit_action_words(obj.action), obj.action)
