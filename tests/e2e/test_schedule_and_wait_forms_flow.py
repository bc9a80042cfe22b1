"""The forms that take a time: a campaign's schedule shows only the fields of the schedule chosen,
and a journey's waits are typed in minutes, hours or days; both are saved as chosen."""

import datetime as dt
import zoneinfo

import pytest
from django.utils import timezone

from accounts.services import access_grant
from audiences.models import Segment
from campaigns.models import Campaign
from delivery.models import PushContent
from delivery.services.contents import pushcontent_save
from journeys.models import Journey

pytestmark = pytest.mark.browser

SCHEDULE_FIELDS = ("send_at", "time_zone", "recurrence", "cron", "ends_at", "at_local_time", "missed_window_minutes")


def _shown(page) -> set[str]:
    return {name for name in SCHEDULE_FIELDS if page.is_visible(f".form-row.field-{name}")}


def test_the_dates_name_the_zone_as_it_is_typed(login, page, live_server, manager_alice):
    """Beside the first send and the end, the zone they are read in follows what is typed in Time
    zone and At local time, before the form is saved: a marketer changing the zone sees which
    zone the 09:00 beside it is now in."""
    login(manager_alice)
    page.goto(f"{live_server.url}/admin/campaigns/campaign/add/")
    page.select_option("#id_schedule_kind", "recurring")
    zones = page.locator(".schedule-zone")
    assert zones.all_inner_texts() == ["(UTC)", "(UTC)"]
    page.fill("#id_time_zone", "America/New_York")
    assert zones.all_inner_texts() == ["(America/New_York)", "(America/New_York)"]
    page.check("#id_at_local_time")
    assert zones.all_inner_texts() == ["(each profile's time zone; America/New_York for profiles without one)"] * 2
    page.uncheck("#id_at_local_time")
    page.fill("#id_time_zone", "")
    assert zones.all_inner_texts() == ["(UTC)", "(UTC)"]  # left empty, the schedule is read in UTC


def test_the_dates_help_names_each_profiles_zone_when_sent_at_local_time(login, page, live_server, manager_alice):
    """The help of the first send and the end said "in the campaign's time zone" with At local time
    ticked: it says each profile's own zone while the box is ticked, the campaign's when it is not."""
    login(manager_alice)
    page.goto(f"{live_server.url}/admin/campaigns/campaign/add/")
    page.select_option("#id_schedule_kind", "recurring")
    send_at, ends_at = page.locator(".field-send_at .help"), page.locator(".field-ends_at .help")
    campaigns = (
        "The (first) send, for 'at' and 'recurring', in the campaign's time zone.",
        "No occurrence after this (recurring), in the campaign's time zone.",
    )
    assert (send_at.inner_text(), ends_at.inner_text()) == campaigns
    page.check("#id_at_local_time")
    assert (send_at.inner_text(), ends_at.inner_text()) == (
        "The (first) send, for 'at' and 'recurring', at that time of day in each profile's own zone "
        "(the campaign's for profiles without one).",
        "No occurrence after this (recurring), in each profile's own zone (the campaign's for profiles without one).",
    )
    page.uncheck("#id_at_local_time")
    assert (send_at.inner_text(), ends_at.inner_text()) == campaigns


def test_a_zone_typed_that_is_no_time_zone_is_not_named_as_the_dates_zone(login, page, live_server, manager_alice):
    """A zone half typed ('Europe/Pari'), in other case ('europe/paris') or made up stood beside the
    dates as the zone they are read in, though saving refuses it: the dates now say it is no time
    zone until it is one, and the field offers the names it takes."""
    login(manager_alice)
    page.goto(f"{live_server.url}/admin/campaigns/campaign/add/")
    page.select_option("#id_schedule_kind", "at")
    zones = page.locator(".schedule-zone")
    for typed in ("Europe/Pari", "europe/paris", "Mars/Olympus"):
        page.fill("#id_time_zone", typed)
        assert zones.all_inner_texts() == [f"(no such time zone: “{typed}”)"] * 2, typed
    page.check("#id_at_local_time")
    assert (
        zones.all_inner_texts()
        == ["(each profile's time zone; no such time zone: “Mars/Olympus” for profiles without one)"] * 2
    )
    page.uncheck("#id_at_local_time")
    page.fill("#id_time_zone", "Europe/Paris")
    assert zones.all_inner_texts() == ["(Europe/Paris)", "(Europe/Paris)"]
    offered = page.evaluate("() => Array.from(document.getElementById('id_time_zone').list.options).map(o => o.value)")
    assert "Europe/Paris" in offered and "America/New_York" in offered and "UTC" in offered
    page.fill("#id_time_zone", "Mars/Olympus")
    page.fill("#id_name", "Zoned")
    page.click("input[name=_continue]")
    page.wait_for_selector(".errorlist")
    assert zones.all_inner_texts() == ["(no such time zone: “Mars/Olympus”)"] * 2  # as the form sent back draws it


def test_manager_sees_only_the_fields_of_the_schedule_chosen_and_saves_a_recurring_one(
    login, page, live_server, manager_alice, pushsim_app
):
    access_grant(obj=pushsim_app, to=manager_alice, by=None)
    segment = Segment.objects.create(name="Everyone", kind="static")
    access_grant(obj=segment, to=manager_alice, by=None)
    content = pushcontent_save(
        content=PushContent(app=pushsim_app, name="Weekly", title="Hi", body="News"), by=manager_alice
    )
    start = (timezone.now() + dt.timedelta(days=7)).date()
    end = start + dt.timedelta(days=60)

    login(manager_alice)
    page.goto(f"{live_server.url}/admin/campaigns/campaign/add/")
    page.fill("#id_name", "Monday news")
    page.select_option("#id_app", str(pushsim_app.pk))
    page.select_option("#id_segment", str(segment.pk))
    page.select_option("#id_content", str(content.pk))
    assert _shown(page) == set()  # "send when approved" has nothing to set
    page.select_option("#id_schedule_kind", "at")
    assert _shown(page) == {"send_at", "time_zone", "at_local_time", "missed_window_minutes"}
    page.select_option("#id_schedule_kind", "recurring")
    page.select_option("#id_recurrence", "weekly")
    assert _shown(page) == set(SCHEDULE_FIELDS) - {"cron"}  # the cron expression only for "Cron expression"
    page.select_option("#id_recurrence", "cron")
    assert "cron" in _shown(page)
    page.select_option("#id_kind", "api_triggered")  # per call: neither a schedule nor an audience
    assert _shown(page) == set() and not page.is_visible(".form-row.field-schedule_kind")
    assert not page.is_visible(".form-row.field-segment")
    schedule = page.locator("fieldset", has=page.locator(".form-row.field-schedule_kind"))
    assert not schedule.is_visible()  # not an empty "Schedule" heading either
    page.select_option("#id_kind", "scheduled")
    assert page.is_visible(".form-row.field-schedule_kind") and "cron" in _shown(page)
    assert schedule.is_visible()

    page.select_option("#id_recurrence", "weekly")
    page.fill("#id_send_at_0", start.isoformat())
    page.fill("#id_send_at_1", "08:30")
    page.fill("#id_time_zone", "Europe/Paris")
    page.fill("#id_ends_at_0", end.isoformat())
    page.fill("#id_ends_at_1", "23:00")
    page.click("input[name=_continue]")
    campaign = Campaign.objects.get(name="Monday news")
    page.wait_for_url(f"**/admin/campaigns/campaign/{campaign.pk}/change/**")
    paris = zoneinfo.ZoneInfo("Europe/Paris")
    assert campaign.schedule_kind == "recurring" and campaign.recurrence == "weekly" and campaign.cron == ""
    assert campaign.send_at == dt.datetime.combine(start, dt.time(8, 30), tzinfo=paris)
    assert campaign.ends_at == dt.datetime.combine(end, dt.time(23, 0), tzinfo=paris)

    # Opened again, the page shows the recurring schedule's fields as saved, and no cron field.
    assert _shown(page) == set(SCHEDULE_FIELDS) - {"cron"}
    assert page.input_value("#id_send_at_1") == "08:30" and page.input_value("#id_recurrence") == "weekly"

    # Switched to a cron expression: the field appears, and what is typed there is what is kept.
    page.select_option("#id_recurrence", "cron")
    page.fill("#id_cron", "30 8 * * 1-5")
    page.click("input[name=_continue]")
    page.wait_for_selector(".messagelist .success")
    campaign.refresh_from_db()
    assert campaign.recurrence == "cron" and campaign.cron == "30 8 * * 1-5"
    assert "cron" in _shown(page)


def test_manager_types_journey_waits_in_minutes_hours_and_days(login, page, live_server, manager_alice, pushsim_app):
    access_grant(obj=pushsim_app, to=manager_alice, by=None)
    segment = Segment.objects.create(name="Everyone", kind="static")
    access_grant(obj=segment, to=manager_alice, by=None)

    login(manager_alice)
    page.goto(f"{live_server.url}/admin/journeys/journey/add/")
    page.fill("#id_name", "Slow drip")
    page.select_option("#id_app", str(pushsim_app.pk))
    page.select_option("#id_entry_segment", str(segment.pk))
    for _ in range(4):
        page.click(".step-editor button.add-wait")
    waits = {
        "wait2": ("15", "60", "wait3"),  # 15 minutes
        "wait3": ("2", "3600", "wait4"),  # 2 hours
        "wait4": ("3", "86400", "wait5"),  # 3 days
        "wait5": ("90", "1", "end"),  # 90 seconds: no larger unit divides it
    }
    for step, (amount, unit, following) in waits.items():
        row = page.locator(f".step-editor .step-row[data-step={step}]")
        row.locator("select.wait-unit").select_option(unit)
        row.locator("input.wait-amount").fill(amount)
        row.locator("input.wait-amount").dispatch_event("change")
        row.locator("select.next-select").select_option(following)
    # The re-entry wait is typed the same way: an amount and a unit.
    page.select_option("#id_reentry", "after_wait")
    page.fill("#id_reentry_wait_seconds_0", "3")
    page.select_option("#id_reentry_wait_seconds_1", "3600")
    page.click("input[name=_continue]")
    journey = Journey.objects.get(name="Slow drip")
    page.wait_for_url(f"**/admin/journeys/journey/{journey.pk}/change/**")
    seconds = {s["id"]: s.get("seconds") for s in journey.versions.get().graph["steps"] if s["type"] == "wait"}
    assert seconds == {"wait2": 15 * 60, "wait3": 2 * 3600, "wait4": 3 * 86400, "wait5": 90}
    assert journey.versions.get().reentry_wait_seconds == 3 * 3600
    assert page.input_value("#id_reentry_wait_seconds_0") == "3"
    assert page.input_value("#id_reentry_wait_seconds_1") == "3600"

    # Opened again, each wait reads in its own unit, in the editor and in the drawing.
    for step, (amount, unit, _) in waits.items():
        row = page.locator(f".step-editor .step-row[data-step={step}]")
        assert row.locator("input.wait-amount").input_value() == amount
        assert row.locator("select.wait-unit").input_value() == unit
    drawn = page.locator("svg.journey-graph").text_content()
    assert "15 minutes" in drawn and "2 hours" in drawn and "3 days" in drawn and "90 s" in drawn

    # A change of unit keeps the amount: 2 hours become 2 days.
    page.locator(".step-editor .step-row[data-step=wait3] select.wait-unit").select_option("86400")
    page.click("input[name=_continue]")
    page.wait_for_selector(".messagelist .success")
    steps = {s["id"]: s for s in journey.versions.get().graph["steps"]}
    assert steps["wait3"]["seconds"] == 2 * 86400


ENTRY_FIELDS = ("entry_segment", "entry_every_hours", "entry_event")


def test_a_journeys_entry_shows_only_the_fields_of_the_entry_chosen(
    login, page, live_server, manager_alice, pushsim_app
):
    """The add page showed the segment, its reading every N hours ("Entry every hours") and the
    entry event at once, whichever entry was chosen; it shows those of the entry chosen, and the
    reading again is worded as what it does."""
    access_grant(obj=pushsim_app, to=manager_alice, by=None)
    segment = Segment.objects.create(name="Everyone", kind="static")
    access_grant(obj=segment, to=manager_alice, by=None)
    login(manager_alice)
    page.goto(f"{live_server.url}/admin/journeys/journey/add/")

    def shown() -> set[str]:
        return {name for name in ENTRY_FIELDS if page.is_visible(f".form-row.field-{name}")}

    assert shown() == {"entry_segment", "entry_every_hours"}
    assert (
        page.locator(".form-row.field-entry_every_hours label").inner_text() == "Read the segment again every (hours):"
    )
    page.select_option("#id_entry_kind", "event")
    assert shown() == {"entry_event"}
    page.fill("#id_name", "Thanks")
    page.select_option("#id_app", str(pushsim_app.pk))
    page.fill("#id_entry_event", "order_paid")
    page.click("input[name=_continue]")
    journey = Journey.objects.get(name="Thanks")
    page.wait_for_url(f"**/admin/journeys/journey/{journey.pk}/change/**")
    version = journey.versions.get()
    assert (version.entry_kind, version.entry_event, version.entry_segment_id) == ("event", "order_paid", None)
    assert shown() == {"entry_event"}  # opened again, as it was saved
    page.select_option("#id_entry_kind", "segment")
    assert shown() == {"entry_segment", "entry_every_hours"}
