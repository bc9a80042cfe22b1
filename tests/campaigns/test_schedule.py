"""When occurrences fall, in the campaign's time zone: daylight-saving days, cron expressions that
never fire, and the beat firing each occurrence once."""

import datetime as dt
import html
from zoneinfo import ZoneInfo

import pytest
from django.core.exceptions import ValidationError

from campaigns.models import Campaign, Occurrence
from campaigns.services.lifecycle import campaign_approve, campaign_submit
from campaigns.services.scheduling import campaign_fire_due, campaigns_tick

PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")


@pytest.fixture
def approve(manager_alice, approver_bob):
    def run(campaign, now):
        campaign_submit(campaign_id=campaign.pk, by=manager_alice)
        campaign_approve(campaign_id=campaign.pk, by=approver_bob, now=now)
        return Campaign.objects.get(pk=campaign.pk)

    return run


def _beat(campaign, *, start: dt.datetime, end: dt.datetime) -> list[dt.datetime]:
    """Tick every minute from start to end; when the campaign's occurrences that sent were due (UTC).

    Times are compared and added in UTC: between two Paris times, Python compares and adds wall-clock
    times, blind to the hour the clock repeats."""
    now = start.astimezone(dt.UTC)  # in UTC: a minute added to a Paris time is a minute of its wall clock
    while now <= end:
        campaigns_tick(now=now)
        now += dt.timedelta(minutes=1)
    sent = Occurrence.objects.filter(campaign=campaign, outcome__in=("sent", "sent_late")).order_by("due_at")
    return [o.due_at for o in sent]


@pytest.mark.parametrize(
    ("tz", "cron", "day", "wall"),
    [
        (PARIS, "30 2 * * *", dt.date(2027, 10, 31), dt.time(2, 30)),
        (NEW_YORK, "30 1 * * *", dt.date(2027, 11, 7), dt.time(1, 30)),
    ],
)
def test_a_cron_time_that_happens_twice_on_the_fall_back_night_sends_once(make_campaign, approve, tz, cron, day, wall):
    start = dt.datetime.combine(day - dt.timedelta(days=1), wall, tzinfo=tz)
    campaign = approve(
        make_campaign(schedule_kind="recurring", recurrence="cron", cron=cron, time_zone=str(tz), send_at=start),
        now=start - dt.timedelta(hours=1),
    )
    first = dt.datetime.combine(day, wall, tzinfo=tz).astimezone(dt.UTC)  # the first of the two
    sent = _beat(campaign, start=first - dt.timedelta(minutes=2), end=first + dt.timedelta(hours=1, minutes=2))
    assert sent == [first]
    campaign.refresh_from_db()
    assert campaign.next_occurrence_at == dt.datetime.combine(day + dt.timedelta(days=1), wall, tzinfo=tz)


def test_a_cron_every_half_hour_keeps_its_pace_through_the_repeated_hour(make_campaign, approve):
    start = dt.datetime(2027, 10, 31, 1, 30, tzinfo=PARIS)
    campaign = approve(
        make_campaign(
            schedule_kind="recurring", recurrence="cron", cron="*/30 * * * *", time_zone="Europe/Paris", send_at=start
        ),
        now=start - dt.timedelta(hours=1),
    )
    start = start.astimezone(dt.UTC)
    sent = _beat(campaign, start=start, end=start + dt.timedelta(hours=3))
    assert [b - a for a, b in zip(sent, sent[1:], strict=False)] == [dt.timedelta(minutes=30)] * 6


def test_a_cron_time_skipped_on_the_spring_forward_night_sends_once_after_the_jump(make_campaign, approve):
    start = dt.datetime(2027, 3, 27, 2, 30, tzinfo=PARIS)
    campaign = approve(
        make_campaign(
            schedule_kind="recurring", recurrence="cron", cron="30 2 * * *", time_zone="Europe/Paris", send_at=start
        ),
        now=start - dt.timedelta(hours=1),
    )
    night = dt.datetime(2027, 3, 28, 1, 0, tzinfo=PARIS).astimezone(dt.UTC)
    sent = _beat(campaign, start=night, end=night + dt.timedelta(hours=3))
    assert len(sent) == 1 and night < sent[0] < night + dt.timedelta(hours=3)


# Europe/Paris on 2027-03-28, the last Sunday of March: the clocks go from 02:00 straight to 03:00.
SPRING_NIGHT = dt.date(2027, 3, 28)


@pytest.mark.parametrize(
    ("recurrence", "cron"), [("daily", ""), ("weekly", ""), ("monthly", ""), ("cron", "30 2 * * *")]
)
def test_a_time_the_clocks_skip_is_sent_at_the_first_minute_after_the_jump_and_the_occurrence_says_so(
    client, make_campaign, approve, viewer_carol, recurrence, cron
):
    start = dt.datetime(2027, 2, 28, 2, 30, tzinfo=PARIS)  # a Sunday, the 28th: each falls on the night
    campaign = approve(
        make_campaign(
            schedule_kind="recurring", recurrence=recurrence, cron=cron, time_zone="Europe/Paris", send_at=start
        ),
        now=dt.datetime(2027, 3, 27, 12, 0, tzinfo=PARIS),
    )
    three = dt.datetime(2027, 3, 28, 3, 0, tzinfo=PARIS)  # 01:00 UTC, when the clocks jump
    assert campaign.next_occurrence_at == three  # as cron and most schedulers do: not 03:30
    (occurrence,) = campaign_fire_due(campaign_id=campaign.pk, now=three + dt.timedelta(seconds=20))
    said = (
        "02:30 does not exist in Europe/Paris on 2027-03-28 (the clocks go from 02:00 to 03:00): "
        "due at 03:00, the first minute after"
    )
    assert (occurrence.outcome, occurrence.note) == ("sent", said)
    client.force_login(viewer_carol)
    listed = client.get(f"/admin/campaigns/occurrence/?campaign__id__exact={campaign.pk}").content.decode()
    assert "2027-03-28 03:00 (Europe/Paris)" in listed and said in html.unescape(listed)
    campaign.refresh_from_db()
    if recurrence == "daily":
        assert campaign.next_occurrence_at == dt.datetime(2027, 3, 29, 2, 30, tzinfo=PARIS)  # back to 02:30


@pytest.mark.parametrize("cron", ["0 3 * * *", "0 * * * *", "0 2,3 * * *"])
def test_a_time_after_the_jump_is_sent_at_its_time_and_says_nothing_of_it(make_campaign, approve, cron):
    """03:00 is the cron's own time: one it would have sent in the jump (02:00) is not moved there."""
    start = dt.datetime(2027, 3, 27, 3, 0, tzinfo=PARIS)
    campaign = approve(
        make_campaign(schedule_kind="recurring", recurrence="cron", cron=cron, time_zone="Europe/Paris", send_at=start),
        now=dt.datetime(2027, 3, 28, 1, 30, tzinfo=PARIS),
    )
    three = dt.datetime(2027, 3, 28, 3, 0, tzinfo=PARIS)
    (occurrence,) = campaign_fire_due(campaign_id=campaign.pk, now=three + dt.timedelta(seconds=20))
    assert (occurrence.due_at, occurrence.outcome, occurrence.note) == (three, "sent", "")


def test_the_next_send_says_what_a_time_the_clocks_skip_becomes(client, make_campaign, approve, viewer_carol):
    start = dt.datetime(2027, 3, 20, 2, 30, tzinfo=PARIS)
    campaign = approve(
        make_campaign(schedule_kind="recurring", recurrence="daily", time_zone="Europe/Paris", send_at=start),
        now=dt.datetime(2027, 3, 27, 12, 0, tzinfo=PARIS),
    )
    client.force_login(viewer_carol)
    page = html.unescape(client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode())
    assert (
        "2027-03-28 03:00 (Europe/Paris): 02:30 does not exist in Europe/Paris on 2027-03-28 (the clocks go from "
        "02:00 to 03:00)"
    ) in page


@pytest.mark.parametrize("cron", ["0 9 30 2 *", "0 9 31 4,6,9,11 *"])
def test_a_cron_that_never_fires_is_refused_naming_the_cron(make_campaign, cron):
    with pytest.raises(ValidationError) as error:
        make_campaign(
            schedule_kind="recurring",
            recurrence="cron",
            cron=cron,
            time_zone="Europe/Paris",
            send_at=dt.datetime(2027, 1, 1, 9, tzinfo=PARIS),
        )
    assert "never" in error.value.message_dict["cron"][0]


def test_a_schedule_with_no_occurrence_before_its_end_is_refused_naming_the_end(make_campaign):
    monday_cron = "0 9 * * 1"
    with pytest.raises(ValidationError) as error:
        make_campaign(
            schedule_kind="recurring",
            recurrence="cron",
            cron=monday_cron,
            time_zone="Europe/Paris",
            send_at=dt.datetime(2027, 1, 5, 9, tzinfo=PARIS),  # a Tuesday
            ends_at=dt.datetime(2027, 1, 8, 9, tzinfo=PARIS),  # the Friday
        )
    assert list(error.value.message_dict) == ["ends_at"]


def test_a_cron_with_a_field_of_seconds_is_refused(make_campaign):
    with pytest.raises(ValidationError) as error:
        make_campaign(
            schedule_kind="recurring",
            recurrence="cron",
            cron="0 9 * * * *",
            send_at=dt.datetime(2027, 1, 1, 9, tzinfo=dt.UTC),
        )
    assert "five-field" in error.value.message_dict["cron"][0]


def test_a_one_off_approved_after_its_time_is_sent_at_approval_not_as_missed_during_downtime(make_campaign, approve):
    now = dt.datetime(2027, 1, 4, 9, 10, tzinfo=PARIS)
    campaign = approve(
        make_campaign(schedule_kind="at", send_at=now - dt.timedelta(minutes=10), time_zone="Europe/Paris"), now=now
    )
    campaigns_tick(now=now + dt.timedelta(seconds=30))
    campaigns_tick(now=now + dt.timedelta(minutes=1, seconds=30))
    # How late, on the occurrence's line: it was no downtime, the approval came after its time.
    occurrence = Occurrence.objects.get(campaign=campaign)
    assert (occurrence.outcome, occurrence.note) == (
        "sent_at_approval",
        "approved 10 minutes after its time, within its window of 60 minutes",
    )
    assert occurrence.get_outcome_display() == "Send started at approval, after its scheduled time"


def test_a_one_off_approved_after_its_time_but_sent_only_after_downtime_says_downtime(make_campaign, approve):
    """Approved after its time, then the workers were down: what delayed it past the approval was downtime."""
    now = dt.datetime(2027, 1, 4, 9, 10, tzinfo=PARIS)
    campaign = approve(
        make_campaign(schedule_kind="at", send_at=now - dt.timedelta(minutes=10), time_zone="Europe/Paris"), now=now
    )
    campaigns_tick(now=now + dt.timedelta(minutes=20))
    occurrence = Occurrence.objects.get(campaign=campaign)
    assert (occurrence.outcome, occurrence.note) == (
        "sent_late",
        "sent 30 minutes late, within its window of 60 minutes",
    )
    assert occurrence.get_outcome_display() == "Send started late (missed during downtime)"


def test_the_migration_says_sent_at_approval_of_the_one_offs_sent_late_at_their_approval(make_campaign, approve):
    """Rows recorded before: sent late within minutes of an approval that came after their time were
    sent at approval; those sent late otherwise (downtime) keep the downtime label."""
    import importlib

    from django.apps import apps

    forwards = importlib.import_module("campaigns.migrations.0015_occurrence_sent_at_approval").forwards
    now = dt.datetime(2027, 1, 4, 9, 10, tzinfo=PARIS)
    at_approval = approve(
        make_campaign(name="A", schedule_kind="at", send_at=now - dt.timedelta(minutes=10), time_zone="Europe/Paris"),
        now=now,
    )
    downtime = approve(
        make_campaign(name="B", schedule_kind="recurring", recurrence="daily", send_at=now, time_zone="Europe/Paris"),
        now=now - dt.timedelta(days=1),
    )
    for campaign, due, fired in (
        (at_approval, now - dt.timedelta(minutes=10), now + dt.timedelta(seconds=20)),
        (downtime, now, now + dt.timedelta(minutes=30)),
    ):
        Occurrence.objects.create(
            campaign=campaign, due_at=due, fired_at=fired, outcome="sent_late", at_local_time=False
        )

    forwards(apps, None)

    assert dict(Occurrence.objects.values_list("campaign__name", "outcome")) == {
        "A": "sent_at_approval",
        "B": "sent_late",
    }


def test_a_one_off_whose_time_passed_long_before_its_approval_is_skipped_and_said(make_campaign, approve):
    now = dt.datetime(2027, 1, 4, 12, 0, tzinfo=PARIS)
    campaign = approve(
        make_campaign(schedule_kind="at", send_at=now - dt.timedelta(hours=3), time_zone="Europe/Paris"), now=now
    )
    campaigns_tick(now=now + dt.timedelta(seconds=30))
    campaigns_tick(now=now + dt.timedelta(minutes=1, seconds=30))
    occurrence = Occurrence.objects.get(campaign=campaign)
    assert occurrence.outcome == "skipped_missed"
    assert "window" in occurrence.note
    campaign.refresh_from_db()
    assert campaign.status == "failed"  # nothing of it was sent


def test_the_review_of_a_one_off_whose_time_passed_does_not_say_it_was_sent(
    client, make_campaign, manager_alice, approver_bob
):
    from django.utils import timezone

    from accounts.models import ApprovalRequest

    past = (timezone.now() - dt.timedelta(hours=2)).replace(second=0, microsecond=0)
    campaign = make_campaign(schedule_kind="at", send_at=past, time_zone="Europe/Paris")
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    client.force_login(approver_bob)
    review = client.get(f"/admin/accounts/approvalrequest/{ApprovalRequest.objects.get().pk}/review/").content.decode()
    when = f"{past.astimezone(PARIS):%Y-%m-%d %H:%M} (Europe/Paris)"
    assert f"Once, at {when}: that time has passed." in review
    assert "Sent once" not in review
    # What the approval will do with it: nothing is sent, its time is further past than the window.
    late = int((timezone.now() - past).total_seconds() // 60)
    assert any(
        f"Approved now, it is not sent: {minutes} minutes after its time is more than its missed-send window of 60 "
        "minutes, and the campaign completes without a send." in review
        for minutes in (late - 1, late)
    )


def test_the_review_of_a_one_off_whose_time_passed_within_its_window_says_approving_sends_it_at_once(
    client, make_campaign, manager_alice, approver_bob
):
    from django.utils import timezone

    past = (timezone.now() - dt.timedelta(minutes=20)).replace(second=0, microsecond=0)
    campaign = make_campaign(schedule_kind="at", send_at=past, time_zone="Europe/Paris", missed_window_minutes=45)
    request = campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    client.force_login(approver_bob)
    review = client.get(f"/admin/accounts/approvalrequest/{request.pk}/review/").content.decode()
    late = int((timezone.now() - past).total_seconds() // 60)
    assert any(
        f"Approved now, it is sent at once, {minutes} minutes after its time (within its missed-send window of 45 "
        "minutes)." in review
        for minutes in (late - 1, late)
    )


def test_the_review_of_a_local_time_campaign_under_way_says_which_zones_it_still_reaches(
    client, make_campaign, manager_alice, approver_bob
):
    """UTC+14 passed the time of day 8 hours ago: a send now skips the zones more than the window
    (60 minutes) past it, those ahead of UTC+07:00, and the zones behind get it at their own time."""
    from zoneinfo import ZoneInfo

    from django.utils import timezone

    from accounts.models import ApprovalRequest

    now = timezone.now()
    wall = (now.astimezone(ZoneInfo("Etc/GMT-14")) - dt.timedelta(hours=8)).replace(second=0, microsecond=0)
    began = wall.replace(tzinfo=dt.UTC) - dt.timedelta(hours=14)
    campaign = make_campaign(
        schedule_kind="at",
        send_at=wall.replace(tzinfo=None).replace(tzinfo=PARIS),
        time_zone="Europe/Paris",
        at_local_time=True,
    )
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    client.force_login(approver_bob)
    review = client.get(f"/admin/accounts/approvalrequest/{ApprovalRequest.objects.get().pk}/review/").content.decode()
    assert "that time has passed" not in review
    # 8 hours late (and the seconds since the minute), less the 60-minute window: the zones less than
    # 7 hours behind UTC+14 are past it by more than the window.
    assert (
        f"Its {wall:%Y-%m-%d %H:%M} is under way: UTC+14 reached it {began.astimezone(PARIS):%Y-%m-%d %H:%M} "
        f"(Europe/Paris); sent now, the time zones ahead of UTC+06:5"
    ) in review
    assert (
        " are past it by more than 60 minutes and are skipped (missed_local_time); the zones behind get it at "
        f"their own {wall:%H:%M}."
    ) in review


def test_a_local_time_campaign_sends_nothing_after_its_end_as_entered(make_campaign, approve):
    from campaigns.schedule import local_wall_time, next_occurrence

    nine = dt.datetime(2027, 1, 5, 9, 0, tzinfo=PARIS)
    campaign = approve(
        make_campaign(
            schedule_kind="recurring",
            recurrence="daily",
            send_at=nine,
            ends_at=dt.datetime(2027, 1, 7, 21, 0, tzinfo=PARIS),  # after the 7th's send, before the 8th's
            time_zone="Europe/Paris",
            at_local_time=True,
        ),
        now=nine - dt.timedelta(days=2),
    )
    walls, due = [], campaign.next_occurrence_at
    while due is not None:
        walls.append(local_wall_time(campaign, due))
        due = next_occurrence(campaign.approved(), after=due)
    assert walls == ["2027-01-05T09:00:00", "2027-01-06T09:00:00", "2027-01-07T09:00:00"]


def test_a_window_of_zero_minutes_still_sends_on_the_beat_and_only_skips_what_downtime_missed(make_campaign, approve):
    nine = dt.datetime(2027, 1, 5, 9, 0, tzinfo=PARIS)
    campaign = approve(
        make_campaign(
            schedule_kind="recurring",
            recurrence="daily",
            send_at=nine,
            time_zone="Europe/Paris",
            missed_window_minutes=0,
        ),
        now=nine - dt.timedelta(days=1),
    )
    campaigns_tick(now=nine + dt.timedelta(seconds=40))  # the beat's minute: on time
    campaigns_tick(now=nine + dt.timedelta(days=1, minutes=10))  # a worker was down for 10 minutes
    assert list(Occurrence.objects.filter(campaign=campaign).order_by("due_at").values_list("outcome", flat=True)) == [
        "sent",
        "skipped_missed",
    ]


def test_the_api_says_a_campaign_is_sent_at_each_profiles_local_time(
    make_campaign, approve, api_key_for, manager_alice
):
    nine = dt.datetime(2027, 1, 5, 9, 0, tzinfo=PARIS)
    campaign = approve(
        make_campaign(schedule_kind="at", send_at=nine, time_zone="Europe/Paris", at_local_time=True),
        now=nine - dt.timedelta(days=2),
    )
    body = api_key_for(manager_alice).get(f"/api/v1/campaigns/{campaign.pk}/").json()
    # send_at is the time of day in each profile's zone; the beat starts it when UTC+14 gets there.
    assert body["at_local_time"] is True
    assert (body["send_at"], body["time_zone"]) == ("2027-01-05T08:00:00Z", "Europe/Paris")
    assert body["next_occurrence_at"] == "2027-01-04T19:00:00Z"
    assert body["missed_window_minutes"] == 60


@pytest.mark.parametrize("name", ["localtime", "posixrules", "right/Europe/Paris", "posix/Europe/Paris", "Etc/GMT+14"])
def test_a_time_zone_that_is_no_iana_name_is_refused_naming_the_field(make_campaign, name):
    # localtime is the server's own zone; right/ counts leap seconds: a campaign's time would depend on them.
    with pytest.raises(ValidationError) as error:
        make_campaign(schedule_kind="at", send_at=dt.datetime(2027, 1, 5, 9, tzinfo=dt.UTC), time_zone=name)
    assert list(error.value.message_dict) == ["time_zone"]


@pytest.mark.parametrize("name", ["Asia/Kathmandu", "Pacific/Apia", "Pacific/Kiritimati", "Etc/GMT-14", "US/Eastern"])
def test_odd_but_real_time_zones_are_taken(make_campaign, name):
    campaign = make_campaign(schedule_kind="at", send_at=dt.datetime(2027, 1, 5, 9, tzinfo=dt.UTC), time_zone=name)
    assert campaign.time_zone == name


def test_a_skipped_occurrence_says_how_late_in_minutes(make_campaign, approve):
    nine = dt.datetime(2027, 1, 5, 9, 0, tzinfo=PARIS)
    campaign = approve(make_campaign(schedule_kind="at", send_at=nine), now=nine - dt.timedelta(days=1))
    campaigns_tick(now=nine + dt.timedelta(days=1, hours=2, minutes=3, seconds=12, microseconds=482913))
    note = Occurrence.objects.get(campaign=campaign).note
    assert note == "missed by 1,563 minutes, more than its window of 60 minutes"


def test_a_recurring_campaign_whose_end_has_passed_is_not_approved_into_silence(
    client, make_campaign, manager_alice, approver_bob
):
    from accounts.models import ApprovalRequest

    nine = dt.datetime(2027, 1, 5, 9, 0, tzinfo=PARIS)
    campaign = make_campaign(
        schedule_kind="recurring",
        recurrence="daily",
        send_at=nine,
        ends_at=nine + dt.timedelta(days=2),
        time_zone="Europe/Paris",
    )
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    with pytest.raises(ValidationError) as error:
        campaign_approve(campaign_id=campaign.pk, by=approver_bob, now=nine + dt.timedelta(days=3))
    assert "2027-01-07 09:00 (Europe/Paris)" in error.value.messages[0]
    assert Campaign.objects.get(pk=campaign.pk).status == "in_review"
    assert ApprovalRequest.objects.get().status == "pending"


def test_a_local_time_occurrence_open_now_is_the_latest_begun_with_the_longest_window():
    """The look-back of a send at each profile's local time (26 hours and the missed window) walked
    at most 10,000 occurrences, a cron every minute's for a window of 5 days: with 7 days it stopped
    short and took one begun 27 hours before for the one under way."""
    from campaigns.schedule import local_occurrence_open

    now = dt.datetime(2027, 3, 10, 12, 0, 30, tzinfo=dt.UTC)
    campaign = Campaign(
        schedule_kind="recurring",
        recurrence="cron",
        cron="* * * * *",
        send_at=dt.datetime(2027, 1, 1, tzinfo=dt.UTC),
        time_zone="UTC",
        at_local_time=True,
        missed_window_minutes=10_080,
    )
    assert local_occurrence_open(campaign, now=now) == dt.datetime(2027, 3, 10, 12, 0, tzinfo=dt.UTC)


def test_the_migration_lowers_windows_saved_longer_than_a_week_on_the_campaign_and_its_approved_version(
    make_campaign, approve
):
    import importlib

    from django.apps import apps

    forwards = importlib.import_module("campaigns.migrations.0016_missed_window_at_most_a_week").forwards
    nine = dt.datetime(2027, 1, 5, 9, 0, tzinfo=PARIS)
    long = approve(make_campaign(name="A", schedule_kind="recurring", recurrence="daily", send_at=nine), now=nine)
    short = approve(make_campaign(name="B", schedule_kind="recurring", recurrence="daily", send_at=nine), now=nine)
    draft = make_campaign(name="C")
    for campaign, minutes in ((long, 525_600), (short, 90), (draft, 20_000)):
        fields = {**(campaign.approved_version.get("fields") or {}), "missed_window_minutes": minutes}
        version = {**campaign.approved_version, "fields": fields} if campaign.approved_version else {}
        Campaign.objects.filter(pk=campaign.pk).update(missed_window_minutes=minutes, approved_version=version)

    forwards(apps, None)

    windows = {
        c.name: (c.missed_window_minutes, c.approved() and c.approved().missed_window_minutes)
        for c in Campaign.objects.all()
    }
    assert windows == {"A": (10_080, 10_080), "B": (90, 90), "C": (10_080, None)}
    assert Campaign.objects.get(pk=long.pk).approved().fingerprint == long.approved().fingerprint
