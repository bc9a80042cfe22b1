"""Demo campaigns: one waiting for approval (the approver's inbox is not empty), one live API-triggered."""

import datetime as dt
import zoneinfo

from django.utils import timezone

from accounts.models import User
from accounts.selectors import in_scope
from accounts.services import access_grant
from audiences.models import Segment
from campaigns.models import Campaign
from campaigns.services.lifecycle import campaign_approve, campaign_create, campaign_submit
from delivery.demo import demo_content_as_written
from delivery.models import App, PushContent
from delivery.services.apps import SECRET_FIELDS


def populate(*, stdout) -> None:
    app = App.objects.defer(*SECRET_FIELDS).filter(name="Pushdesk Demo").first()  # no credential is needed here
    users = {u.username: u for u in User.objects.filter(username__in=("manager", "approver", "viewer"))}
    if app is None or len(users) < 3:
        stdout.write("Demo campaigns skipped: the demo app or users are missing.")
        return
    for user in users.values():
        if not in_scope(user, App.objects.filter(pk=app.pk)).exists():
            access_grant(obj=app, to=user, by=None)
    manager, approver = users["manager"], users["approver"]
    segment = Segment.objects.filter(name="Lapsed users").first() or Segment.objects.order_by("pk").first()
    welcome = PushContent.objects.filter(app=app, name="Welcome back").first()
    flash = PushContent.objects.filter(app=app, name="Flash sale").first()
    if segment is None or welcome is None or flash is None:
        stdout.write("Demo campaigns skipped: the demo segments or push contents are missing.")
        return
    made = []
    if not Campaign.objects.filter(name="Win back lapsed users").exists():
        paris = zoneinfo.ZoneInfo("Europe/Paris")
        tomorrow = timezone.now().astimezone(paris).date() + dt.timedelta(days=1)
        send_at = dt.datetime.combine(tomorrow, dt.time(9, 0), tzinfo=paris)
        campaign = campaign_create(
            by=manager,
            name="Win back lapsed users",
            app=app,
            segment=segment,
            content=welcome,
            schedule_kind="recurring",
            recurrence="weekly",
            send_at=send_at,
            time_zone="Europe/Paris",
        )
        note = f"Weekly win-back, {send_at:%A}s 9:00 Paris time."
        campaign_submit(campaign_id=campaign.pk, by=manager, message=note)
        made.append(f"{campaign.name} (waiting for approval)")
    if not Campaign.objects.filter(name="Flash sale alert").exists():
        campaign = campaign_create(
            by=manager,
            name="Flash sale alert",
            app=app,
            kind="api_triggered",
            purpose="marketing",
            content=flash,
        )
        campaign_submit(campaign_id=campaign.pk, by=manager)
        if demo_content_as_written(flash):
            campaign_approve(campaign_id=campaign.pk, by=approver, comment="Approved for the demo.")
            made.append(f"{campaign.name} (live, API-triggered: POST /api/v1/campaigns/{campaign.pk}/trigger/)")
        else:
            # Someone rewrote the demo's content since the demo wrote it: an approver reads it first.
            made.append(
                f"{campaign.name} (waiting for approval: its content '{flash.name}' was changed since the demo wrote it)"
            )
    stdout.write("Demo campaigns: " + ("; ".join(made) if made else "already there."))
