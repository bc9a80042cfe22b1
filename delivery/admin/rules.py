"""The admin of the delivery rules (one row: quiet hours, frequency caps)."""

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django import forms
from django.contrib import admin

from accounts.admin.bases import AccessAdmin
from accounts.services import audit
from delivery.models import DeliveryRules
from delivery.selectors import (
    apps_in_scope,
)


class DeliveryRulesForm(forms.ModelForm):
    """Quiet hours that would not apply as meant are refused, naming the field: the rules would
    otherwise fall back (UTC for an unknown zone, no quiet hours without an end) without a word."""

    class Meta:
        model = DeliveryRules
        fields = (
            "app",
            "frequency_cap",
            "frequency_window_hours",
            "quiet_start",
            "quiet_end",
            "quiet_mode",
            "default_timezone",
        )

    def clean_default_timezone(self):
        name = self.cleaned_data["default_timezone"]
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise forms.ValidationError(f"Unknown time zone '{name}': use an IANA name such as Europe/Paris.") from None
        return name

    def clean(self):
        data = super().clean()
        start, end = data.get("quiet_start"), data.get("quiet_end")
        if start is not None and end is None and "quiet_end" not in self.errors:
            self.add_error("quiet_end", "Quiet hours need an end too (leave both empty for none).")
        if end is not None and start is None and "quiet_start" not in self.errors:
            self.add_error("quiet_start", "Quiet hours need a start too (leave both empty for none).")
        if start is not None and start == end:
            self.add_error("quiet_end", "Quiet hours end when they start: leave both empty for none.")
        return data


@admin.register(DeliveryRules)
class DeliveryRulesAdmin(AccessAdmin):
    """Administrators set each app's frequency cap and quiet hours for marketing pushes."""

    form = DeliveryRulesForm

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
        return rules.filter(app__in=apps_in_scope(request.user).values("pk"))

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "app":
            kwargs["queryset"] = apps_in_scope(request.user)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        audit(
            actor=request.user, action="delivery_rules_changed", obj=obj, summary={"fields": sorted(form.changed_data)}
        )
