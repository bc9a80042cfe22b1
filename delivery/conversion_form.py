"""The conversion goal on a campaign's or a journey's page: an event, a window, an anchor and up to
three property conditions, typed in plain fields (never JSON) and checked by ``conversion_check``.

The form only collects and checks; the page's ``save_model`` writes through the owner's service
(``campaign_conversion_set``, ``journey_conversion_set``).
"""

from __future__ import annotations

import math

from django import forms
from django.core.exceptions import ValidationError
from django.utils.html import format_html, format_html_join

from audiences.rules.schema import OPERATOR_LABELS, OPERATORS, TYPES
from config import digits
from delivery.conversions import MAX_WINDOW_HOURS, conversion_check
from delivery.models import ConversionGoal

CONDITION_ROWS = 3
LIST_OPS = ("in", "not_in", "between")
NO_VALUE_OPS = ("exists", "not_exists")
ALL_OPS = tuple(dict.fromkeys(op for ops in OPERATORS.values() for op in ops))


def conversion_help(reported: str, *, approval: str = "") -> str:
    """The Conversions fieldset's description, saying how the owner's reports show them
    (``reported``: "per variant and against the holdout", "per push step"), and, for a goal the
    approval covers, ``approval`` saying why and what a change of it is (else: a report setting)."""
    return (
        "A conversion counts when a profile reached by the push does this event within the window after "
        "the push was accepted (or opened). Conditions filter the event's properties; for 'in' and "
        f"'between' separate the values with commas. Reports show conversions {reported}. "
        + (approval or "It is a report setting: changing it needs no new approval.")
    )


def condition_fields(row: int) -> tuple[str, str, str, str]:
    return tuple(f"conversion_{part}_{row}" for part in ("property", "type", "op", "value"))


CONVERSION_FIELDS = (
    "conversion_event",
    "conversion_window_hours",
    "conversion_anchor",
    *(condition_fields(row) for row in range(1, CONDITION_ROWS + 1)),
)


def _typed(text: str, value_type: str):
    """One value as the rules want it: a number, a boolean, or text (dates as YYYY-MM-DD)."""
    if value_type == "number":
        try:
            # float() reads "٣" as 3 and "1_0.5" as 10.5, as no other number field does.
            if not digits.digits_plain(text):
                raise ValueError(text)
            number = float(text)
        except ValueError as exc:
            raise ValidationError(f"{text!r} is not a number.") from exc
        if not math.isfinite(number):  # "nan", "inf", "1e400": JSON has no such number
            raise ValidationError(f"{text!r} is not a finite number.")
        return int(number) if number.is_integer() else number
    if value_type == "boolean":
        if text.lower() not in ("true", "false"):
            raise ValidationError("Write true or false.")
        return text.lower() == "true"
    return text


def _shown(value) -> str:
    if isinstance(value, list):
        return ", ".join(_shown(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _condition_rows() -> dict[str, forms.Field]:
    fields: dict[str, forms.Field] = {}
    for row in range(1, CONDITION_ROWS + 1):
        prop, kind, op, value = condition_fields(row)
        fields[prop] = forms.CharField(required=False, max_length=100, label=f"Property {row}")
        fields[kind] = forms.ChoiceField(
            choices=[(t, t) for t in TYPES], initial="string", label="type", required=False
        )
        fields[op] = forms.ChoiceField(
            choices=[(o, OPERATOR_LABELS.get(o, o)) for o in ALL_OPS], initial="eq", label="operator", required=False
        )
        fields[value] = forms.CharField(required=False, max_length=1000, label="value")
    return fields


# Declared on a class (not added per instance), so the admin may list them in its fieldsets.
_ConditionRows = type("_ConditionRows", (forms.Form,), _condition_rows())


class ConversionFormMixin(_ConditionRows):
    """Adds the conversion goal's fields to a ModelForm over a ``ConversionGoal`` model."""

    conversion_event = forms.CharField(
        required=False, max_length=100, help_text="The event that counts, e.g. purchase (blank: no conversions)."
    )
    # Not required: a form posted without them (an older page) keeps the defaults.
    conversion_window_hours = digits.IntegerField(
        min_value=1, max_value=MAX_WINDOW_HOURS, initial=24, label="Window (hours)", required=False
    )
    conversion_anchor = forms.ChoiceField(
        choices=ConversionGoal.Anchor.choices,
        initial=ConversionGoal.Anchor.ACCEPTED,
        label="Counted from when it was",
        required=False,
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        instance = getattr(self, "instance", None)
        if instance is not None and instance.pk:
            self.initial.update(
                conversion_event=instance.conversion_event,
                conversion_window_hours=instance.conversion_window_hours,
                conversion_anchor=instance.conversion_anchor,
            )
            for row, cond in enumerate(instance.conversion_where or [], start=1):
                if row > CONDITION_ROWS:
                    break
                prop, kind, op, value = condition_fields(row)
                self.initial.update(
                    {
                        prop: cond.get("property"),
                        kind: cond.get("type"),
                        op: cond.get("op"),
                        value: _shown(cond.get("value")),
                    }
                )

    def conversion_where(self) -> list[dict]:
        """The property conditions as typed, rows left without a property dropped."""
        data = self.cleaned_data
        where = []
        for row in range(1, CONDITION_ROWS + 1):
            prop, kind, op, value = condition_fields(row)
            name = (data.get(prop) or "").strip()
            if not name:
                continue
            cond = {"property": name, "type": data.get(kind) or "string", "op": data.get(op) or "eq"}
            if cond["op"] not in NO_VALUE_OPS:
                text = (data.get(value) or "").strip()
                try:
                    if cond["op"] in LIST_OPS:
                        cond["value"] = [_typed(part.strip(), cond["type"]) for part in text.split(",") if part.strip()]
                    else:
                        cond["value"] = _typed(text, cond["type"])
                except ValidationError as exc:
                    self.add_error(value, f"Condition {row} ({name}): {exc.messages[0]}")
                    continue
            where.append(cond)
        return where

    def conversion_values(self) -> dict:
        """What the owner's service takes: event, where, window_hours, anchor."""
        data = self.cleaned_data
        return {
            "event": (data.get("conversion_event") or "").strip(),
            "where": self.conversion_where(),
            "window_hours": data.get("conversion_window_hours") or 24,
            "anchor": data.get("conversion_anchor") or ConversionGoal.Anchor.ACCEPTED,
        }

    def clean(self):
        cleaned = super().clean()
        if not all(name in self.fields for name in ("conversion_event", "conversion_window_hours")):
            return cleaned
        values = self.conversion_values()
        try:
            conversion_check(**values)
        except ValidationError as exc:
            for field, messages in exc.message_dict.items():
                target = "conversion_property_1" if field == "conversion_where" else field
                for message in messages:
                    self.add_error(target if target in self.fields else None, message)
        return cleaned


def conversion_goal_text(owner: ConversionGoal) -> str:
    """The goal in words, for pages that show it read-only."""
    if not owner.conversion_event:
        return "No conversion event."
    conditions = format_html_join(
        "",
        " where {} {} {}",
        [
            (c["property"], OPERATOR_LABELS.get(c["op"], c["op"]), _shown(c.get("value")))
            for c in owner.conversion_where or []
        ],
    )
    return format_html(
        '<span id="conversion-goal">{}{} within {} h after the push was {}</span>',
        owner.conversion_event,
        conditions,
        owner.conversion_window_hours,
        owner.get_conversion_anchor_display().lower(),
    )
