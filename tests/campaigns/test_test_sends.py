"""A campaign's test send and its previews show what its sends will: the same texts, rendered with the
same context (every send of a campaign gives its content ``context.campaign.id`` and ``.name``)."""

import datetime as dt
import re
from zoneinfo import ZoneInfo

import pytest

from accounts.services import access_grant
from campaigns.review import campaign_phones_html
from campaigns.services.lifecycle import campaign_create
from campaigns.services.scheduling import campaign_test_send
from tests.factories import DeviceFactory, PushContentFactory, SegmentFactory
from tests.pages import form_token_of

pytestmark = pytest.mark.django_db


@pytest.fixture
def named_campaign(pushsim_app, manager_alice):
    access_grant(obj=pushsim_app, to=manager_alice, by=None)
    segment = SegmentFactory(name="Everyone", created_by=manager_alice)
    access_grant(obj=segment, to=manager_alice, by=None)
    content = PushContentFactory(
        app=pushsim_app,
        title="{{ context.campaign.name }}",
        body="Hello {{ profile.attributes.first_name | default: 'there' }}",
        data={"campaign": "{{ context.campaign.id }}"},
    )
    return campaign_create(
        by=manager_alice, name="Spring sale", app=pushsim_app, segment=segment, content=content, kind="scheduled"
    )


def test_a_campaigns_test_send_gives_its_content_the_campaign_as_its_sends_do(
    named_campaign, pushsim, manager_alice, django_capture_on_commit_callbacks
):
    tester = DeviceFactory(app=named_campaign.app, is_test=True, platform="ios")
    with django_capture_on_commit_callbacks(execute=True):
        (dispatch,) = campaign_test_send(campaign_id=named_campaign.pk, by=manager_alice)
    dispatch.refresh_from_db()
    assert (dispatch.kind, dispatch.accepted) == ("test", 1)
    (received,) = pushsim.state.recent(token=tester.token)
    assert received["title"] == "Spring sale"
    assert received["payload"]["campaign"] == str(named_campaign.pk)


def test_a_campaigns_phones_show_its_content_with_the_campaign_as_its_sends_do(named_campaign):
    assert "Spring sale" in campaign_phones_html(named_campaign, reader=None)


def test_a_campaigns_test_send_sends_each_variants_content(
    named_campaign, pushsim, manager_alice, django_capture_on_commit_callbacks
):
    """An A/B campaign's testers see every variant the audience may get, each under its label."""
    from tests.campaigns.helpers import variants_set

    app = named_campaign.app
    other = PushContentFactory(app=app, name="Sale B", title="B for {{ context.campaign.name }}", body="Hi")
    variants_set(named_campaign, manager_alice, [named_campaign.content, other], [45, 45], 10)
    tester = DeviceFactory(app=app, is_test=True, platform="android")
    with django_capture_on_commit_callbacks(execute=True):
        dispatches = campaign_test_send(campaign_id=named_campaign.pk, by=manager_alice)
    assert [d.label for d in dispatches] == [
        f"Test of Spring sale, variant A ({named_campaign.content.name})",
        "Test of Spring sale, variant B (Sale B)",
    ]
    received = sorted(r["title"] for r in pushsim.state.recent(token=tester.token))
    assert received == ["B for Spring sale", "Spring sale"]


def test_a_test_push_waiting_for_its_retry_is_not_sent_to_a_phone_taken_off_the_test_list(
    named_campaign, pushsim, manager_alice, admin_erin, settings, monkeypatch
):
    """A test send is unapproved content for the test list alone. A phone marked a tester by mistake
    (someone's own phone) and unmarked while its test waited for a retry (the provider answered 503)
    gets nothing when the retry comes: its row is skipped saying why."""
    from django_q.conf import Conf

    from delivery.models import Delivery
    from delivery.services.devices import devices_test_flag_set
    from delivery.services.dispatches import dispatch_prepare
    from delivery.services.sending import dispatch_send

    monkeypatch.setattr(Conf, "SYNC", False)  # the retry is scheduled, not awaited here
    settings.PUSHDESK_SEND_TASK_SECONDS = 2
    tester = DeviceFactory(app=named_campaign.app, is_test=True, platform="android")
    pushsim.state.faults.rate_503 = 1.0
    pushsim.state.faults.retry_after = 3600
    (dispatch,) = campaign_test_send(campaign_id=named_campaign.pk, by=manager_alice)
    dispatch_prepare(dispatch_id=dispatch.pk)
    dispatch_send(dispatch_id=dispatch.pk)
    row = Delivery.objects.get(dispatch=dispatch)
    assert (row.status, row.attempts) == ("queued", 1)
    devices_test_flag_set(device_ids=[tester.pk], is_test=False, by=admin_erin)
    pushsim.state.faults.rate_503 = 0.0
    Delivery.objects.filter(pk=row.pk).update(
        next_attempt_at=row.next_attempt_at - dt.timedelta(hours=2)
    )  # its hour passed
    dispatch_send(dispatch_id=dispatch.pk)
    row.refresh_from_db()
    assert (row.status, row.reason) == ("skipped", "not_test_device")
    assert pushsim.state.count(tester.token) == 0


PICKS = "Your picks for {{ 'now' | date: '%A' }} are waiting."


@pytest.fixture
def picks_campaign(named_campaign):
    """A campaign whose body names the day it is rendered on (as the demo's), scheduled at 09:00 in
    Paris three days from now: another weekday than today's."""
    from campaigns.services.lifecycle import campaign_update

    named_campaign.content.body = PICKS
    named_campaign.content.save(update_fields=["body"])
    day = dt.datetime.now(ZoneInfo("Europe/Paris")).date() + dt.timedelta(days=3)
    send_at = dt.datetime.combine(day, dt.time(9), tzinfo=ZoneInfo("Europe/Paris"))
    return campaign_update(
        campaign_id=named_campaign.pk,
        by=named_campaign.owner,
        schedule_kind="at",
        send_at=send_at,
        time_zone="Europe/Paris",
    )


def test_a_scheduled_campaigns_previews_render_now_as_of_its_send_and_say_so(
    picks_campaign, client, manager_alice, approver_bob
):
    """Previewed on a Sunday, a campaign sending on Monday showed "Your picks for Sunday": the
    approver signed off a text the phones would not get. Its page and its review render the
    content's ``now`` as of its send, and say which moment they show."""
    from campaigns.services.lifecycle import campaign_approve, campaign_submit, campaign_update

    send_at = picks_campaign.send_at.astimezone(ZoneInfo("Europe/Paris"))
    weekday, today = f"{send_at:%A}", f"{dt.datetime.now(dt.UTC):%A}"
    moment = f"as of its send at {send_at:%Y-%m-%d} 09:00 (Europe/Paris)"
    page_url = f"/admin/campaigns/campaign/{picks_campaign.pk}/change/"
    client.force_login(manager_alice)
    page = client.get(page_url).content.decode()
    assert f"Your picks for {weekday} are waiting." in page and f"Your picks for {today}" not in page
    assert moment in page

    request = campaign_submit(campaign_id=picks_campaign.pk, by=manager_alice)
    access_grant(obj=picks_campaign.app, to=approver_bob, by=None)
    client.force_login(approver_bob)
    review = client.get(f"/admin/accounts/approvalrequest/{request.pk}/review/").content.decode()
    assert f"Your picks for {weekday} are waiting." in review and moment in review

    campaign_approve(campaign_id=picks_campaign.pk, by=approver_bob)  # its next send is now set: the same
    client.force_login(manager_alice)
    page = client.get(page_url).content.decode()
    assert f"Your picks for {weekday} are waiting." in page and moment in page

    # A revision sending a day later: its preview is of its own send, the approved version's of its.
    later = send_at + dt.timedelta(days=1)
    campaign_update(campaign_id=picks_campaign.pk, by=manager_alice, send_at=later)
    page = client.get(page_url).content.decode()
    start = page.index('class="approved-phones"')
    end = page.index("</p>", page.index('class="preview-moment"', start))
    approved, revision = page[start:end], page[:start] + page[end:]
    assert f"Your picks for {later:%A} are waiting." in revision and f"at {later:%Y-%m-%d} 09:00" in revision
    assert f"Your picks for {weekday} are waiting." in approved and moment in approved


def test_a_preview_of_content_without_now_says_no_moment(named_campaign, client, manager_alice):
    from campaigns.services.lifecycle import campaign_update

    send_at = dt.datetime.now(ZoneInfo("Europe/Paris")) + dt.timedelta(days=3)
    campaign_update(campaign_id=named_campaign.pk, by=manager_alice, schedule_kind="at", send_at=send_at)
    client.force_login(manager_alice)
    page = client.get(f"/admin/campaigns/campaign/{named_campaign.pk}/change/").content.decode()
    assert "Spring sale" in page and "as of its send" not in page


def test_a_campaign_sent_when_approved_or_by_the_api_previews_the_real_now(named_campaign, manager_alice):
    from campaigns.services.lifecycle import campaign_update

    named_campaign.content.body = PICKS
    named_campaign.content.save(update_fields=["body"])
    today = f"Your picks for {dt.datetime.now(dt.UTC):%A} are waiting."
    shown = campaign_phones_html(named_campaign, reader=manager_alice)
    assert today in shown and "as of" not in shown
    triggered = campaign_update(campaign_id=named_campaign.pk, by=manager_alice, kind="api_triggered", segment=None)
    shown = campaign_phones_html(triggered, reader=manager_alice)
    assert today in shown and "as of" not in shown


def test_a_send_renders_the_real_now_whatever_its_previews_show(
    picks_campaign, pushsim, manager_alice, django_capture_on_commit_callbacks
):
    assert f"Your picks for {picks_campaign.send_at:%A}" in campaign_phones_html(picks_campaign, reader=manager_alice)
    tester = DeviceFactory(app=picks_campaign.app, is_test=True, platform="ios")
    with django_capture_on_commit_callbacks(execute=True):
        campaign_test_send(campaign_id=picks_campaign.pk, by=manager_alice)
    (received,) = pushsim.state.recent(token=tester.token)
    assert received["body"] == f"Your picks for {dt.datetime.now(ZoneInfo('Europe/Paris')):%A} are waiting."


# 26 hours apart: at any moment one of them shows another day than UTC's.
AHEAD, BEHIND = "Pacific/Kiritimati", "Etc/GMT+12"


def other_day_zone() -> str:
    """A zone whose day is not UTC's now, by hours either side (UTC+14 from noon UTC, UTC−12 before)."""
    return AHEAD if dt.datetime.now(dt.UTC).hour >= 12 else BEHIND


def test_a_campaigns_sends_render_now_in_its_time_zone(
    named_campaign, pushsim, manager_alice, approver_bob, django_capture_on_commit_callbacks
):
    """A campaign's send, its test send and its API-triggered stream read ``now`` on the server's
    clock (UTC): a campaign in Europe/Paris sending at 00:30 on a Monday said "Sunday". Each reads
    it in the campaign's time zone, the one its schedule was entered in."""
    from campaigns.services.lifecycle import campaign_approve, campaign_submit, campaign_update
    from campaigns.services.scheduling import campaign_fire_due
    from campaigns.services.triggers import campaign_trigger
    from delivery.models import Dispatch
    from delivery.services.dispatches import dispatch_prepare
    from delivery.services.sending import dispatch_send
    from tests.factories import ProfileFactory

    zone = other_day_zone()
    day = f"Your picks for {dt.datetime.now(ZoneInfo(zone)):%A} are waiting."
    assert day != f"Your picks for {dt.datetime.now(dt.UTC):%A} are waiting."
    named_campaign.content.body = PICKS
    named_campaign.content.save(update_fields=["body"])
    access_grant(obj=named_campaign.app, to=approver_bob, by=None)
    campaign = campaign_update(
        campaign_id=named_campaign.pk,
        by=manager_alice,
        schedule_kind="at",
        send_at=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1),
        time_zone=zone,
    )
    phone = DeviceFactory(app=campaign.app, platform="android", profile=ProfileFactory(locale="fr"))
    tester = DeviceFactory(app=campaign.app, is_test=True, platform="ios")
    with django_capture_on_commit_callbacks(execute=True):
        campaign_test_send(campaign_id=campaign.pk, by=manager_alice)
    assert pushsim.state.recent(token=tester.token)[0]["body"] == day

    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_approve(campaign_id=campaign.pk, by=approver_bob)
    campaign.refresh_from_db()
    with django_capture_on_commit_callbacks(execute=False):
        (fired,) = campaign_fire_due(campaign_id=campaign.pk, now=campaign.next_occurrence_at)
        dispatch_prepare(dispatch_id=fired.dispatch.pk)
    dispatch_send(dispatch_id=fired.dispatch.pk)
    assert fired.dispatch.time_zone == zone
    assert pushsim.state.recent(token=phone.token)[0]["body"] == day

    triggered = campaign_update(
        campaign_id=campaign.pk, by=manager_alice, kind="api_triggered", segment=None, schedule_kind="now"
    )
    campaign_submit(campaign_id=triggered.pk, by=manager_alice)
    campaign_approve(campaign_id=triggered.pk, by=approver_bob)
    with django_capture_on_commit_callbacks(execute=False):
        campaign_trigger(
            campaign_id=triggered.pk,
            by=manager_alice,
            recipients=[{"external_id": phone.profile.external_id}],
            context={},
        )
    stream = Dispatch.objects.get(kind=Dispatch.Kind.API_TRIGGER, source_id=campaign.pk)
    assert stream.time_zone == zone


def test_a_test_send_pressed_on_the_campaigns_page_links_to_its_sends(client, named_campaign, manager_alice):
    """The message named the test sends it started, and the campaign's page lists no test send:
    the way on to what they became was the dispatch list, found alone. It links each one."""
    from delivery.models import Dispatch
    from tests.campaigns.helpers import variants_set

    other = PushContentFactory(app=named_campaign.app, name="Sale B", title="B", body="Hi")
    variants_set(named_campaign, manager_alice, [named_campaign.content, other], [50, 50])
    DeviceFactory(app=named_campaign.app, is_test=True, platform="ios")
    client.force_login(manager_alice)
    answer = _press_test_send(client, named_campaign, _test_send_token(client, named_campaign))
    page = answer.content.decode()
    dispatches = Dispatch.objects.filter(kind="test").order_by("pk")
    assert dispatches.count() == 2
    for dispatch in dispatches:
        assert f'<a href="/admin/delivery/dispatch/{dispatch.pk}/change/">{dispatch}</a>' in page


def _ask_test_send(client, campaign):
    """The campaign page's Test send pressed: the question it asks first."""
    return client.post(f"/admin/campaigns/campaign/{campaign.pk}/transition/test_send/", follow=True)


def _test_send_token(client, campaign) -> str:
    """The one-time token of the question Test send asks first, as the page draws it."""
    return form_token_of(_ask_test_send(client, campaign).content)


def _press_test_send(client, campaign, token):
    """The question's Yes, posted with ``token``."""
    return client.post(
        f"/admin/campaigns/campaign/{campaign.pk}/transition/test_send/",
        {"confirmed": "yes", "form_token": token},
        follow=True,
    )


@pytest.mark.presses("campaigns.campaign:transition/test_send")
def test_test_send_asks_first_saying_how_many_phones_it_reaches_and_yes_sends(
    client, named_campaign, manager_alice, django_capture_on_commit_callbacks
):
    """The campaign page's Test send sent at once, where the push content list's Send a test asks
    first naming how many phones it reaches: it asks the same question, and its Yes sends."""
    from delivery.models import Dispatch

    for platform in ("ios", "android", "ios"):
        DeviceFactory(app=named_campaign.app, is_test=True, platform=platform)
    DeviceFactory(app=named_campaign.app, is_test=True, active=False)  # a dead phone gets nothing: not counted
    DeviceFactory(app=named_campaign.app)  # not a test device
    client.force_login(manager_alice)
    asked = _ask_test_send(client, named_campaign)
    page = asked.content.decode()
    assert asked.status_code == 200 and 'id="lifecycle-question"' in page
    assert "Test send campaign “Spring sale”?" in page
    assert "It reaches 3 phones: the active test devices of its app." in page
    assert not Dispatch.objects.exists()  # asked, nothing sent
    with django_capture_on_commit_callbacks(execute=False):
        answer = _press_test_send(client, named_campaign, form_token_of(page))
    (dispatch,) = Dispatch.objects.filter(kind="test")
    assert "Test send started" in answer.content.decode()
    assert f'<a href="/admin/delivery/dispatch/{dispatch.pk}/change/">{dispatch}</a>' in answer.content.decode()


@pytest.mark.presses("campaigns.campaign:transition/test_send")
def test_test_send_of_a_campaign_with_variants_says_each_phone_gets_each(client, named_campaign, manager_alice):
    from tests.campaigns.helpers import variants_set

    other = PushContentFactory(app=named_campaign.app, name="Sale B", title="B", body="Hi")
    variants_set(named_campaign, manager_alice, [named_campaign.content, other], [50, 50])
    DeviceFactory(app=named_campaign.app, is_test=True, platform="ios")
    client.force_login(manager_alice)
    page = _ask_test_send(client, named_campaign).content.decode()
    assert "It reaches 1 phone: the active test devices of its app." in page
    assert "one test send per variant (2): each phone gets each" in page


@pytest.mark.presses("campaigns.campaign:transition/test_send")
def test_a_viewer_pressing_test_send_is_refused_without_a_question_and_nothing_is_sent(
    client, named_campaign, viewer_carol
):
    from accounts.form_tokens import form_token_issue
    from delivery.models import Dispatch

    DeviceFactory(app=named_campaign.app, is_test=True, platform="ios")
    access_grant(obj=named_campaign.app, to=viewer_carol, by=None)
    client.force_login(viewer_carol)
    assert b'value="test_send"' not in client.get(f"/admin/campaigns/campaign/{named_campaign.pk}/change/").content
    asked = client.post(f"/admin/campaigns/campaign/{named_campaign.pk}/transition/test_send/")
    assert asked.status_code == 403 and b"lifecycle-question" not in asked.content
    token = form_token_issue(user=viewer_carol, purpose="campaigns.campaign:test_send", subject=str(named_campaign.pk))
    forged = client.post(
        f"/admin/campaigns/campaign/{named_campaign.pk}/transition/test_send/",
        {"confirmed": "yes", "form_token": token},
    )
    assert forged.status_code == 403
    assert not Dispatch.objects.exists()


@pytest.mark.presses("campaigns.campaign:transition/test_send")
def test_test_send_answered_twice_on_one_question_sends_once_and_links_the_first(client, named_campaign, manager_alice):
    """A double click posts the question's Yes twice: the second sends nothing and links the dispatch."""
    from delivery.models import Dispatch

    DeviceFactory(app=named_campaign.app, is_test=True, platform="ios")
    client.force_login(manager_alice)
    token = _test_send_token(client, named_campaign)
    _press_test_send(client, named_campaign, token)
    again = _press_test_send(client, named_campaign, token)
    (dispatch,) = Dispatch.objects.filter(kind="test")
    page = again.content.decode()
    assert again.status_code == 200 and "This test send was started already" in page
    assert "Nothing was sent again; press Test send again to send another test." in page
    assert f'<a href="/admin/delivery/dispatch/{dispatch.pk}/change/">{dispatch}</a>' in page


@pytest.mark.presses("campaigns.campaign:transition/test_send")
def test_test_send_answered_on_two_questions_sends_twice(client, named_campaign, manager_alice):
    from delivery.models import Dispatch

    DeviceFactory(app=named_campaign.app, is_test=True, platform="ios")
    client.force_login(manager_alice)
    for _ in range(2):
        _press_test_send(client, named_campaign, _test_send_token(client, named_campaign))
    assert Dispatch.objects.filter(kind="test").count() == 2


@pytest.mark.parametrize("token", ["", "forged", "another campaign's"])
def test_test_send_without_its_questions_token_is_refused_saying_so(client, named_campaign, manager_alice, token):
    from delivery.models import Dispatch

    DeviceFactory(app=named_campaign.app, is_test=True, platform="ios")
    client.force_login(manager_alice)
    if token == "another campaign's":
        from accounts.form_tokens import form_token_issue

        token = form_token_issue(
            user=manager_alice, purpose="campaigns.campaign:test_send", subject=str(named_campaign.pk + 1)
        )
    answer = _press_test_send(client, named_campaign, token)
    assert answer.status_code == 200 and "nothing was done" in answer.content.decode()
    assert not Dispatch.objects.exists()


def next_monday_at(wall: dt.time, zone: str) -> dt.datetime:
    """The next Monday (not today) at ``wall`` in ``zone``."""
    today = dt.datetime.now(ZoneInfo(zone)).date()
    monday = today + dt.timedelta(days=7 - today.weekday())
    return dt.datetime.combine(monday, wall, tzinfo=ZoneInfo(zone))


@pytest.mark.parametrize("at_local_time", [False, True], ids=["in_paris", "at_each_profiles_local_time"])
def test_a_paris_campaign_sending_at_00_30_on_monday_previews_monday_as_its_send_renders_it(
    picks_campaign, client, manager_alice, approver_bob, at_local_time
):
    """Its previews rendered the moment of its send on the server's clock (UTC): 23:30 on Sunday.
    Its page, the approver's review, its approved version's preview and the send itself read Monday,
    the day in the zone the send is scheduled in (at each profile's local time: the wall-clock time
    every zone sends at)."""
    from campaigns.services.lifecycle import campaign_approve, campaign_submit, campaign_update
    from campaigns.services.scheduling import campaign_fire_due
    from delivery.personalization import rendered_as_of
    from delivery.services.sending import message_renderer

    monday = "Your picks for Monday are waiting."
    campaign = campaign_update(
        campaign_id=picks_campaign.pk,
        by=manager_alice,
        send_at=next_monday_at(dt.time(0, 30), "Europe/Paris"),
        at_local_time=at_local_time,
    )
    page_url = f"/admin/campaigns/campaign/{campaign.pk}/change/"
    client.force_login(manager_alice)
    page = client.get(page_url).content.decode()
    assert monday in page and "Sunday" not in page

    request = campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    access_grant(obj=campaign.app, to=approver_bob, by=None)
    client.force_login(approver_bob)
    review = client.get(f"/admin/accounts/approvalrequest/{request.pk}/review/").content.decode()
    assert monday in review and "Sunday" not in review

    campaign_approve(campaign_id=campaign.pk, by=approver_bob)
    campaign.refresh_from_db()
    client.force_login(manager_alice)
    page = client.get(page_url).content.decode()
    assert monday in page and "Sunday" not in page

    # The send renders what the previews show, as of its moment.
    (fired,) = campaign_fire_due(campaign_id=campaign.pk, now=campaign.next_occurrence_at)
    spec = fired.dispatch.content_spec
    profiles = [{"timezone": name, "attributes": {}} for name in ("", "Asia/Tokyo", "America/New_York")]
    for profile in profiles if at_local_time else profiles[:1]:
        zone = ZoneInfo(profile["timezone"] or "Europe/Paris")
        moment = dt.datetime.combine(next_monday_at(dt.time(0, 30), "Europe/Paris").date(), dt.time(0, 30), zone)
        with rendered_as_of(moment):
            sent = message_renderer(spec, fired.dispatch)(spec, profile=profile, context={})
        assert sent.body == monday


def test_an_api_triggered_campaigns_preview_reads_the_real_now_in_its_zone(named_campaign, manager_alice):
    from campaigns.services.lifecycle import campaign_update

    named_campaign.content.body = PICKS
    named_campaign.content.save(update_fields=["body"])
    zone = other_day_zone()
    triggered = campaign_update(
        campaign_id=named_campaign.pk, by=manager_alice, kind="api_triggered", segment=None, time_zone=zone
    )
    shown = campaign_phones_html(triggered, reader=manager_alice)
    assert f"Your picks for {dt.datetime.now(ZoneInfo(zone)):%A} are waiting." in shown and "as of" not in shown


def test_a_dispatchs_page_shows_its_content_as_its_zone_reads_now(
    named_campaign, client, manager_alice, django_capture_on_commit_callbacks
):
    named_campaign.content.body = PICKS
    named_campaign.content.save(update_fields=["body"])
    zone = other_day_zone()
    DeviceFactory(app=named_campaign.app, is_test=True, platform="ios")
    named_campaign.time_zone = zone
    named_campaign.save(update_fields=["time_zone"])
    with django_capture_on_commit_callbacks(execute=False):
        (dispatch,) = campaign_test_send(campaign_id=named_campaign.pk, by=manager_alice)
    client.force_login(manager_alice)
    page = client.get(f"/admin/delivery/dispatch/{dispatch.pk}/change/").content.decode()
    assert f"Your picks for {dt.datetime.now(ZoneInfo(zone)):%A} are waiting." in page


def test_a_campaigns_preview_says_its_nows_offset(named_campaign, manager_alice):
    """``now`` in the campaign's zone was a wall-clock time without a zone: ``%z`` showed nothing."""
    from campaigns.services.lifecycle import campaign_update

    named_campaign.content.body = "Sent at {{ 'now' | date: '%H:%M %z' }}."
    named_campaign.content.save(update_fields=["body"])
    triggered = campaign_update(
        campaign_id=named_campaign.pk, by=manager_alice, kind="api_triggered", segment=None, time_zone="Asia/Kolkata"
    )
    shown = campaign_phones_html(triggered, reader=manager_alice)
    assert re.search(r"Sent at \d\d:\d\d \+0530\.", shown)
