"""The admin of the delivery rules (one row: quiet hours, frequency caps)."""

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.widgets import AdminTimeWidget
from django.core.exceptions import ValidationError

from accounts.admin.bases import AccessAdmin
from delivery.models import DeliveryRules
from delivery.selectors import (
    apps_in_scope,
)
from delivery.services.rules import RULE_FIELDS, delivery_rules_check, delivery_rules_save


class TimeOfDayWidget(AdminTimeWidget):
    """The admin's time field for a time of day (the quiet hours' start and end, read in each
    profile's zone): its clock offers midnight, 6 a.m., noon and 6 p.m., but not "Now", which filled in
    the browser's time, no time of day to keep (delivery/time_of_day.js)."""

    class Media:
        # After Django's clock: its drawing, on load, comes before the script's own changes to it.
        js = ["admin/js/admin/DateTimeShortcuts.js", "delivery/time_of_day.js"]

    def __init__(self, attrs=None, format=None):
        super().__init__(attrs={"data-time-of-day": "", **(attrs or {})}, format=format)


class DeliveryRulesForm(forms.ModelForm):
    """The rules as the service checks them (``delivery_rules_check``), its errors on their fields:
    the rules would otherwise fall back (UTC for an unknown zone, no quiet hours without an end)
    without a word."""

    # What the save leaves to be said (a cap that outlasts the deliveries kept, unchanged by it).
    warnings: list[str]

    class Meta:
        model = DeliveryRules
        fields = ("app", *RULE_FIELDS)

    def clean(self):
        data = super().clean()
        self.warnings = []
        if any(field in self.errors for field in RULE_FIELDS):
            return data  # said on its field already; the rest is checked once it is right
        values = {field: data.get(field) for field in RULE_FIELDS}
        try:
            self.warnings = delivery_rules_check(values=values, saved=self._saved())
        except ValidationError as exc:
            for field, messages in exc.message_dict.items():
                self.add_error(field, messages)
        return data

    def _saved(self) -> DeliveryRules | None:
        """The app's rules as saved (None: it has none yet), which the form's values replace."""
        if self.instance.pk is None:
            return None
        return DeliveryRules.objects.filter(pk=self.instance.pk).first()


@admin.register(DeliveryRules)
class DeliveryRulesAdmin(AccessAdmin):
    """Administrators set each app's frequency cap and quiet hours for marketing pushes."""

    empty_hint = (
        "None of your apps has delivery rules yet: marketing pushes go out without a frequency cap or quiet hours. "
        "Add rules for an app to set them (transactional and test sends bypass them)."
    )

    form = DeliveryRulesForm

    list_display = ("app", "frequency", "quiet_hours", "quiet_mode_shown")
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

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        if db_field.name in ("quiet_start", "quiet_end"):
            kwargs["widget"] = TimeOfDayWidget
        return super().formfield_for_dbfield(db_field, request, **kwargs)

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "app":
            kwargs["queryset"] = apps_in_scope(request.user)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    @admin.display(description="Frequency cap", ordering="frequency_cap")
    def frequency(self, obj):
        """The cap with its window, or none: a window alone caps nothing."""
        if obj.frequency_cap is None:
            return "none"
        pushes = "push" if obj.frequency_cap == 1 else "pushes"
        return f"at most {obj.frequency_cap} marketing {pushes} a profile per {obj.frequency_window_hours} hours"

    @admin.display(description="Quiet mode")
    def quiet_mode_shown(self, obj):
        """What quiet hours do to a push, said only where there are quiet hours."""
        return obj.get_quiet_mode_display() if obj.has_quiet_hours else "—"

    @admin.display(description="Quiet hours", ordering="quiet_start")
    def quiet_hours(self, obj):
        """As typed (HH:MM), in the zone they are read in: each profile's, the app's default for
        profiles without one; not the admin's "10 p.m.", which named no zone."""
        if not obj.has_quiet_hours:
            return "none"
        return (
            f"{obj.quiet_start:%H:%M}–{obj.quiet_end:%H:%M} in each profile's time zone "
            f"({obj.default_timezone} for profiles without one)"
        )

    def get_readonly_fields(self, request, obj=None):
        # The rules are the app's: another app's are set on their own page.
        return ("app",) if obj is not None else ()

    def save_model(self, request, obj, form, change):
        saved, warnings = delivery_rules_save(
            app_id=obj.app_id, by=request.user, **{field: getattr(obj, field) for field in RULE_FIELDS}
        )
        obj.pk = saved.pk
        for warning in warnings:
            self.message_user(request, warning, messages.WARNING)
