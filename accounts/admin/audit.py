"""The admin of the audit log: read-only, a big table."""

from django.contrib import admin

from accounts.admin.bases import BigTableAdmin, ReadOnlyAdminMixin
from accounts.models import AuditEvent
from accounts.selectors import (
    audit_events_visible_to,
)


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdminMixin, BigTableAdmin):
    """Read-only for everyone, superusers included."""

    list_display = ("created_at", "actor_label", "action", "object_type", "object_label")
    list_filter = ("action", "object_type", ("actor", admin.RelatedOnlyFieldListFilter))
    date_hierarchy = "created_at"
    search_fields = ("object_label", "actor_label", "action")
    list_select_related = ("object_type",)
    fields = ("created_at", "actor_label", "action", "object_type", "object_id", "object_label", "summary")
    readonly_fields = fields

    def get_queryset(self, request):
        return audit_events_visible_to(request.user).select_related("object_type")

    def get_actions(self, request):
        return {}
