"""An app's delivery rules (frequency cap, quiet hours): the one checked write.

Whatever saves them (the admin's form, a script, an import of settings) goes through
``delivery_rules_save``: a rule that would not apply as meant (an unknown zone, quiet hours without
an end, a window of no hours or past a year) is refused naming the field, never stored for the
sends to fall back from it without a word.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction

from accounts.models import User
from accounts.selectors import can
from accounts.services import audit
from delivery.models import App, DeliveryRules
from delivery.rules import FREQUENCY_WINDOW_MAX_HOURS, frequency_window_outlasts_retention

# The fields a save sets, all of them: the rules given are the app's rules.
RULE_FIELDS = (
    "frequency_cap",
    "frequency_window_hours",
    "quiet_start",
    "quiet_end",
    "quiet_mode",
    "default_timezone",
)


def delivery_rules_check(*, values: dict, saved: DeliveryRules | None) -> list[str]:
    """Check the rules ``values`` (every field of ``RULE_FIELDS``) that would replace ``saved`` (None:
    the app has none yet). Returns what a save should say without refusing it (a cap saved before
    the retention was lowered, which this save leaves as it was).

    Raises ValidationError({field: [messages]}) naming each field at fault.
    """
    errors: dict[str, list[str]] = {}

    def refuse(field: str, message: str) -> None:
        errors.setdefault(field, []).append(message)

    cap = values["frequency_cap"]
    if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
        refuse("frequency_cap", "A cap is at least 1 push: leave it empty for no cap.")
    window = values["frequency_window_hours"]
    window_ok = isinstance(window, int) and not isinstance(window, bool) and 1 <= window <= FREQUENCY_WINDOW_MAX_HOURS
    if not window_ok:
        refuse("frequency_window_hours", f"The window is 1 to {FREQUENCY_WINDOW_MAX_HOURS:,} hours (a year).")
    start, end = values["quiet_start"], values["quiet_end"]
    for field, value in (("quiet_start", start), ("quiet_end", end)):
        if value is not None and (not isinstance(value, dt.time) or value.tzinfo is not None):
            refuse(field, "Quiet hours start and end at a time of day (HH:MM, in each profile's time zone).")
    if not errors.keys() & {"quiet_start", "quiet_end"}:
        if start is not None and end is None:
            refuse("quiet_end", "Quiet hours need an end too (leave both empty for none).")
        if end is not None and start is None:
            refuse("quiet_start", "Quiet hours need a start too (leave both empty for none).")
        if start is not None and start == end:
            refuse("quiet_end", "Quiet hours end when they start: leave both empty for none.")
    if values["quiet_mode"] not in DeliveryRules.QuietMode.values:
        refuse("quiet_mode", f"Use {' or '.join(DeliveryRules.QuietMode.values)}.")
    name = values["default_timezone"]
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        refuse("default_timezone", f"Unknown time zone '{name}': use an IANA name such as Europe/Paris.")
    warnings: list[str] = []
    if window_ok and "frequency_cap" not in errors:
        problem = frequency_window_outlasts_retention(frequency_cap=cap, window_hours=window)
        # Refused rather than warned when the save sets the cap or its window: the cap cannot
        # be honoured past the deliveries kept, and one saved so stops retention for every
        # table (it refuses to run, deleting nothing), so personal data would outlive the
        # retention the operator set. A longer window is a decision to take with the operator
        # (keeping deliveries longer), not one this save takes. A cap saved before the retention
        # was lowered is only warned of when other fields change: refusing those would block,
        # say, an urgent change of quiet hours.
        capping_changed = saved is None or (saved.frequency_cap, saved.frequency_window_hours) != (cap, window)
        within = settings.PUSHDESK_RETENTION_DELIVERY_DAYS * 24
        if problem and capping_changed:
            refuse(
                "frequency_window_hours",
                f"{problem} Give it at most {within:,} hours, or have the deliveries kept longer first.",
            )
        elif problem:
            warnings.append(
                f"This app's frequency cap stops retention. {problem} Shorten its window to at most "
                f"{within:,} hours, or have the deliveries kept longer."
            )
    if errors:
        raise ValidationError(errors)
    return warnings


def delivery_rules_save(
    *,
    app_id: int,
    by: User,
    frequency_cap: int | None = None,
    frequency_window_hours: int = 24,
    quiet_start: dt.time | None = None,
    quiet_end: dt.time | None = None,
    quiet_mode: str = DeliveryRules.QuietMode.DELAY,
    default_timezone: str = "UTC",
) -> tuple[DeliveryRules, list[str]]:
    """Set the app's delivery rules to these (a field not given takes its default: no cap, no quiet
    hours); returns the rules and what the save says without refusing it (``delivery_rules_check``).

    Holds the app row, so two saves of one app's rules follow each other. Raises PermissionDenied
    when ``by`` may not set this app's rules (an Administrator with access to it), ValidationError
    naming each field at fault (nothing is saved then).
    """
    values = {
        "frequency_cap": frequency_cap,
        "frequency_window_hours": frequency_window_hours,
        "quiet_start": quiet_start,
        "quiet_end": quiet_end,
        "quiet_mode": quiet_mode,
        "default_timezone": default_timezone,
    }
    with transaction.atomic():
        app = App.objects.select_for_update().get(pk=app_id)
        rules = DeliveryRules.objects.filter(app=app).first()
        perm = "delivery.change_deliveryrules" if rules is not None else "delivery.add_deliveryrules"
        if not (by.has_perm(perm) and can(by, "delivery.change_app", app)):
            raise PermissionDenied("Only an Administrator with access to this app can set its delivery rules.")
        warnings = delivery_rules_check(values=values, saved=rules)
        changed = sorted(f for f in RULE_FIELDS if rules is None or getattr(rules, f) != values[f])
        if rules is None:
            rules = DeliveryRules(app=app)
        for field, value in values.items():
            setattr(rules, field, value)
        rules.save()
        audit(actor=by, action="delivery_rules_changed", obj=rules, summary={"fields": changed})
    return rules, warnings
