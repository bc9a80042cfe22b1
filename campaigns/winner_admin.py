"""The campaign page's winner mode: its settings in the campaign form, and its status.

The form checks what it can see (``winner_form_clean``: the kind, the schedule, the goal, each
setting's range), the variants' inline checks the rest with the variants typed; the writes go
through ``campaign_winner_set`` (``winner_save``), so the admin and the API keep the same rules.
"""

from __future__ import annotations

from django.contrib import admin
from django.core.exceptions import ValidationError
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from campaigns.models import Campaign, WinnerTest, variant_label
from campaigns.services.variants import MAX_VARIANTS
from campaigns.services.winner import WinnerInput, campaign_winner_set, winner_check
from campaigns.winner import wait_text, winner_settings_text
from config.zones import zoned

WINNER_FIELDS = ("winner_mode", *Campaign.WINNER_FIELDS)
WINNER_HELP = (
    "With variants, winner mode sends them to a sample of the audience first (split across the variants in "
    "their shares; the holdout stays held out), waits, then sends the variant with the best open or conversion "
    "rate to the rest, if it beats each other variant in a two-proportion z-test at the confidence chosen; "
    "otherwise the fallback. Scheduled, one-off campaigns only. The approval covers these settings."
)


def winner_input(data: dict) -> WinnerInput:
    """The settings typed in the form (its cleaned data)."""
    fields = {name.removeprefix("winner_"): data.get(name) for name in Campaign.WINNER_FIELDS}
    defaults = WinnerInput()
    return WinnerInput(
        **{name: defaults.__dict__[name] if value in (None, "") else value for name, value in fields.items()}
    )


def _errors_to_form(form, exc: ValidationError) -> None:
    for field, messages in exc.message_dict.items():
        form.add_error(field if field in form.fields else None, messages)


def winner_form_init(form) -> None:
    """Winner mode's settings are optional on the form: one posted without them (winner mode off) keeps them."""
    for name in Campaign.WINNER_FIELDS:
        if name in form.fields:
            form.fields[name].required = False


def winner_form_clean(form, data: dict) -> None:
    """The campaign form's check of winner mode, each error at its field (the variants' count is the
    inline's to check)."""
    if not data.get("winner_mode") or "winner_mode" not in form.fields:
        return
    try:
        winner_check(
            settings=winner_input(data),
            kind=data.get("kind") or Campaign.Kind.SCHEDULED,
            schedule_kind=data.get("schedule_kind") or Campaign.ScheduleKind.NOW,
            at_local_time=bool(data.get("at_local_time")),
            variant_count=MAX_VARIANTS,
            holdout_share=data.get("holdout_share") or 0,
            has_goal=bool((data.get("conversion_event") or "").strip()),
        )
    except ValidationError as exc:
        _errors_to_form(form, exc)


def winner_formset_check(campaign: Campaign, variant_count: int) -> None:
    """The variants' inline's part: winner mode with the variants typed. Raises ValidationError."""
    if not campaign.winner_mode:
        return
    try:
        winner_check(
            settings=WinnerInput(**{n.removeprefix("winner_"): getattr(campaign, n) for n in Campaign.WINNER_FIELDS}),
            kind=campaign.kind,
            schedule_kind=campaign.schedule_kind,
            at_local_time=campaign.at_local_time,
            variant_count=variant_count,
            holdout_share=campaign.holdout_share or 0,
            has_goal=True,  # the form checked the goal
        )
    except ValidationError as exc:
        raise ValidationError([f"Winner mode: {m}" for m in exc.messages]) from exc


def winner_save(request, form, *, turning_off: bool) -> None:
    """Write the form's winner settings: switched off before the campaign and its variants are saved
    (they may then stop fitting winner mode), switched on or changed after them."""
    if "winner_mode" not in form.cleaned_data or form.instance.pk is None:
        return
    on = bool(form.cleaned_data["winner_mode"])
    if turning_off == on:
        return
    if turning_off and not Campaign.objects.filter(pk=form.instance.pk, winner_mode=True).exists():
        return
    settings = winner_input(form.cleaned_data) if on else None
    campaign_winner_set(campaign_id=form.instance.pk, by=request.user, settings=settings)


def report_fields(obj: Campaign) -> tuple[str, ...]:
    """The report fieldset's fields: the winner's status first for a campaign in winner mode."""
    if obj.winner_mode or (obj.approved_version or {}).get("winner"):
        return ("winner_status", "sends", "report")
    return ("sends", "report")


def _dispatch_link(dispatch_id: int | None, text: str):
    if dispatch_id is None:
        return "—"
    return format_html('<a href="{}">{}</a>', reverse("admin:delivery_dispatch_change", args=[dispatch_id]), text)


def winner_status_html(campaign: Campaign) -> str:
    """Waiting until when, or picked (which, with the numbers), or the fallback (why, with the numbers),
    and the rest's dispatch. Times in the zone the approved schedule was entered in (a pending
    revision's zone sends nothing yet)."""
    test = WinnerTest.objects.filter(campaign=campaign).select_related("remainder_dispatch").first()
    if test is None:
        if not campaign.winner_mode:
            return "—"
        settings = campaign.winner_settings()
        return format_html(
            '<div id="winner-status" data-outcome="not_sent"><p>Not sent yet: {}.</p></div>',
            winner_settings_text(settings),
        )
    sample = _dispatch_link(test.sample_dispatch_id, f"the sample ({test.settings['sample_share']}%)")
    if test.outcome == WinnerTest.Outcome.WAITING:
        return format_html(
            '<div id="winner-status" data-outcome="waiting"><p>{} was sent; the winner is picked at {}, '
            "{} after it.</p></div>",
            sample,
            zoned(test.due_at, campaign.schedule_zone()),
            wait_text(test.settings["wait_minutes"]),
        )
    comparisons = {c["variant"]: c for c in test.comparisons}
    rows = format_html_join(
        "",
        '<tr data-variant="{}"><th>{}</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>',
        (
            (
                f["variant"],
                f["variant"],
                f["trials"],
                f["successes"],
                f"{f['rate']:.1%}" if f["rate"] is not None else "—",
                comparisons[f["variant"]]["z"] if f["variant"] in comparisons else "best",
                comparisons[f["variant"]]["p"] if f["variant"] in comparisons else "",
            )
            for f in test.figures
        ),
    )
    metric = "opened / accepted" if test.settings["metric"] == "open_rate" else "converted / reached"
    heading = {
        WinnerTest.Outcome.WINNER: f"Winner: {variant_label(test.winner)}" if test.winner else "",
        WinnerTest.Outcome.FALLBACK: "No winner: fallback"
        + (f" to {variant_label(test.winner)}" if test.winner else " to all variants"),
        WinnerTest.Outcome.CANCELLED: "Nothing sent to the rest",
    }[test.outcome]
    remainder = test.remainder_dispatch
    rest = (
        format_html(
            "<p>The rest: {} — {}, {} targeted, {} accepted.</p>",
            _dispatch_link(remainder.pk, str(remainder)),
            remainder.get_status_display(),
            remainder.total,
            remainder.accepted,
        )
        if remainder is not None
        else ""
    )
    if not test.figures:
        # Ended without a pick (its sample never went out): no figures to show.
        return format_html(
            '<div id="winner-status" data-outcome="{}"><p><strong>{}</strong> (ended {}; {}). {}</p>{}</div>',
            test.outcome,
            heading,
            zoned(test.picked_at, campaign.schedule_zone()),
            sample,
            test.reason,
            rest,
        )
    return format_html(
        '<div id="winner-status" data-outcome="{}"><p><strong>{}</strong> (picked {} from {}). {}</p>'
        '<table id="winner-figures"><thead><tr><th>variant</th><th>trials</th><th>successes</th><th>rate ({})</th>'
        "<th>z (best vs it)</th><th>p</th></tr></thead>{}</table>{}</div>",
        test.outcome,
        heading,
        zoned(test.picked_at, campaign.schedule_zone()),
        sample,
        test.reason,
        metric,
        rows,
        rest,
    )


class WinnerAdminMixin:
    """The campaign page's winner status (a read-only field)."""

    @admin.display(description="Winner mode")
    def winner_status(self, obj):
        if obj is None or obj.pk is None:
            return "—"
        return winner_status_html(obj)
