"""The admin of the delivery rules (one row: quiet hours, frequency caps)."""

from django.contrib import admin

from accounts.admin.bases import AccessAdmin
from accounts.services import audit
from delivery.models import DeliveryRules
from delivery.selectors import (
    apps_visible_to,
)


@admin.register(DeliveryRules)
class DeliveryRulesAdmin(AccessAdmin):
    """Administrators set each app's frequency cap and quiet hours for marketing pushes."""

    list_display = ("app", "frequency_cap", "frequency_window_hours", "quiet_start", "quiet_end", "quiet_mode")
    list_select_related = ("app",)
    fieldsets = (
        (None, {"fields": ("app",)}),
        ("Frequency cap", {"fields": ("frequency_cap", "frequency_window_hours")}),
        ("Quiet hours", {"fields": ("quiet_start", "quiet_end", "quiet_mode", "default_timezone")}),
    )

    def get_queryset(self, request):
        rules = super().get_queryset(request)
        if not request.user.has_perm("delivery.view_deliveryrules"):
            return rules.none()
        return rules.filter(app__in=apps_visible_to(request.user).values("pk"))

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "app":
            kwargs["queryset"] = apps_visible_to(request.user)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        audit(
            actor=request.user, action="delivery_rules_changed", obj=obj, summary={"fields": sorted(form.changed_data)}
        )
