"""What an approver sees side by side: the content as phones would show it, the audience, the schedule."""

from django.utils.html import format_html, format_html_join

from accounts.models import ApprovalRequest, User
from campaigns.models import Campaign


def _schedule_text(campaign: Campaign) -> str:
    if campaign.kind == Campaign.Kind.API_TRIGGERED:
        return "Sent when the API triggers it."
    if campaign.schedule_kind == Campaign.ScheduleKind.NOW:
        return "Sent as soon as it is approved."
    when = f"{campaign.send_at:%Y-%m-%d %H:%M} UTC ({campaign.time_zone})" if campaign.send_at else "—"
    if campaign.schedule_kind == Campaign.ScheduleKind.AT:
        return f"Sent once, at {when}."
    rule = campaign.cron if campaign.recurrence == Campaign.Recurrence.CRON else campaign.get_recurrence_display()
    until = f" until {campaign.ends_at:%Y-%m-%d %H:%M} UTC" if campaign.ends_at else ""
    return f"Recurring ({rule}) from {when}{until}."


def _audience_text(campaign: Campaign) -> str:
    """The audience and its size now. The reviewer sees it through the campaign they review,
    whether or not they were granted the segment itself."""
    if campaign.segment_id is None:
        return "Recipients named by each API call."
    from audiences.rules.compiler import segment_profiles

    count = segment_profiles(campaign.segment).count()
    return f"{campaign.segment}: {count:,} profiles"


def _audience_definition_text(campaign: Campaign) -> str:
    """Who the approval covers, as it is defined: each segment's rules (and the segments they use),
    a kept list's member count. Editing any of it voids the approval."""
    if campaign.segment_id is None:
        return "—"
    import json

    parts = []
    for entry in campaign.segment.definition().values():
        if entry.get("missing"):
            parts.append("a segment that no longer exists")
            continue
        if entry.get("members") is not None:
            what = f"{entry['members'][0]:,} members ({entry['kind']})"
        else:
            what = "rules " + json.dumps(entry.get("rules"), sort_keys=True, separators=(", ", ": "))
        parts.append(f"{entry['name']}: {what}")
    return "; ".join(parts)


def campaign_phones_html(campaign: Campaign, *, profile: dict | None = None) -> str:
    """The content as an iPhone and an Android phone would show it, for one profile (or a blank one)."""
    from delivery.payloads import message_render

    spec = campaign.content.spec()
    sample = profile or {
        "external_id": "sample",
        "locale": spec.get("default_locale", ""),
        "timezone": "",
        "attributes": {},
    }
    try:
        message = message_render(spec, profile=sample, context={})
        title, subtitle, body = message.title, message.subtitle, message.body
    except Exception as exc:  # a template that fails is itself what the approver must see
        title, subtitle, body = "(cannot render)", "", str(exc)
    phones = format_html_join(
        "",
        '<div class="phone phone-{}" style="display:inline-block;vertical-align:top;width:260px;margin:0 12px 12px 0;'
        'padding:12px;border-radius:18px;background:#1d1d1f;color:#fff">'
        '<div style="font-size:11px;opacity:.7">{}</div>'
        '<div style="background:rgba(255,255,255,.15);border-radius:12px;padding:8px;margin-top:8px">'
        "<strong>{}</strong><div>{}</div><div>{}</div></div></div>",
        [
            ("ios", "iOS — " + campaign.app.name, title, subtitle, body),
            ("android", "Android — " + campaign.app.name, title, "", body),
        ],
    )
    return phones


def campaign_review_html(campaign: Campaign, *, request: ApprovalRequest, user: User) -> str:
    """The review pane: a phone per platform, the audience with its count, the schedule."""
    spec = campaign.content.spec()
    phones = campaign_phones_html(campaign)
    rows = format_html_join(
        "",
        "<tr><th>{}</th><td>{}</td></tr>",
        [
            ("Campaign", f"{campaign.name} ({campaign.get_kind_display()}, {campaign.get_purpose_display()})"),
            ("App", campaign.app.name),
            ("Audience", _audience_text(campaign)),
            ("Audience definition", _audience_definition_text(campaign)),
            ("Schedule", _schedule_text(campaign)),
            (
                "Content",
                f"{campaign.content} (TTL {spec.get('ttl_seconds')} s{', silent' if spec.get('silent') else ''})",
            ),
            ("Locales", ", ".join([spec.get("default_locale", "")] + sorted(spec.get("variants") or {}))),
        ],
    )
    return format_html(
        '<div style="display:flex;gap:24px;flex-wrap:wrap"><div>{}</div><table>{}</table></div>', phones, rows
    )
