"""The admin of the delivery rules (one row: quiet hours, frequency caps)."""

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django import forms
from django.conf import settings
from django.contrib import admin, messages

from accounts.admin.bases import AccessAdmin
from accounts.services import audit
from delivery.models import DeliveryRules
from delivery.rules import FREQUENCY_WINDOW_MAX_HOURS, frequency_window_outlasts_retention
from delivery.selectors import (
    apps_in_scope,
)


class DeliveryRulesForm(forms.ModelForm):
    """Quiet hours that would not apply as meant are refused, naming the field: the rules would
    otherwise fall back (UTC for an unknown zone, no quiet hours without an end) without a word."""

    # What the save leaves to be said (a cap that outlasts the deliveries kept, unchanged by it).
    warnings: list[str]

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

    def clean_frequency_cap(self):
        cap = self.cleaned_data["frequency_cap"]
        if cap == 0:
            raise forms.ValidationError("A cap is at least 1 push: leave it empty for no cap.")
        return cap

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
        self.warnings = []
        window = data.get("frequency_window_hours")
        if window is not None and not 1 <= window <= FREQUENCY_WINDOW_MAX_HOURS:
            self.add_error(
                "frequency_window_hours", f"The window is 1 to {FREQUENCY_WINDOW_MAX_HOURS:,} hours (a year)."
            )
        elif window is not None:
            problem = frequency_window_outlasts_retention(frequency_cap=data.get("frequency_cap"), window_hours=window)
            # Refused rather than warned when the save sets the cap or its window: the cap cannot
            # be honoured past the deliveries kept, and one saved so stops retention for every
            # table (it refuses to run, deleting nothing), so personal data would outlive the
            # retention the operator set, from a form in the admin. A longer window is a decision
            # to take with the operator (keeping deliveries longer), not one this form takes.
            # A cap saved before the retention was lowered is only warned of when other fields
            # change: refusing those would block, say, an urgent change of quiet hours.
            capping_changed = {"frequency_cap", "frequency_window_hours"} & set(self.changed_data)
            within = settings.PUSHDESK_RETENTION_DELIVERY_DAYS * 24
            if problem and (self.instance.pk is None or capping_changed):
                self.add_error(
                    "frequency_window_hours",
                    f"{problem} Give it at most {within:,} hours, or have the deliveries kept longer first.",
                )
            elif problem:
                self.warnings.append(
                    f"This app's frequency cap stops retention. {problem} Shorten its window to at most "
                    f"{within:,} hours, or have the deliveries kept longer."
                )
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
        for warning in getattr(form, "warnings", ()):
            self.message_user(request, warning, messages.WARNING)
        audit(
            actor=request.user, action="delivery_rules_changed", obj=obj, summary={"fields": sorted(form.changed_data)}
        )
