"""A campaign's occurrences: its page lists the latest 20, newest first, with the count of all and a
link to their list, which pages, filters and holds only the occurrences of campaigns the reader may
see. A campaign recurring every minute records 1,440 a day: the page listed every one (50,000 took
100 s to draw, in 69 MB), and a page of more than about 490 could not be saved (a browser posts
two fields per row, past Django's 1,000)."""

import datetime as dt
import re
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth.models import Group
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.services import access_grant, access_revoke
from campaigns.models import Campaign, Occurrence
from campaigns.occurrence_admin import LATEST_OCCURRENCES
from campaigns.services.lifecycle import campaign_approve, campaign_submit
from campaigns.services.scheduling import campaign_fire_due
from tests.pages import page_form

pytestmark = pytest.mark.django_db

KATHMANDU = ZoneInfo("Asia/Kathmandu")  # UTC+05:45: a time shown in UTC cannot read as local


def _page(campaign) -> str:
    return f"/admin/campaigns/campaign/{campaign.pk}/change/"


def _list(campaign=None, **filters) -> str:
    query = {"campaign__id__exact": campaign.pk} if campaign is not None else {}
    query.update(filters)
    return "/admin/campaigns/occurrence/?" + "&".join(f"{k}={v}" for k, v in query.items())


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)).replace("&#x27;", "'").strip()


def _inline_dues(page: str) -> list[str]:
    """The Due at cells of the campaign page's occurrences, in their order."""
    return [_text(cell.split("</td>")[0]) for cell in page.split('<td class="field-due">')[1:]]


def _list_dues(page: str) -> list[str]:
    """The Due at cells of the occurrences' list, in their order."""
    return [_text(cell.split("</th>")[0]) for cell in page.split('<th class="field-due">')[1:]]


def _heading(page: str) -> str:
    start = page.index(">", page.index('id="occurrences-heading"')) + 1
    return page[start : page.index("</h2>", start)]


def _recurring(make_campaign, manager_alice, approver_bob, *, start, cron, **fields) -> Campaign:
    campaign = make_campaign(
        schedule_kind="recurring", recurrence="cron", cron=cron, send_at=start, time_zone="Asia/Kathmandu", **fields
    )
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_approve(campaign_id=campaign.pk, by=approver_bob, now=start - dt.timedelta(days=1))
    return Campaign.objects.get(pk=campaign.pk)


def _back_after(campaign, downtime: dt.timedelta) -> list[Occurrence]:
    """The scheduler back after ``downtime``: each occurrence missed meanwhile is recorded as skipped,
    the one due now is sent."""
    due = Campaign.objects.get(pk=campaign.pk).next_occurrence_at
    return campaign_fire_due(campaign_id=campaign.pk, now=due + downtime)


@pytest.fixture
def minutely(make_campaign, manager_alice, approver_bob):
    """A campaign whose cron fires every minute, from 2027-03-01 09:00 in Kathmandu."""
    start = dt.datetime(2027, 3, 1, 9, 0, tzinfo=KATHMANDU)
    return _recurring(make_campaign, manager_alice, approver_bob, start=start, cron="* * * * *")


@pytest.fixture
def hourly(make_campaign, manager_alice, approver_bob):
    """A campaign due every hour since 65½ hours ago: 60 hours missed (skipped), then each sent on
    time: 66 occurrences, 6 sent. None is due within half an hour of a filter's bound."""
    start = (timezone.now() - dt.timedelta(hours=65, minutes=30)).replace(second=0, microsecond=0)
    minute = start.astimezone(KATHMANDU).minute
    campaign = _recurring(make_campaign, manager_alice, approver_bob, start=start, cron=f"{minute} * * * *")
    _back_after(campaign, dt.timedelta(hours=60))
    for _ in range(5):
        _back_after(campaign, dt.timedelta(0))
    assert campaign.occurrences.count() == 66
    return campaign


def test_the_campaign_page_lists_the_latest_occurrences_in_as_many_queries_however_many_there_are(
    client, minutely, manager_alice
):
    client.force_login(manager_alice)
    _back_after(minutely, dt.timedelta(minutes=4))  # 5 occurrences
    client.get(_page(minutely))
    with CaptureQueriesContext(connection) as few:
        page = client.get(_page(minutely)).content.decode()
    assert len(_inline_dues(page)) == 5
    assert "Occurrences, newest first: all 5 — their list, with filters" in _text(_heading(page))

    _back_after(minutely, dt.timedelta(minutes=600))  # a night down: 601 more
    assert minutely.occurrences.count() == 606
    with CaptureQueriesContext(connection) as many:
        page = client.get(_page(minutely)).content.decode()
    assert len(many) == len(few), [q["sql"][:120] for q in many.captured_queries]
    newest = minutely.occurrences.order_by("-due_at")[:LATEST_OCCURRENCES]
    assert _inline_dues(page) == [o.due_text() for o in newest]
    assert _inline_dues(page)[0] == "2027-03-01 19:05 (Asia/Kathmandu)"  # the night's last, sent
    heading = _heading(page)
    assert _text(heading) == "Occurrences, newest first: the latest 20 of 606 — all of them, with filters"
    assert f'href="/admin/campaigns/occurrence/?campaign__id__exact={minutely.pk}"' in heading
    sends = _text(page[page.index('id="campaign-sends"') :].split("</div>")[0])
    assert "Occurrences (listed below): the latest 20 of 606 — all of them, with filters" in sends


def test_the_campaign_page_of_many_occurrences_saves_as_the_browser_posts_it(client, minutely, manager_alice):
    """Each row posts its id and campaign: 606 rows were past the fields Django takes (a 400). A row
    shown may have left the latest 20 when the page is saved: the save still goes through."""
    _back_after(minutely, dt.timedelta(minutes=605))
    client.force_login(manager_alice)
    page = client.get(_page(minutely)).content.decode()
    form = page_form(page)
    before = sorted(Occurrence.objects.filter(campaign=minutely).values_list("pk", "due_at", "outcome", "note"))
    newer = _back_after(minutely, dt.timedelta(0))  # fired while the page was open

    mistyped = client.post(_page(minutely), {**form.data, "cron": ["every minute"], "_save": ["Save"]})
    assert mistyped.status_code == 200 and "five-field" in mistyped.content.decode()
    assert _inline_dues(mistyped.content.decode()) == _inline_dues(page)  # the rows it showed, as shown
    answer = client.post(_page(minutely), {**form.data, "name": ["Every minute"], "_save": ["Save"]})
    assert answer.status_code == 302, answer.content.decode()[:2000]
    assert form.data["occurrences-INITIAL_FORMS"] == [str(LATEST_OCCURRENCES)]
    assert Campaign.objects.get(pk=minutely.pk).name == "Every minute"
    after = sorted(Occurrence.objects.filter(campaign=minutely).values_list("pk", "due_at", "outcome", "note"))
    assert after == sorted(before + [(o.pk, o.due_at, o.outcome, o.note) for o in newer])


def test_the_occurrences_list_pages_one_campaigns_occurrences_newest_first_in_its_zone(
    client, hourly, make_campaign, viewer_carol
):
    other = make_campaign(name="Other")  # the same app: carol sees it too
    Occurrence.objects.create(campaign=other, due_at=timezone.now(), outcome="refused", at_local_time=False)
    client.force_login(viewer_carol)
    first = client.get(_list(hourly))
    assert first.status_code == 200
    page = first.content.decode()
    assert "<h1>Occurrences of “Spring sale”</h1>" in page
    assert "66 occurrences" in _text(page)  # counted, as the campaign page counts them
    rows = list(hourly.occurrences.order_by("-due_at"))
    assert _list_dues(page) == [o.due_text() for o in rows[:50]]
    assert all(due.endswith("(Asia/Kathmandu)") for due in _list_dues(page))
    assert "UTC" not in _text(page[page.index('id="result_list"') : page.index("</table>")])
    second = client.get(_list(hourly, p=2)).content.decode()
    assert _list_dues(second) == [o.due_text() for o in rows[50:]]
    assert "Other" not in _text(page + second)

    everything = client.get(_list()).content.decode()
    assert len(_list_dues(everything)) == 50 and "Other" in everything  # every campaign carol sees


DAY = dt.timedelta(days=1)


@pytest.mark.parametrize(
    ("filters", "lookups", "count"),
    [
        ({"outcome__exact": "sent"}, lambda now: {"outcome": "sent"}, 6),
        ({"outcome__exact": "skipped_missed"}, lambda now: {"outcome": "skipped_missed"}, 60),
        ({"outcome__exact": "refused"}, lambda now: {"outcome": "refused"}, 0),
        ({"due": "day"}, lambda now: {"due_at__gte": now - DAY}, 24),
        ({"due": "week"}, lambda now: {"due_at__gte": now - 7 * DAY}, 66),
        ({"due": "older"}, lambda now: {"due_at__lt": now - 30 * DAY}, 0),
        (
            {"due": "day", "outcome__exact": "skipped_missed"},
            lambda now: {"due_at__gte": now - DAY, "outcome": "skipped_missed"},
            18,
        ),
    ],
)
def test_the_occurrences_list_filters_by_outcome_and_when_they_were_due(
    client, hourly, viewer_carol, filters, lookups, count
):
    rows = list(hourly.occurrences.filter(**lookups(timezone.now())).order_by("-due_at"))
    assert len(rows) == count
    client.force_login(viewer_carol)
    page = client.get(_list(hourly, **filters)).content.decode()
    assert _list_dues(page) == [o.due_text() for o in rows[:50]]
    assert f"{count} occurrence" in _text(page)


def test_a_viewer_granted_the_campaign_alone_reads_its_occurrences_until_the_grant_is_revoked(
    client, hourly, make_campaign, admin_erin
):
    from tests.factories import UserFactory

    viewer = UserFactory(username="viewer_vera", role="Viewer")
    elsewhere = make_campaign(name="Not granted")
    Occurrence.objects.create(campaign=elsewhere, due_at=timezone.now(), outcome="refused", at_local_time=False)
    access_grant(obj=hourly, to=viewer, by=admin_erin)
    occurrence = hourly.occurrences.order_by("-due_at").first()
    client.force_login(viewer)
    assert len(_list_dues(client.get(_list(hourly)).content.decode())) == 50
    everything = client.get(_list()).content.decode()
    assert "Not granted" not in everything and len(_list_dues(everything)) == 50
    shown = client.get(f"/admin/campaigns/occurrence/{occurrence.pk}/change/")
    assert shown.status_code == 200
    assert occurrence.due_text() in _text(shown.content.decode())
    assert b'name="_save"' not in shown.content
    assert client.post(f"/admin/campaigns/occurrence/{occurrence.pk}/change/", {"note": "x"}).status_code == 403
    assert Occurrence.objects.get(pk=occurrence.pk).note == occurrence.note

    access_revoke(obj=hourly, to=viewer, by=admin_erin)
    assert client.get(_list(hourly)).status_code == 404
    assert _list_dues(client.get(_list()).content.decode()) == []
    assert client.get(f"/admin/campaigns/occurrence/{occurrence.pk}/change/").status_code == 404


def test_an_outsider_sees_no_occurrence_through_the_list_or_by_its_url(client, hourly, outsider_dave):
    from tests.factories import AppFactory, UserFactory

    AppFactory(name="Elsewhere")
    stranger = UserFactory(username="manager_stranger", role="Manager")  # the role, not the app
    occurrence = hourly.occurrences.order_by("-due_at").first()
    client.force_login(stranger)
    assert client.get(_page(hourly)).status_code == 404
    assert client.get(_list(hourly)).status_code == 404
    assert client.get(_list(hourly, outcome__exact="sent")).status_code == 404
    listed = client.get(_list())
    assert listed.status_code == 200 and list(listed.context["cl"].result_list) == []
    for suffix in ("change/", "history/", "delete/"):
        assert client.get(f"/admin/campaigns/occurrence/{occurrence.pk}/{suffix}").status_code == 404, suffix

    client.force_login(outsider_dave)  # no role at all
    assert not Group.objects.filter(user=outsider_dave).exists()
    assert client.get(_list(hourly)).status_code == 403
    assert client.get(_list()).status_code == 403
    assert client.get(f"/admin/campaigns/occurrence/{occurrence.pk}/change/").status_code == 404


def test_the_occurrences_list_is_read_only_even_for_an_administrator(client, hourly, admin_erin):
    occurrence = hourly.occurrences.order_by("-due_at").first()
    client.force_login(admin_erin)
    page = client.get(_list(hourly))
    assert page.status_code == 200 and page.context["action_form"] is None
    assert b"/admin/campaigns/occurrence/add/" not in page.content
    assert client.get("/admin/campaigns/occurrence/add/").status_code == 403
    assert client.post(f"/admin/campaigns/occurrence/{occurrence.pk}/delete/", {"post": "yes"}).status_code == 403
    assert Occurrence.objects.filter(pk=occurrence.pk).exists()


def test_a_list_of_what_is_no_campaign_answers_404_and_an_unknown_period_says_the_filter_is_wrong(
    client, hourly, viewer_carol
):
    client.force_login(viewer_carol)
    for value in ("abc", "0", "-1", "9" * 30, str(hourly.pk + 1000)):
        assert client.get(f"/admin/campaigns/occurrence/?campaign__id__exact={value}").status_code == 404, value
    answer = client.get(_list(hourly, due="fortnight"))
    assert answer.status_code == 302 and answer.url.endswith("?e=1")


def _cells(html: str, field: str) -> list[str]:
    """The text of the cells of ``field`` (a list's or an inline's), in their order."""
    return [_text(cell) for cell in re.findall(rf'<t[dh] class="field-{field}"[^>]*>(.*?)</t[dh]>', html, flags=re.S)]


@pytest.fixture
def sent_to_three(pushsim_app, manager_alice, approver_bob, viewer_carol, django_capture_on_commit_callbacks):
    """A one-off sent to three profiles of an app sending to the simulator: two with a phone (accepted),
    one without (skipped)."""
    from campaigns.services.lifecycle import campaign_create
    from tests.factories import DeviceFactory, ProfileFactory, PushContentFactory, SegmentFactory

    for user in (manager_alice, approver_bob, viewer_carol):
        access_grant(obj=pushsim_app, to=user, by=None)
    segment = SegmentFactory(
        name="Three", rules={"all": [{"field": "external_id", "op": "starts_with", "value": "o-"}]}
    )
    access_grant(obj=segment, to=manager_alice, by=None)
    for name in ("o-1", "o-2"):
        DeviceFactory(profile=ProfileFactory(external_id=name), app=pushsim_app)
    ProfileFactory(external_id="o-3")
    content = PushContentFactory(app=pushsim_app, name="Hello")
    due = timezone.now().replace(second=0, microsecond=0) + dt.timedelta(minutes=5)
    campaign = campaign_create(
        by=manager_alice,
        name="Three",
        app=pushsim_app,
        kind="scheduled",
        segment=segment,
        content=content,
        schedule_kind="at",
        send_at=due,
    )
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_approve(campaign_id=campaign.pk, by=approver_bob)
    with django_capture_on_commit_callbacks(execute=True):  # prepare and send, here
        campaign_fire_due(campaign_id=campaign.pk, now=due)
    return Campaign.objects.get(pk=campaign.pk)


@pytest.mark.parametrize("reader", ["manager_alice", "viewer_carol"])
def test_an_occurrence_says_what_its_dispatch_did_beside_its_send_started(
    client, sent_to_three, reader, request, django_assert_max_num_queries
):
    """'Sent' read as delivered: the outcome says only that the send started (its dispatch was
    made); beside it, the dispatch's status and what it targeted and had accepted, from its rollup,
    on the campaign's page and in the list of occurrences."""
    from delivery.models import Dispatch

    (occurrence,) = Occurrence.objects.filter(campaign=sent_to_three)
    dispatch = Dispatch.objects.get(pk=occurrence.dispatch_id)
    assert (dispatch.status, dispatch.total, dispatch.accepted, dispatch.skipped) == ("done", 3, 2, 1)
    client.force_login(request.getfixturevalue(reader))
    page = client.get(_page(sent_to_three)).content.decode()
    with django_assert_max_num_queries(30):
        listed = client.get(_list(sent_to_three)).content.decode()
    for html in (page, listed):
        assert _cells(html, "outcome") == ["Send started"]
        assert _cells(html, "dispatch_did") == ["Done: 3 targeted, 2 accepted"]
    assert "<th" in listed and "What its dispatch did" in listed
    shown = client.get(f"/admin/campaigns/occurrence/{occurrence.pk}/change/").content.decode()
    assert "Done: 3 targeted, 2 accepted" in shown


@pytest.mark.embedded
def test_an_occurrence_without_a_dispatch_and_one_whose_dispatch_is_under_way_say_so(
    client, make_campaign, manager_alice, approver_bob
):
    from delivery.models import Dispatch

    start = dt.datetime(2027, 3, 1, 9, 0, tzinfo=KATHMANDU)
    campaign = _recurring(make_campaign, manager_alice, approver_bob, start=start, cron="0 * * * *")
    _back_after(campaign, dt.timedelta(hours=2, minutes=10))  # two skipped, the third sent late
    sending = Occurrence.objects.get(campaign=campaign, dispatch__isnull=False)
    Dispatch.objects.filter(pk=sending.dispatch_id).update(status="sending")
    client.force_login(manager_alice)
    listed = client.get(_list(campaign)).content.decode()
    assert _cells(listed, "outcome") == [
        "Send started late (missed during downtime)",
        "Skipped (missed for longer than the window)",
        "Skipped (missed for longer than the window)",
    ]
    assert _cells(listed, "dispatch_did") == ["Sending: 0 targeted, 0 accepted so far", "—", "—"]


@pytest.mark.parametrize("count", ["6", "9" * 30])
def test_a_page_posting_more_occurrences_than_it_showed_is_refused_saying_the_schedule_makes_them(
    client, minutely, manager_alice, count
):
    """The page shows the occurrences and offers no row to add: a post counting more rows than it
    showed (one more, or a count past any) is refused in words, the campaign as it was, and the
    occurrences too."""
    _back_after(minutely, dt.timedelta(minutes=4))  # 5 occurrences
    client.force_login(manager_alice)
    form = page_form(client.get(_page(minutely)).content.decode())
    assert form.data["occurrences-TOTAL_FORMS"] == ["5"]
    before = sorted(Occurrence.objects.filter(campaign=minutely).values_list("pk", "due_at", "outcome", "note"))
    answer = client.post(
        _page(minutely), {**form.data, "occurrences-TOTAL_FORMS": [count], "name": ["Renamed"], "_save": ["Save"]}
    )
    assert answer.status_code == 200
    (formset,) = [f.formset for f in answer.context["inline_admin_formsets"] if f.formset.prefix == "occurrences"]
    assert formset.non_form_errors() == [
        "Occurrences are made by the campaign's schedule, not added on this page: the form sent more occurrence "
        "rows than the page showed. Reload the page and save your changes again."
    ]
    assert "Please submit at most" not in answer.content.decode()
    assert "Occurrences are made by the campaign&#x27;s schedule" in answer.content.decode()
    assert Campaign.objects.get(pk=minutely.pk).name != "Renamed"
    after = sorted(Occurrence.objects.filter(campaign=minutely).values_list("pk", "due_at", "outcome", "note"))
    assert after == before
