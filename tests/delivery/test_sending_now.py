"""A send renders its content's ``now`` (``{{ 'now' | date: '%A' }}``) in the zone it is scheduled in:
a campaign's time zone; at each profile's local time, each profile's own (its send's zone for
profiles without one); the server's clock (UTC) for a send of no zone, as a journey's."""

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from delivery.models import Dispatch
from delivery.services.dispatches import dispatch_create, dispatch_prepare
from delivery.services.sending import dispatch_send
from tests.factories import DeviceFactory, ProfileFactory, PushContentFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("open_gate")]

PICKS = "Your picks for {{ 'now' | date: '%A' }} are waiting."
# 26 hours apart: at any moment each shows another day, and one of them another day than UTC's.
AHEAD, BEHIND = "Pacific/Kiritimati", "Etc/GMT+12"


def other_day_zone() -> str:
    """A zone whose day is not UTC's now, by hours either side (UTC+14 from noon UTC, UTC−12 before)."""
    return AHEAD if dt.datetime.now(dt.UTC).hour >= 12 else BEHIND


def weekday_in(name: str) -> str:
    return f"{dt.datetime.now(ZoneInfo(name)):%A}"


def sent(content, profiles, django_capture_on_commit_callbacks, **kwargs) -> Dispatch:
    with django_capture_on_commit_callbacks(execute=False):
        dispatch = dispatch_create(
            app_id=content.app_id,
            kind=Dispatch.Kind.API_TRIGGER,
            spec=content.spec(),
            content_id=content.pk,
            profile_ids=[p.pk for p in profiles],
            **kwargs,
        )
        dispatch_prepare(dispatch_id=dispatch.pk)
    dispatch_send(dispatch_id=dispatch.pk)
    return dispatch


def test_a_send_renders_now_in_its_zone_not_the_servers(pushsim_app, pushsim, django_capture_on_commit_callbacks):
    """A campaign in Europe/Paris sending at 00:30 on a Monday read "Sunday": the server's clock is
    UTC's. The send renders its ``now`` in its own zone, for content the same for all (rendered
    once) and content read per profile."""
    zone = other_day_zone()
    shared = PushContentFactory(app=pushsim_app, body=PICKS)
    personal = PushContentFactory(app=pushsim_app, body="{{ profile.external_id }}: " + PICKS)
    device = DeviceFactory(app=pushsim_app, platform="ios", profile=ProfileFactory(timezone=""))
    assert weekday_in(zone) != weekday_in("UTC")

    for content in (shared, personal):
        sent(content, [device.profile], django_capture_on_commit_callbacks, time_zone=zone)
        received = pushsim.state.recent(token=device.token)[0]
        assert received["body"].endswith(f"Your picks for {weekday_in(zone)} are waiting.")


def test_a_send_of_no_zone_renders_now_on_the_servers_clock(pushsim_app, pushsim, django_capture_on_commit_callbacks):
    content = PushContentFactory(app=pushsim_app, body=PICKS)
    device = DeviceFactory(app=pushsim_app, platform="android", profile=ProfileFactory(timezone=other_day_zone()))
    sent(content, [device.profile], django_capture_on_commit_callbacks)
    [received] = pushsim.state.recent(token=device.token)
    assert received["body"] == f"Your picks for {weekday_in('UTC')} are waiting."


def test_a_send_at_each_profiles_local_time_renders_each_profiles_own_day(
    pushsim_app, pushsim, django_capture_on_commit_callbacks
):
    """At each profile's local time, every profile's ``now`` read UTC's day; each reads its own
    zone's, a profile without one (or with one unknown) the send's zone, as its local time falls back."""
    content = PushContentFactory(app=pushsim_app, body=PICKS)
    ahead, behind, none, unknown = (
        DeviceFactory(app=pushsim_app, platform="ios", profile=ProfileFactory(timezone=name))
        for name in (AHEAD, BEHIND, "", "Mars/Olympus")
    )
    # A wall time already past in every zone (a minute ago in the last one), sent however late.
    wall = (dt.datetime.now(ZoneInfo(BEHIND)) - dt.timedelta(minutes=1)).replace(tzinfo=None, microsecond=0)
    dispatch = sent(
        content,
        [d.profile for d in (ahead, behind, none, unknown)],
        django_capture_on_commit_callbacks,
        local_time=wall.isoformat(),
        local_default_timezone=AHEAD,
        time_zone=AHEAD,
    )
    assert dispatch.deliveries.filter(status="accepted").count() == 4
    days = {d: pushsim.state.recent(token=d.token)[0]["body"] for d in (ahead, behind, none, unknown)}
    assert days == {
        ahead: f"Your picks for {weekday_in(AHEAD)} are waiting.",
        behind: f"Your picks for {weekday_in(BEHIND)} are waiting.",
        none: f"Your picks for {weekday_in(AHEAD)} are waiting.",
        unknown: f"Your picks for {weekday_in(AHEAD)} are waiting.",
    }


OFFSET = "Sent at {{ 'now' | date: '%H:%M %z' }}."


def test_a_sends_now_is_an_aware_time_in_its_zone(pushsim_app, pushsim, django_capture_on_commit_callbacks):
    """``now`` in a send's zone was its wall-clock time without a zone: ``%z`` wrote nothing."""
    content = PushContentFactory(app=pushsim_app, body=OFFSET)
    device = DeviceFactory(app=pushsim_app, platform="ios", profile=ProfileFactory(timezone=""))
    sent(content, [device.profile], django_capture_on_commit_callbacks, time_zone="Asia/Kolkata")
    [received] = pushsim.state.recent(token=device.token)
    assert received["body"].endswith(" +0530.")


def test_a_send_of_no_zone_says_its_now_is_utc(pushsim_app, pushsim, django_capture_on_commit_callbacks):
    """A journey's send, or one made before a send had a zone, reads ``now`` on UTC's clock, and says so."""
    content = PushContentFactory(app=pushsim_app, body=OFFSET)
    device = DeviceFactory(app=pushsim_app, platform="android", profile=ProfileFactory(timezone="Asia/Kolkata"))
    sent(content, [device.profile], django_capture_on_commit_callbacks)
    [received] = pushsim.state.recent(token=device.token)
    assert received["body"].endswith(" +0000.")
