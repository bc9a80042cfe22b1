"""The campaign admin: buttons per role and state, reports and CSV export, read-only for viewers."""

import csv
import io
import re

import pytest
from django.utils import timezone

from campaigns.models import Campaign
from campaigns.services.lifecycle import campaign_approve, campaign_submit
from delivery.models import Delivery, Dispatch
from delivery.services.rollups import rollup_rebuild
from tests.factories import DeviceFactory, ProfileFactory
from tests.pages import get_reading_approval_requests, listed_rows


def _buttons(page):
    return {
        value.decode() for value in __import__("re").findall(rb'name="campaign_action" value="(\w+)"', page.content)
    }


def test_manager_sees_the_buttons_of_a_draft(client, make_campaign, manager_alice):
    campaign = make_campaign()
    client.force_login(manager_alice)
    page = client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/")
    assert page.status_code == 200
    assert _buttons(page) == {"submit", "duplicate", "test_send"}


def test_in_review_campaign_is_locked_for_its_author(client, make_campaign, manager_alice):
    campaign = make_campaign()
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    client.force_login(manager_alice)
    page = client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/")
    assert b'name="_save"' not in page.content
    assert _buttons(page) == {"cancel_request", "duplicate", "test_send"}


@pytest.mark.parametrize("waiting", ["in review", "a revision"])
def test_the_change_page_reads_the_campaigns_approval_request_once(
    client, make_campaign, manager_alice, approver_bob, team, waiting
):
    """Its Approval line, the warning of a request no one may decide and the buttons (Cancel request,
    to the requester) all read the request waiting: the page reads it once."""
    from campaigns.services.lifecycle import campaign_update
    from delivery.models import PushContent

    if waiting == "in review":
        campaign = make_campaign()
    else:
        campaign = make_campaign(kind="api_triggered", segment=None)
        campaign_submit(campaign_id=campaign.pk, by=manager_alice)
        campaign_approve(campaign_id=campaign.pk, by=approver_bob)
        other = PushContent.objects.create(app=team, name="Other", title="New title", body="New body")
        campaign_update(campaign_id=campaign.pk, by=manager_alice, content=other)
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    client.force_login(manager_alice)
    page, reads = get_reading_approval_requests(client, f"/admin/campaigns/campaign/{campaign.pk}/change/")
    assert page.status_code == 200 and "cancel_request" in _buttons(page)
    assert len(reads) == 1, reads


@pytest.mark.presses("campaigns.campaign:transition/cancel_request")
def test_cancel_request_is_offered_to_the_requester_and_an_administrator_only(
    client, make_campaign, manager_alice, manager_mallory, approver_bob, admin_erin
):
    """An Approver (or another Manager of the app) who did not ask was offered Cancel request, which
    the service refuses them: an approver sends it back with Request changes instead."""
    campaign = make_campaign()
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    url = f"/admin/campaigns/campaign/{campaign.pk}/change/"
    for user in (approver_bob, manager_mallory):
        client.force_login(user)
        assert "cancel_request" not in _buttons(client.get(url)), user
        assert client.post(f"/admin/campaigns/campaign/{campaign.pk}/transition/cancel_request/").status_code == 403
        assert Campaign.objects.get(pk=campaign.pk).status == "in_review"
    for user in (manager_alice, admin_erin):
        client.force_login(user)
        assert "cancel_request" in _buttons(client.get(url)), user
    client.post(f"/admin/campaigns/campaign/{campaign.pk}/transition/cancel_request/")
    assert Campaign.objects.get(pk=campaign.pk).status == "draft"


def test_viewer_sees_no_button_and_no_save(client, make_campaign, viewer_carol):
    campaign = make_campaign()
    client.force_login(viewer_carol)
    page = client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/")
    assert page.status_code == 200
    assert _buttons(page) == set()
    assert b'name="_save"' not in page.content
    listing = client.get("/admin/campaigns/campaign/")
    assert b"Spring sale" in listing.content
    assert b"addlink" not in listing.content


@pytest.mark.presses("campaigns.campaign:report_csv")
def test_outsider_gets_404_on_every_campaign_page(client, make_campaign, manager_mallory, outsider_dave, admin_erin):
    from tests.factories import AppFactory

    campaign = make_campaign()
    stranger = type(manager_mallory).objects.create_user("manager_stranger", is_staff=True)
    stranger.groups.add(__import__("django.contrib.auth.models", fromlist=["Group"]).Group.objects.get(name="Manager"))
    AppFactory(name="Elsewhere")
    client.force_login(stranger)
    for suffix in ("change/", "history/", "delete/", "access/", "report.csv"):
        assert client.get(f"/admin/campaigns/campaign/{campaign.pk}/{suffix}").status_code == 404, suffix
    assert b"Spring sale" not in client.get("/admin/campaigns/campaign/").content


@pytest.mark.presses("campaigns.campaign:report_csv")
def test_report_counts_outcomes_and_exports_safe_csv(
    client, make_campaign, manager_alice, approver_bob, team, pushsim, pushsim_app, django_capture_on_commit_callbacks
):
    campaign = make_campaign(kind="api_triggered", segment=None, name="=HYPERLINK(evil)")
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_approve(campaign_id=campaign.pk, by=approver_bob)
    reached, unreachable = ProfileFactory.create_batch(2)
    device = DeviceFactory(profile=reached, app=team)
    dispatch = Dispatch.objects.create(
        app=team, kind="api_trigger", source_id=campaign.pk, content_spec=campaign.content.spec(), status="done"
    )
    Delivery.objects.create(
        dispatch=dispatch, device=device, profile_id=reached.pk, status="accepted", opened_at=dispatch.created_at
    )
    Delivery.objects.create(dispatch=dispatch, profile_id=unreachable.pk, status="skipped", reason="no_device")
    rollup_rebuild(dispatch_ids=[dispatch.pk])  # as the send pipeline would have counted them
    client.force_login(manager_alice)
    page = client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/")
    assert b'id="campaign-report"' in page.content
    exported = client.get(f"/admin/campaigns/campaign/{campaign.pk}/report.csv")
    assert exported.status_code == 200
    rows = list(csv.reader(io.StringIO(exported.content.decode())))
    assert rows[1][0] == "'=HYPERLINK(evil)"
    assert rows[1][1:4] == ["2", "1", "0"]
    assert ["skipped", "no_device", "1"] in rows
    api = client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/")
    assert api.status_code == 200


@pytest.mark.parametrize("status", ["completed", "stopped"])
def test_finished_campaign_is_read_only_and_offers_archive(client, make_campaign, manager_alice, status):
    campaign = make_campaign()
    type(campaign).objects.filter(pk=campaign.pk).update(status=status)
    client.force_login(manager_alice)
    page = client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/")
    assert b'name="_save"' not in page.content
    assert "archive" in _buttons(page)


@pytest.mark.presses("campaigns.campaign:transition/duplicate")
@pytest.mark.parametrize("status", ["draft", "in_review", "live", "completed", "archived"])
@pytest.mark.parametrize("role", ["manager_alice", "approver_bob", "admin_erin"])
def test_duplicate_makes_a_new_draft_with_a_copy_of_the_content_from_any_state(
    client, make_campaign, request, role, status
):
    from campaigns.models import Campaign
    from delivery.models import PushContent

    campaign = make_campaign()
    Campaign.objects.filter(pk=campaign.pk).update(status=status)
    user = request.getfixturevalue(role)
    client.force_login(user)
    answer = client.post(f"/admin/campaigns/campaign/{campaign.pk}/transition/duplicate/")
    copy = Campaign.objects.exclude(pk=campaign.pk).get()
    assert answer.status_code == 302 and answer["Location"] == f"/admin/campaigns/campaign/{copy.pk}/change/"
    assert (copy.status, copy.owner, copy.name) == ("draft", user, "Spring sale (copy)")
    # Alice's segment was never shared with Bob: his copy keeps it all the same, as his edits would.
    assert (copy.app_id, copy.segment_id, copy.kind) == (campaign.app_id, campaign.segment_id, campaign.kind)
    assert copy.content_id != campaign.content_id
    content = PushContent.objects.get(pk=copy.content_id)
    assert (content.name, content.title, content.body, content.app_id, content.created_by) == (
        "Welcome (copy)",
        campaign.content.title,
        campaign.content.body,
        campaign.app_id,
        user,
    )
    assert Campaign.objects.get(pk=campaign.pk).status == status  # the source is left as it was
    page = client.get(answer["Location"])
    assert page.status_code == 200 and "submit" in _buttons(page)  # a draft its duplicator can work on


@pytest.mark.presses("campaigns.campaign:transition/duplicate")
def test_duplicate_is_refused_to_a_viewer_and_hidden_from_outsiders(
    client, make_campaign, viewer_carol, outsider_dave, manager_mallory
):
    from campaigns.models import Campaign
    from delivery.models import PushContent
    from tests.factories import UserFactory

    campaign = make_campaign()
    stranger = UserFactory(username="manager_stranger", role="Manager")  # a role, but no access to the app
    url = f"/admin/campaigns/campaign/{campaign.pk}/transition/duplicate/"
    for user, status in ((viewer_carol, 403), (outsider_dave, 404), (stranger, 404)):
        client.force_login(user)
        assert client.post(url).status_code == status, user
    assert Campaign.objects.count() == 1 and PushContent.objects.count() == 1


def test_a_wrongly_typed_date_is_answered_with_the_format(client, make_campaign, manager_alice, team, segment, content):
    client.force_login(manager_alice)
    response = client.post(
        "/admin/campaigns/campaign/add/",
        {
            "name": "Typo",
            "app": team.pk,
            "kind": "scheduled",
            "purpose": "marketing",
            "segment": segment.pk,
            "content": content.pk,
            "schedule_kind": "at",
            "send_at_0": "24/12/2026",
            "send_at_1": "7h10",
            "time_zone": "Europe/Paris",
            "missed_window_minutes": 60,
            "occurrences-TOTAL_FORMS": 0,
            "occurrences-INITIAL_FORMS": 0,
            "variants-TOTAL_FORMS": 0,
            "variants-INITIAL_FORMS": 0,
        },
    )
    assert response.status_code == 200
    page = response.content.decode()
    assert "Enter the date as YYYY-MM-DD" in page and "Enter the time as HH:MM" in page


def test_the_report_follows_a_new_open_at_once_from_the_rollup(
    make_campaign, admin_erin, django_assert_max_num_queries
):
    from campaigns.reports import campaign_report
    from delivery.services.opens import delivery_open_report
    from tests.delivery.reporting import T0, sent_dispatch

    campaign = make_campaign()
    dispatch = sent_dispatch(campaign.app, kind="campaign", source_id=campaign.pk)
    first = campaign_report(campaign)
    assert (first["targeted"], first["accepted"], first["opened"]) == (7, 3, 2)
    assert first["skipped_by_reason"] == {"frequency_cap": 1, "not_opted_in": 1, "no_device": 1}
    unopened = Delivery.objects.filter(dispatch=dispatch, status="accepted", opened_at__isnull=True).get()
    delivery_open_report(delivery_id=unopened.pk, app_id=campaign.app_id, by=admin_erin, when=T0)
    with django_assert_max_num_queries(2):  # the dispatches and their rollup: no delivery is counted
        assert campaign_report(campaign)["opened"] == 3


def test_the_report_keeps_its_totals_once_retention_deleted_the_rows(make_campaign, client, admin_erin, api_key_for):
    """Retention deletes a send's per-device rows after PUSHDESK_RETENTION_DELIVERY_DAYS: the report
    (and its page) still says what was targeted, accepted, skipped and opened."""
    import datetime as dt

    from django.utils import timezone

    from campaigns.reports import campaign_report
    from config.zones import zoned
    from delivery.models import Dispatch
    from operations.services import retention_apply
    from tests.delivery.reporting import sent_dispatch

    campaign = make_campaign()
    dispatch = sent_dispatch(campaign.app, kind="campaign", source_id=campaign.pk)
    before = campaign_report(campaign)
    Dispatch.objects.filter(pk=dispatch.pk).update(finished_at=timezone.now() - dt.timedelta(days=400))
    assert retention_apply(delivery_days=180)["deliveries"] == 7
    after = campaign_report(campaign)
    for figure in ("targeted", "accepted", "failed", "skipped", "opened", "skipped_by_reason"):
        assert after[figure] == before[figure], figure
    assert (after["targeted"], after["accepted"], after["opened"]) == (7, 3, 2)
    finished = Dispatch.objects.get(pk=dispatch.pk).finished_at
    assert before["rows_deleted"] is None and after["rows_deleted"] == {"sends": 1, "last_finished_at": finished}
    client.force_login(admin_erin)
    page = client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()
    assert "<tr><th>Targeted</th><td>7</td></tr>" in page and "<tr><th>Accepted</th><td>3</td></tr>" in page
    assert "The per-device rows of 1 send, the latest finished" in page
    assert f"{zoned(finished, campaign.time_zone)}, were deleted by retention" in page
    api = api_key_for(admin_erin).get(f"/api/v1/campaigns/{campaign.pk}/report/")
    assert api.status_code == 200 and api.json()["rows_deleted"]["sends"] == 1
    assert api.json()["targeted"] == 7


def test_the_change_page_reads_each_choice_list_once_however_many_variant_rows(
    client, make_campaign, manager_alice, abc, django_assert_max_num_queries
):
    """The variants' rows (and the empty row the page copies) share one read of the contents, in one
    round trip (no server-side cursor), and their headings read no content each; every row still
    offers every content, its own chosen."""
    import re

    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from delivery.models import PushContent
    from tests.campaigns.helpers import variants_set

    campaign = variants_set(make_campaign(content=abc[0]), manager_alice, abc, [30, 30, 30], 10)
    client.force_login(manager_alice)
    url = f"/admin/campaigns/campaign/{campaign.pk}/change/"
    assert client.get(url).status_code == 200
    # 42 with a read per row; one is whether its contents show its name (the help beside it), three
    # whether the app's, the segment's and the content's links work for every choice (one a field)
    with CaptureQueriesContext(connection) as queries, django_assert_max_num_queries(33):
        page = client.get(url)
    assert page.status_code == 200
    assert not [q["sql"] for q in queries if "DECLARE" in q["sql"]]
    lists = [
        q["sql"]
        for q in queries
        # the name, and whether the reader may see each (a colleague's are offered by number)
        if re.match(
            r'SELECT "delivery_pushcontent"\."id", "delivery_pushcontent"\."name", .* AS "reader_sees" FROM', q["sql"]
        )
    ]
    assert len(lists) == 2, lists  # the campaign's content, and every variant row's
    html = page.content.decode()
    everything = sorted(PushContent.objects.values_list("pk", flat=True))  # the Shop app's, all hers
    assert len(everything) == 4
    for index, chosen in enumerate(abc):
        select = re.search(rf'<select name="variants-{index}-content".*?</select>', html, re.S).group(0)
        offered = re.findall(r'<option value="(\d+)"', select)
        assert sorted(map(int, offered)) == everything
        assert re.search(rf'<option value="{chosen.pk}" selected>', select)
    empty = re.search(r'<select name="variants-__prefix__-content".*?</select>', html, re.S).group(0)
    assert sorted(map(int, re.findall(r'<option value="(\d+)"', empty))) == everything


def test_a_variant_content_outside_the_list_is_refused(client, make_campaign, manager_alice, abc):
    """The list is read once for the page; what is posted is still checked against the user's contents."""
    from tests.campaigns.helpers import change_form
    from tests.factories import AppFactory, PushContentFactory

    hidden = PushContentFactory(app=AppFactory(name="Elsewhere"), name="Not yours")
    campaign = make_campaign(content=abc[0])
    client.force_login(manager_alice)
    response = client.post(
        f"/admin/campaigns/campaign/{campaign.pk}/change/",
        change_form(campaign, [(abc[0], 50), (hidden, 50)]),
    )
    assert response.status_code == 200
    assert "Select a valid choice" in response.content.decode()
    assert not campaign.variants.exists()


def test_a_form_left_open_while_the_campaign_moved_on_is_refused_with_the_reason(
    client, make_campaign, manager_alice, approver_bob, viewer_carol, team
):
    from campaigns.services.lifecycle import campaign_update
    from delivery.models import PushContent
    from tests.campaigns.helpers import change_form

    campaign = make_campaign()
    client.force_login(manager_alice)
    url = f"/admin/campaigns/campaign/{campaign.pk}/change/"
    assert client.get(url).status_code == 200
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)  # from another tab
    answer = client.post(url, change_form(campaign, name="Renamed"))
    assert answer.status_code == 302 and answer["Location"] == url
    assert "is in review: it cannot be changed. Your changes were not saved." in client.get(url).content.decode()
    assert Campaign.objects.get(pk=campaign.pk).name == "Spring sale"

    # Approved, then edited into a revision now waiting for its own approval.
    campaign_approve(campaign_id=campaign.pk, by=approver_bob)
    other = PushContent.objects.create(app=team, name="Other", title="New title", body="New body")
    campaign_update(campaign_id=campaign.pk, by=manager_alice, content=other)
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    answer = client.post(url, change_form(Campaign.objects.get(pk=campaign.pk), name="Renamed"))
    assert answer.status_code == 302
    page = client.get(url).content.decode()
    assert "has changes waiting for approval: it cannot be changed until they are decided." in page
    assert Campaign.objects.get(pk=campaign.pk).name == "Spring sale"

    # A role that never could change it is refused outright.
    client.force_login(viewer_carol)
    assert client.post(url, change_form(campaign, name="Renamed")).status_code == 403


def test_occurrences_and_the_list_show_times_in_the_campaigns_zone_naming_it(
    client, make_campaign, manager_alice, approver_bob
):
    import datetime as dt
    import re
    from zoneinfo import ZoneInfo

    from campaigns.services.scheduling import campaigns_tick

    kathmandu = ZoneInfo("Asia/Kathmandu")  # UTC+05:45: a time shown in UTC cannot read as local
    send_at = dt.datetime(2026, 12, 24, 7, 10, tzinfo=kathmandu)
    campaign = make_campaign(schedule_kind="at", send_at=send_at, time_zone="Asia/Kathmandu")
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_approve(campaign_id=campaign.pk, by=approver_bob, now=send_at - dt.timedelta(days=1))
    campaigns_tick(now=send_at + dt.timedelta(seconds=20))
    Campaign.objects.filter(pk=campaign.pk).update(updated_at=send_at)

    client.force_login(manager_alice)
    page = client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()
    occurrences = page[page.index('id="occurrences-group"') :]
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", occurrences))
    assert "2026-12-24 07:10 (Asia/Kathmandu)" in text
    assert "01:25" not in text and "1:25 a.m." not in text  # the same moment in UTC
    assert "Spring sale @ 2026-12-24 07:10 (Asia/Kathmandu): send started" in text  # the row's title

    listing = client.get("/admin/campaigns/campaign/?status=all").content.decode()
    assert listing.count("2026-12-24 07:10 (Asia/Kathmandu)") == 1  # updated at
    assert "1:25 a.m." not in listing


@pytest.mark.parametrize(
    ("fields", "field", "says"),
    [
        (
            {"recurrence": "daily", "send_at_0": "2027-02-03", "ends_at_0": "2027-02-02", "ends_at_1": "10:30"},
            "ends_at",
            "The end must come after the first send.",
        ),
        ({"recurrence": "cron", "cron": "0 9 30 2 *", "send_at_0": "2027-02-03"}, "cron", "never fires"),
        ({"recurrence": "cron", "cron": "0 9 * * * *", "send_at_0": "2027-02-03"}, "cron", "five-field"),
        (
            {"recurrence": "daily", "send_at_0": "9999-12-31", "send_at_1": "23:59", "time_zone": "America/New_York"},
            "send_at",
            "out of range",
        ),
    ],
)
def test_a_schedule_that_cannot_fire_is_answered_at_its_field_keeping_what_was_typed(
    client, make_campaign, manager_alice, fields, field, says
):
    from tests.campaigns.helpers import change_form

    campaign = make_campaign()
    client.force_login(manager_alice)
    typed = {"schedule_kind": "recurring", "send_at_1": "10:30", "time_zone": "Europe/Paris", **fields}
    answer = client.post(f"/admin/campaigns/campaign/{campaign.pk}/change/", change_form(campaign, **typed))
    assert answer.status_code == 200
    page = answer.content.decode()
    row = page[page.index(f"field-{field}") :]
    assert says in row[: row.index("</div>", row.index("errorlist"))]
    assert f'value="{fields["send_at_0"]}"' in page  # what was typed is still there
    assert Campaign.objects.get(pk=campaign.pk).schedule_kind == "now"


def test_the_next_send_of_a_local_time_campaign_reads_as_entered_and_says_when_it_starts(
    client, make_campaign, manager_alice, approver_bob
):
    import datetime as dt
    from zoneinfo import ZoneInfo

    nine = dt.datetime(2027, 1, 5, 9, 0, tzinfo=ZoneInfo("Europe/Paris"))
    campaign = make_campaign(schedule_kind="at", send_at=nine, time_zone="Europe/Paris", at_local_time=True)
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_approve(campaign_id=campaign.pk, by=approver_bob, now=nine - dt.timedelta(days=2))
    # The beat starts it when UTC+14 reaches 09:00: 20:00 the day before in Paris.
    assert Campaign.objects.get(pk=campaign.pk).next_occurrence_at == dt.datetime(2027, 1, 4, 19, 0, tzinfo=dt.UTC)

    said = "2027-01-05 09:00 at each profile&#x27;s local time, from 2027-01-04 20:00 (Europe/Paris)"
    client.force_login(manager_alice)
    assert said in client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()
    assert said in client.get("/admin/campaigns/campaign/").content.decode()


def test_the_next_send_reads_in_the_approved_zone_while_a_revision_changes_it(
    client, make_campaign, manager_alice, approver_bob
):
    import datetime as dt
    from zoneinfo import ZoneInfo

    nine = dt.datetime(2027, 1, 5, 9, 0, tzinfo=ZoneInfo("Europe/Paris"))
    campaign = make_campaign(schedule_kind="at", send_at=nine, time_zone="Europe/Paris")
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_approve(campaign_id=campaign.pk, by=approver_bob, now=nine - dt.timedelta(days=2))
    # A revision waiting for approval moves the campaign to New York: the approved 09:00 Paris still sends.
    Campaign.objects.filter(pk=campaign.pk).update(time_zone="America/New_York")
    assert Campaign.objects.get(pk=campaign.pk).has_pending_revision

    client.force_login(manager_alice)
    page = client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()
    field = page[page.index("field-next_send") :]
    assert field[: field.index("</div>", field.index('class="readonly"'))].endswith("2027-01-05 09:00 (Europe/Paris)")
    listed = client.get("/admin/campaigns/campaign/").content.decode()
    assert "2027-01-05 09:00 (Europe/Paris)" in listed and "03:00 (America/New_York)" not in listed


def test_occurrences_read_in_the_approved_zone_while_a_revision_changes_it(
    client, make_campaign, manager_alice, approver_bob
):
    """They read in the campaign row's zone, a pending revision's: a 09:00 Paris send listed as
    03:00 New York, at odds with the Next send above it."""
    import datetime as dt
    from zoneinfo import ZoneInfo

    from campaigns.services.scheduling import campaigns_tick

    nine = dt.datetime(2027, 1, 5, 9, 0, tzinfo=ZoneInfo("Europe/Paris"))
    campaign = make_campaign(schedule_kind="at", send_at=nine, time_zone="Europe/Paris")
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_approve(campaign_id=campaign.pk, by=approver_bob, now=nine - dt.timedelta(days=2))
    campaigns_tick(now=nine + dt.timedelta(seconds=20))
    Campaign.objects.filter(pk=campaign.pk).update(time_zone="America/New_York")  # a revision, pending

    client.force_login(manager_alice)
    page = client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()
    occurrences = page[page.index('id="occurrences-group"') :]
    assert "2027-01-05 09:00 (Europe/Paris)" in occurrences
    assert "(America/New_York)" not in occurrences
    listed = client.get(f"/admin/campaigns/occurrence/?campaign__id__exact={campaign.pk}").content.decode()
    assert "2027-01-05 09:00 (Europe/Paris)" in listed and "03:00 (America/New_York)" not in listed


def test_approval_versions_and_activated_read_in_the_zone_of_the_version_each_belongs_to(
    client, make_campaign, manager_alice, approver_bob
):
    """An edit of the zone waiting for approval moved the Approval, Versions ("approved on") and
    Activated lines to the revision's zone, at odds with the Next send and occurrences beside them:
    the approved version's approval read 03:00 New York for 09:00 Paris. The approved version's
    times read in its zone; a request for the revision in the revision's; each zone named."""
    import datetime as dt
    from zoneinfo import ZoneInfo

    from accounts.selectors import approval_current
    from campaigns.services.lifecycle import campaign_request_changes, campaign_update
    from config.zones import zoned

    def shown(page: str, field: str) -> str:
        start = page.index('class="readonly"', page.index(f"field-{field}"))
        return page[start : page.index("</div>", start)]

    nine = dt.datetime(2027, 1, 5, 9, 0, tzinfo=ZoneInfo("Europe/Paris"))
    campaign = make_campaign(schedule_kind="at", send_at=nine, time_zone="Europe/Paris")
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_approve(campaign_id=campaign.pk, by=approver_bob, now=nine - dt.timedelta(days=2))
    approved = approval_current(campaign)
    campaign_update(campaign_id=campaign.pk, by=manager_alice, time_zone="America/New_York")
    assert Campaign.objects.get(pk=campaign.pk).has_pending_revision

    client.force_login(manager_alice)
    url = f"/admin/campaigns/campaign/{campaign.pk}/change/"
    page = client.get(url).content.decode()
    assert "2027-01-03 09:00 (Europe/Paris)" in shown(page, "activated")
    assert "on 2027-01-03 09:00 (Europe/Paris)) is scheduled: its first send is at 2027-01-05 09:00 (Europe/Paris)" in (
        shown(page, "versions")
    )
    assert f"by approver_bob on {zoned(approved.decided_at, 'Europe/Paris')}" in shown(page, "approval")
    sending = shown(page, "versions")
    assert "America/New_York" not in sending[: sending.index('id="pending-revision"')]
    for field in ("activated", "approval"):
        assert "America/New_York" not in shown(page, field), field

    revision = campaign_submit(campaign_id=campaign.pk, by=manager_alice)  # the revision's own request
    page = client.get(url).content.decode()
    asked = zoned(revision.requested_at, "America/New_York")
    assert f"Revision waiting for approval: asked by manager_alice on {asked}" in shown(page, "approval")
    assert "on 2027-01-03 09:00 (Europe/Paris)) is scheduled: its first send is at 2027-01-05 09:00 (Europe/Paris)" in (
        shown(page, "versions")
    )
    campaign_request_changes(campaign_id=campaign.pk, by=approver_bob, comment="Not New York")
    page = client.get(url).content.decode()
    revision.refresh_from_db()
    said = f"by approver_bob on {zoned(revision.decided_at, 'America/New_York')}"
    assert said in shown(page, "approval") and "2027-01-03 09:00 (Europe/Paris)" in shown(page, "activated")


def test_the_review_says_when_it_was_asked_in_the_campaigns_zone_named(
    client, make_campaign, manager_alice, approver_bob
):
    import datetime as dt
    from zoneinfo import ZoneInfo

    from accounts.models import ApprovalRequest

    asked = dt.datetime(2027, 1, 5, 14, 30, tzinfo=dt.UTC)
    client.force_login(approver_bob)
    for time_zone, local, said in (
        ("America/New_York", False, "2027-01-05 09:30 (America/New_York)"),
        ("Europe/Paris", True, "2027-01-05 15:30 (Europe/Paris)"),  # at each profile's local time
    ):
        nine = dt.datetime(2027, 2, 1, 9, 0, tzinfo=ZoneInfo(time_zone))
        campaign = make_campaign(
            name=f"Sale in {time_zone}", schedule_kind="at", send_at=nine, time_zone=time_zone, at_local_time=local
        )
        request = campaign_submit(campaign_id=campaign.pk, by=manager_alice)
        ApprovalRequest.objects.filter(pk=request.pk).update(requested_at=asked)
        page = client.get(f"/admin/accounts/approvalrequest/{request.pk}/review/").content.decode()
        assert f"Asked by <strong>manager_alice</strong> on {said} " in page, time_zone


def test_a_first_send_at_a_time_the_clocks_skip_is_refused_naming_the_field(client, make_campaign, manager_alice):
    from tests.campaigns.helpers import change_form

    campaign = make_campaign()
    client.force_login(manager_alice)
    typed = {
        "schedule_kind": "recurring",
        "recurrence": "daily",
        "send_at_0": "2027-03-28",  # the clocks go from 02:00 to 03:00 in Paris
        "send_at_1": "02:30",
        "time_zone": "Europe/Paris",
    }
    answer = client.post(f"/admin/campaigns/campaign/{campaign.pk}/change/", change_form(campaign, **typed))
    assert answer.status_code == 200
    page = answer.content.decode()
    row = page[page.index("field-send_at") :]
    assert "does not exist in Europe/Paris" in row[: row.index("</div>", row.index("errorlist"))]
    assert Campaign.objects.get(pk=campaign.pk).schedule_kind == "now"

    # The hour the clocks repeat is a time that exists: its first 02:30 is taken.
    typed.update(send_at_0="2027-10-31")
    answer = client.post(f"/admin/campaigns/campaign/{campaign.pk}/change/", change_form(campaign, **typed))
    assert answer.status_code == 302
    assert Campaign.objects.get(pk=campaign.pk).send_at.isoformat() == "2027-10-31T00:30:00+00:00"


def test_a_one_off_send_at_a_time_that_has_passed_is_refused_naming_the_field(client, make_campaign, manager_alice):
    """A one-off send typed for yesterday was saved and submitted without a word: only the approver's
    review said it would never be sent. The form refuses a time that has passed when it is set; one
    saved before, the campaign otherwise edited, is kept."""
    import datetime as dt
    from zoneinfo import ZoneInfo

    from tests.campaigns.helpers import change_form

    campaign = make_campaign()
    client.force_login(manager_alice)
    yesterday = timezone.now().astimezone(ZoneInfo("Asia/Tokyo")) - dt.timedelta(days=1)
    typed = {
        "schedule_kind": "at",
        "send_at_0": yesterday.strftime("%Y-%m-%d"),
        "send_at_1": yesterday.strftime("%H:%M"),
        "time_zone": "Asia/Tokyo",
    }
    url = f"/admin/campaigns/campaign/{campaign.pk}/change/"
    answer = client.post(url, change_form(campaign, **typed))
    assert answer.status_code == 200
    page = answer.content.decode()
    row = page[page.index("field-send_at") :]
    said = row[: row.index("</div>", row.index("errorlist"))]
    assert f"{yesterday:%Y-%m-%d %H:%M} (Asia/Tokyo) has passed" in said
    assert f'value="{typed["send_at_0"]}"' in page  # what was typed is still there
    assert Campaign.objects.get(pk=campaign.pk).schedule_kind == "now"

    # Saved before it passed, the time is kept through an edit of the rest.
    Campaign.objects.filter(pk=campaign.pk).update(
        schedule_kind="at", send_at=yesterday.replace(second=0, microsecond=0), time_zone="Asia/Tokyo"
    )
    campaign.refresh_from_db()
    answer = client.post(url, change_form(campaign, name="Renamed", **typed))
    assert answer.status_code == 302
    assert Campaign.objects.get(pk=campaign.pk).name == "Renamed"


@pytest.mark.parametrize("method", ["get", "post"])
def test_the_review_of_a_request_whose_draft_was_deleted_leads_to_its_record(
    client, make_campaign, manager_alice, approver_bob, method
):
    from accounts.models import ApprovalRequest
    from campaigns.services.lifecycle import campaign_delete, campaign_request_changes

    campaign = make_campaign()
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_request_changes(campaign_id=campaign.pk, by=approver_bob, comment="Shorter")
    campaign_delete(campaign_id=campaign.pk, by=manager_alice)
    request = ApprovalRequest.objects.get()
    client.force_login(approver_bob)
    url = f"/admin/accounts/approvalrequest/{request.pk}/review/"
    answer = getattr(client, method)(url, {"_approve": "1", "comment": ""} if method == "post" else None, follow=True)
    assert answer.status_code == 200
    assert answer.redirect_chain[-1][0] == f"/admin/accounts/approvalrequest/{request.pk}/change/"
    assert "was deleted since this request was made" in answer.content.decode()
    assert ApprovalRequest.objects.get().status == "changes_requested"


def test_an_empty_value_reads_as_a_dash_as_the_pages_own_fields_say_one(client, make_campaign, viewer_carol):
    """Django's empty value is a hyphen ("Throttle per second: -") where the pages' own fields say
    an em dash ("Ends at: —"): every empty value reads as the same dash."""
    campaign = make_campaign(schedule_kind="recurring", recurrence="weekly", send_at=timezone.now())
    client.force_login(viewer_carol)
    page = client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()
    throttle = re.search(r'field-throttle_per_second.*?<div class="readonly">(.*?)</div>', page, re.S).group(1)
    ends = re.search(r'field-ends_at.*?<div class="readonly">(.*?)</div>', page, re.S).group(1)
    assert throttle.strip() == ends.strip() == "—"


@pytest.mark.parametrize(
    ("schedule", "shown"),
    [
        ({"schedule_kind": "now"}, {"schedule_kind"}),
        (
            {"schedule_kind": "at"},
            {"schedule_kind", "send_at_shown", "time_zone", "at_local_time", "missed_window_minutes"},
        ),
        (
            {"schedule_kind": "recurring", "recurrence": "weekly"},
            {"schedule_kind", "send_at_shown", "time_zone", "recurrence", "ends_at_shown", "at_local_time"}
            | {"missed_window_minutes"},
        ),
        (
            {"schedule_kind": "recurring", "recurrence": "cron", "cron": "0 9 * * 1"},
            {"schedule_kind", "send_at_shown", "time_zone", "recurrence", "cron", "ends_at_shown", "at_local_time"}
            | {"missed_window_minutes"},
        ),
        ({"kind": "api_triggered", "segment": None}, set()),
    ],
)
def test_a_campaign_read_only_shows_the_fields_of_its_schedule_only(
    client, make_campaign, viewer_carol, schedule, shown
):
    """A Viewer's page of a weekly campaign read "Cron: —", one sent when approved its time zone
    and missed window, an API-triggered one an empty Schedule heading: the form hides those as the
    schedule is chosen; read only, they are left out."""
    if schedule.get("schedule_kind", "now") != "now":
        schedule = {**schedule, "send_at": timezone.now() + timezone.timedelta(days=1)}
    campaign = make_campaign(**schedule)
    client.force_login(viewer_carol)
    page = client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()
    fields = ("schedule_kind", "send_at_shown", "time_zone", "recurrence", "cron", "ends_at_shown")
    fields += ("at_local_time", "missed_window_minutes")
    assert {name for name in fields if f"field-{name}" in page} == shown
    assert bool(re.search(r"<h2 [^>]*>Schedule</h2>", page)) == bool(shown)


def test_occurrences_show_only_where_a_schedule_makes_them(client, make_campaign, manager_alice):
    """Occurrences are made by a schedule: the add page showed their empty table, and an
    API-triggered campaign's page said "Occurrences (listed below): none yet" above an empty one."""
    scheduled = make_campaign()
    triggered = make_campaign(kind="api_triggered", segment=None, name="Order shipped")
    client.force_login(manager_alice)
    add = client.get("/admin/campaigns/campaign/add/").content.decode()
    assert add.count('id="occurrences-group"') == 0 and "Occurrences (listed below)" not in add
    page = client.get(f"/admin/campaigns/campaign/{triggered.pk}/change/").content.decode()
    assert 'id="occurrences-group"' not in page and "Occurrences (listed below)" not in page
    assert 'id="campaign-sends"' in page  # its dispatches are still said
    page = client.get(f"/admin/campaigns/campaign/{scheduled.pk}/change/").content.decode()
    assert 'id="occurrences-group"' in page and "Occurrences (listed below): none yet." in page


def test_a_requests_record_leads_to_what_it_asks_to_approve_and_while_it_waits_to_its_review(
    client, make_campaign, manager_alice, approver_bob
):
    """The record of a request (reached from the audit log, the history, a decided request in the
    list) named its campaign in plain text, a page with no way on: it links the campaign, and the
    review while the request waits; once the campaign is deleted, its name alone, said so."""
    from accounts.models import ApprovalRequest
    from campaigns.services.lifecycle import campaign_delete, campaign_request_changes

    campaign = make_campaign()
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    request = ApprovalRequest.objects.get()
    record = f"/admin/accounts/approvalrequest/{request.pk}/change/"
    campaign_page = f'href="/admin/campaigns/campaign/{campaign.pk}/change/"'
    review = f'href="/admin/accounts/approvalrequest/{request.pk}/review/"'
    for user in (approver_bob, manager_alice):
        client.force_login(user)
        page = client.get(record).content.decode()
        assert campaign_page in page and review in page, user

    campaign_request_changes(campaign_id=campaign.pk, by=approver_bob, comment="Shorter")
    client.force_login(approver_bob)
    page = client.get(record).content.decode()
    assert campaign_page in page and review not in page  # decided: nothing left to review

    campaign_delete(campaign_id=campaign.pk, by=manager_alice)
    page = client.get(record).content.decode()
    assert campaign_page not in page and f"{campaign.name} (deleted)" in page


@pytest.mark.parametrize("button", ["_approve", "_request_changes"])
def test_a_decision_applies_only_to_the_request_the_approver_read(
    client, make_campaign, manager_alice, approver_bob, monkeypatch, button
):
    """Between the approver's read of the request and their decision, its requester cancels it,
    changes the campaign and submits it again: the decision on the first request changes nothing."""
    from accounts.admin import approvals
    from accounts.models import ApprovalRequest
    from campaigns.services.lifecycle import campaign_cancel_request, campaign_update

    campaign = make_campaign()
    read = campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    client.force_login(approver_bob)
    url = f"/admin/accounts/approvalrequest/{read.pk}/review/"
    assert "Approve and activate" in client.get(url).content.decode()

    standing = approvals.approver_standing

    def resubmitted_meanwhile(user, approval):
        answer = standing(user, approval)
        campaign_cancel_request(campaign_id=campaign.pk, by=manager_alice)
        campaign_update(campaign_id=campaign.pk, by=manager_alice, throttle_per_second=7)
        campaign_submit(campaign_id=campaign.pk, by=manager_alice)
        return answer

    monkeypatch.setattr(approvals, "approver_standing", resubmitted_meanwhile)
    answer = client.post(url, {button: "1", "comment": "Looks fine"}, follow=True)

    assert answer.status_code == 200
    assert "The request you read was closed since you read it (cancelled)" in answer.content.decode()
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.IN_REVIEW
    assert not campaign.approved_version
    unseen = ApprovalRequest.objects.exclude(pk=read.pk).get()
    assert (unseen.status, unseen.decided_by) == (ApprovalRequest.Status.PENDING, None)
    assert ApprovalRequest.objects.get(pk=read.pk).status == ApprovalRequest.Status.CANCELLED


def test_a_content_that_shows_a_call_context_is_answered_at_its_field_in_a_scheduled_campaign(
    client, make_campaign, manager_alice, team
):
    from tests.campaigns.helpers import change_form
    from tests.factories import PushContentFactory

    campaign = make_campaign()
    shipped = PushContentFactory(app=team, name="Shipped", title="Shipped", body="Order {{ context.order_id }}")
    client.force_login(manager_alice)
    answer = client.post(f"/admin/campaigns/campaign/{campaign.pk}/change/", change_form(campaign, content=shipped.pk))
    assert answer.status_code == 200
    page = answer.content.decode()
    row = page[page.index("field-content") :]
    assert "shows {{ context.order_id }} in its body" in row[: row.index("</div>", row.index("errorlist"))]
    assert Campaign.objects.get(pk=campaign.pk).content_id == campaign.content_id


def _shown(page: str, field: str) -> str:
    """The text of a field's row (or table cell) on an admin page, up to the next field's, tags and
    runs of spaces taken out."""
    import re

    start = page.index(f'field-{field}"') + len(f'field-{field}"') + 1
    ends = [page.find(mark, start) for mark in ("field-", "</tr>", "</fieldset>")]
    end = page.rfind("<", start, min(i for i in ends if i >= 0))
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page[start:end])).strip()


def test_a_read_only_campaign_page_shows_its_dates_in_its_zone_named(
    client, make_campaign, manager_alice, approver_bob, viewer_carol
):
    import datetime as dt
    from zoneinfo import ZoneInfo

    paris = ZoneInfo("Europe/Paris")
    campaign = make_campaign(
        schedule_kind="recurring",
        recurrence="daily",
        send_at=dt.datetime(2027, 1, 5, 9, 0, tzinfo=paris),
        ends_at=dt.datetime(2027, 2, 5, 21, 0, tzinfo=paris),
        time_zone="Europe/Paris",
    )
    send_at = "Send at: 2027-01-05 09:00 (Europe/Paris) The (first) send, for 'at' and 'recurring', in the campaign's"
    ends_at = "Ends at: 2027-02-05 21:00 (Europe/Paris) No occurrence after this (recurring), in the campaign's"
    url = f"/admin/campaigns/campaign/{campaign.pk}/change/"

    def read_as(user):
        client.force_login(user)
        page = client.get(url).content.decode().replace("&#x27;", "'")
        assert b'name="_save"' not in page.encode(), user
        return _shown(page, "send_at_shown"), _shown(page, "ends_at_shown")

    assert read_as(viewer_carol) == (send_at + " time zone.", ends_at + " time zone.")
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    for user in (approver_bob, manager_alice, viewer_carol):  # in review: read-only to its author too
        assert read_as(user) == (send_at + " time zone.", ends_at + " time zone."), user
    Campaign.objects.filter(pk=campaign.pk).update(status=Campaign.Status.COMPLETED)
    assert read_as(manager_alice) == (send_at + " time zone.", ends_at + " time zone.")

    # Where it may be changed, the form still shows them as typed in the campaign's zone.
    Campaign.objects.filter(pk=campaign.pk).update(status=Campaign.Status.DRAFT)
    client.force_login(manager_alice)
    page = client.get(url).content.decode()
    assert 'name="send_at_1" value="09:00"' in page and 'name="ends_at_1" value="21:00"' in page
    assert "field-send_at_shown" not in page and "UTC" not in _shown(page, "send_at")


def test_a_read_only_campaign_sent_at_local_time_names_each_profiles_zone_beside_its_dates(
    client, make_campaign, manager_alice, approver_bob, viewer_carol
):
    """A campaign sent at each profile's local time showed its dates, on the pages that only read it
    (the approver's, a viewer's), as 09:00 in the campaign's zone, where its form names each
    profile's: they name the zone as the form does."""
    import datetime as dt
    from zoneinfo import ZoneInfo

    paris = ZoneInfo("Europe/Paris")
    campaign = make_campaign(
        schedule_kind="recurring",
        recurrence="weekly",
        send_at=dt.datetime(2027, 1, 5, 9, 0, tzinfo=paris),
        ends_at=dt.datetime(2027, 2, 5, 21, 0, tzinfo=paris),
        time_zone="Europe/Paris",
        at_local_time=True,
    )
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    zone = "(each profile's time zone; Europe/Paris for profiles without one)"
    for user in (approver_bob, viewer_carol):
        client.force_login(user)
        page = client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode().replace("&#x27;", "'")
        assert _shown(page, "send_at_shown").startswith(f"Send at: 2027-01-05 09:00 {zone} "), user
        assert _shown(page, "ends_at_shown").startswith(f"Ends at: 2027-02-05 21:00 {zone} "), user
        # Their help says it too, never "in the campaign's time zone".
        assert _shown(page, "send_at_shown").endswith(
            "The (first) send, for 'at' and 'recurring', at that time of day in each profile's own zone "
            "(the campaign's for profiles without one)."
        ), user
        assert _shown(page, "ends_at_shown").endswith(
            "No occurrence after this (recurring), in each profile's own zone (the campaign's for profiles "
            "without one)."
        ), user


def test_the_forms_date_help_names_the_zone_of_the_saved_at_local_time(client, make_campaign, manager_alice):
    """The form's help of the first send and the end said "in the campaign's time zone" with At local
    time ticked, each profile's zone being the one they are read in: the form draws both sentences,
    the one of the saved choice shown (schedule_form.js shows the other as the box is ticked)."""
    import datetime as dt

    campaign = make_campaign(
        schedule_kind="recurring",
        recurrence="weekly",
        send_at=timezone.now() + dt.timedelta(days=2),
        at_local_time=True,
    )
    client.force_login(manager_alice)
    url = f"/admin/campaigns/campaign/{campaign.pk}/change/"

    def shown_help(field):
        page = client.get(url).content.decode().replace("&#x27;", "'")
        row = page[page.index(f'field-{field}"') :]
        help_html = row[row.index('class="help') :].split("</div>", 1)[0]
        return [
            text
            for hidden, text in re.findall(r'<span class="schedule-zone-help"[^>]*?( hidden)?>([^<]*)<', help_html)
            if not hidden
        ]

    own = "at that time of day in each profile's own zone (the campaign's for profiles without one)."
    assert shown_help("send_at") == [own]
    assert shown_help("ends_at") == ["in each profile's own zone (the campaign's for profiles without one)."]
    Campaign.objects.filter(pk=campaign.pk).update(at_local_time=False)
    assert shown_help("send_at") == ["in the campaign's time zone."]
    assert shown_help("ends_at") == ["in the campaign's time zone."]


def test_the_forms_date_inputs_name_the_zone_they_are_read_in(client, make_campaign, manager_alice, segment, content):
    """The form showed a first send of 09:00 and an end of 21:00 with no zone beside them, the zone
    three fields below: a marketer in New York read them as their own hours. Each names the zone
    it is read in: the campaign's, or, sent at each profile's local time, each profile's (the
    campaign's for profiles without one); a new campaign's and a refused form's as typed."""
    import datetime as dt
    from zoneinfo import ZoneInfo

    paris = ZoneInfo("Europe/Paris")
    campaign = make_campaign(
        schedule_kind="recurring",
        recurrence="daily",
        send_at=dt.datetime(2027, 1, 5, 9, 0, tzinfo=paris),
        ends_at=dt.datetime(2027, 2, 5, 21, 0, tzinfo=paris),
        time_zone="Europe/Paris",
    )
    url = f"/admin/campaigns/campaign/{campaign.pk}/change/"
    client.force_login(manager_alice)
    page = client.get(url).content.decode().replace("&#x27;", "'")
    for name in ("send_at", "ends_at"):
        row = _shown(page, name)
        assert row.startswith(f"{name.replace('_', ' ').capitalize()}: (Europe/Paris)"), row
    assert page.count('<span class="schedule-zone" data-zone="Europe/Paris">(Europe/Paris)</span>') == 2

    Campaign.objects.filter(pk=campaign.pk).update(at_local_time=True)
    page = client.get(url).content.decode().replace("&#x27;", "'")
    assert page.count("(each profile's time zone; Europe/Paris for profiles without one)") == 2

    # A refused form names the zone typed, a new campaign's the default.
    refused = client.post(
        url,
        {
            "name": campaign.name,
            "app": campaign.app_id,
            "kind": "scheduled",
            "purpose": "marketing",
            "segment": segment.pk,
            "content": content.pk,
            "schedule_kind": "at",
            "send_at_0": "2027-01-05",
            "send_at_1": "25:00",
            "time_zone": "America/New_York",
            "missed_window_minutes": 60,
            "occurrences-TOTAL_FORMS": 0,
            "occurrences-INITIAL_FORMS": 0,
            "variants-TOTAL_FORMS": 0,
            "variants-INITIAL_FORMS": 0,
        },
    ).content.decode()
    assert "Enter the time as HH:MM" in refused
    assert '<span class="schedule-zone" data-zone="America/New_York">(America/New_York)</span>' in refused
    new = client.get("/admin/campaigns/campaign/add/").content.decode()
    assert '<span class="schedule-zone" data-zone="UTC">(UTC)</span>' in new


def test_an_end_at_a_time_the_clocks_skip_is_refused_as_a_first_send_is(client, make_campaign, manager_alice):
    from tests.campaigns.helpers import change_form

    campaign = make_campaign()
    client.force_login(manager_alice)
    typed = {
        "schedule_kind": "recurring",
        "recurrence": "daily",
        "send_at_0": "2027-03-20",
        "send_at_1": "02:30",
        "ends_at_0": "2027-03-28",  # the clocks go from 02:00 to 03:00 in Paris
        "ends_at_1": "02:30",
        "time_zone": "Europe/Paris",
    }
    answer = client.post(f"/admin/campaigns/campaign/{campaign.pk}/change/", change_form(campaign, **typed))
    assert answer.status_code == 200
    page = answer.content.decode()
    row = page[page.index("field-ends_at") :]
    said = row[: row.index("</div>", row.index("errorlist"))]
    assert "2027-03-28 02:30 does not exist in Europe/Paris: the clocks go forward then." in said
    assert Campaign.objects.get(pk=campaign.pk).schedule_kind == "now"

    typed.update(ends_at_1="03:30")  # the first time that exists after the jump
    answer = client.post(f"/admin/campaigns/campaign/{campaign.pk}/change/", change_form(campaign, **typed))
    assert answer.status_code == 302
    assert Campaign.objects.get(pk=campaign.pk).ends_at.isoformat() == "2027-03-28T01:30:00+00:00"


def _fired(campaign, manager_alice, approver_bob):
    """``campaign`` submitted, approved two days before its send, and its first occurrence fired."""
    import datetime as dt

    from campaigns.services.scheduling import campaign_fire_due

    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_approve(campaign_id=campaign.pk, by=approver_bob, now=campaign.send_at - dt.timedelta(days=2))
    due = Campaign.objects.get(pk=campaign.pk).next_occurrence_at
    (occurrence,) = campaign_fire_due(campaign_id=campaign.pk, now=due)
    return occurrence


def test_a_local_time_send_reads_as_entered_in_its_occurrence_and_its_dispatch(
    client, make_campaign, manager_alice, approver_bob, viewer_carol
):
    import datetime as dt
    from zoneinfo import ZoneInfo

    nine = dt.datetime(2027, 1, 5, 9, 0, tzinfo=ZoneInfo("Europe/Paris"))
    campaign = make_campaign(schedule_kind="at", send_at=nine, time_zone="Europe/Paris", at_local_time=True)
    occurrence = _fired(campaign, manager_alice, approver_bob)
    # Started when UTC+14 reached 09:00 (20:00 the day before in Paris); 09:00 is what each zone gets.
    assert occurrence.due_at == dt.datetime(2027, 1, 4, 19, 0, tzinfo=dt.UTC)
    label = "Spring sale v1 @ 2027-01-05 09:00 at each profile's local time"
    assert occurrence.dispatch.label == label
    due = "2027-01-05 09:00 at each profile's local time, from 2027-01-04 20:00 (Europe/Paris)"
    assert str(occurrence) == f"Spring sale @ {due}: send started"

    for user in (manager_alice, viewer_carol):
        client.force_login(user)
        page = client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode().replace("&#x27;", "'")
        assert _shown(page, "due").startswith(due), user  # the occurrence's row
        assert f"{label}</a> — Preparing" in page, user  # the campaign's sends
        assert "UTC" not in _shown(page, "sends")
        assert f">{label}</a>" in client.get("/admin/delivery/dispatch/").content.decode().replace("&#x27;", "'")


def test_a_campaigns_dispatch_is_labelled_in_its_zone_named_wherever_it_is_listed(
    client, make_campaign, manager_alice, approver_bob, viewer_carol, admin_erin
):
    import datetime as dt
    from zoneinfo import ZoneInfo

    nine = dt.datetime(2027, 1, 5, 9, 0, tzinfo=ZoneInfo("America/New_York"))
    campaign = make_campaign(schedule_kind="at", send_at=nine, time_zone="America/New_York")
    occurrence = _fired(campaign, manager_alice, approver_bob)
    label = "Spring sale v1 @ 2027-01-05 09:00 (America/New_York)"
    assert occurrence.dispatch.label == label
    assert str(occurrence) == "Spring sale @ 2027-01-05 09:00 (America/New_York): send started"
    client.force_login(viewer_carol)
    page = client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()
    assert _shown(page, "due").startswith("2027-01-05 09:00 (America/New_York)")
    assert f"{label}</a> — Preparing" in page
    assert f">{label}</a>" in client.get("/admin/delivery/dispatch/").content.decode()
    client.force_login(admin_erin)
    assert f">{label}</a>" in client.get("/admin/").content.decode()  # the dispatches running


def test_the_report_draws_and_exports_its_times_in_the_campaigns_zone(client, make_campaign, viewer_carol, team):
    import datetime as dt
    import json

    from tests.delivery.reporting import sent_dispatch

    campaign = make_campaign(time_zone="Asia/Kolkata")  # UTC+05:30
    dispatch = sent_dispatch(team, kind="campaign", source_id=campaign.pk)
    Dispatch.objects.filter(pk=dispatch.pk).update(created_at=dt.datetime(2026, 11, 28, 10, 0, tzinfo=dt.UTC))

    def drawn(url):
        page = client.get(url).content.decode()
        start = page.index(">", page.index('id="pd-report-data"')) + 1
        return json.loads(page[start : page.index("</script>", start)])["timeline"], page

    client.force_login(viewer_carol)
    for url in (f"/admin/campaigns/campaign/{campaign.pk}/change/", f"/admin/delivery/dispatch/{dispatch.pk}/change/"):
        timeline, page = drawn(url)
        # Accepted at 10:15, 10:25 and 11:15 UTC: 15:45, 15:55 and 16:45 in Kolkata.
        assert timeline["labels"] == ["2026-11-28 15:00", "2026-11-28 16:00", "2026-11-28 17:00"], url
        assert timeline["accepted"] == [2, 1, 0], url
        assert "Accepted and opened per hour, in Asia/Kolkata" in page, url
    assert _shown(page, "created") == "Created at: 2026-11-28 15:30 (Asia/Kolkata)"  # the dispatch's, as its chart

    exported = client.get(f"/admin/campaigns/campaign/{campaign.pk}/report.csv").content.decode()
    rows = list(csv.reader(io.StringIO(exported)))
    header = rows.index(["dispatch", "label", "status", "created_at", "targeted", "accepted", "opened"])
    created = rows[header + 1][3]
    assert created == "2026-11-28T15:30:00+05:30"
    assert dt.datetime.fromisoformat(created) == dt.datetime(2026, 11, 28, 10, 0, tzinfo=dt.UTC)


def test_an_occurrence_reads_as_the_schedule_it_fired_under_whatever_was_approved_or_edited_since(
    client, make_campaign, manager_alice, approver_bob, viewer_carol
):
    """A daily send at each profile's local time missed one day (downtime: skipped, no dispatch) and
    sent the next late. Its occurrences say the 09:00 each zone was due, whatever the schedule
    became: a pending revision (of a campaign approved before versions were kept) and an approved
    revision in the campaign's zone leave them as they fired; the next send reads as version 2 says."""
    import datetime as dt
    import re
    from zoneinfo import ZoneInfo

    from campaigns.models import Occurrence
    from campaigns.services.lifecycle import campaign_update
    from campaigns.services.scheduling import campaign_fire_due

    nine = dt.datetime(2027, 1, 5, 9, 0, tzinfo=ZoneInfo("Europe/Paris"))
    campaign = make_campaign(
        schedule_kind="recurring", recurrence="daily", send_at=nine, time_zone="Europe/Paris", at_local_time=True
    )
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_approve(campaign_id=campaign.pk, by=approver_bob, now=nine - dt.timedelta(days=2))
    due = Campaign.objects.get(pk=campaign.pk).next_occurrence_at
    skipped, sent = campaign_fire_due(campaign_id=campaign.pk, now=due + dt.timedelta(hours=27))
    assert (skipped.outcome, skipped.dispatch_id, sent.outcome) == ("skipped_missed", None, "sent_late")
    rows = [
        "2027-01-06 09:00 at each profile's local time, from 2027-01-05 20:00 (Europe/Paris)",
        "2027-01-05 09:00 at each profile's local time, from 2027-01-04 20:00 (Europe/Paris)",
    ]

    def rows_shown():
        client.force_login(viewer_carol)
        page = client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()
        page = page.replace("&#x27;", "'")
        return [
            re.sub(r"<[^>]+>", "", cell.split("</td>")[0]).strip() for cell in page.split('<td class="field-due">')[1:]
        ]

    assert rows_shown() == rows
    assert (
        str(Occurrence.objects.get(pk=skipped.pk))
        == f"Spring sale @ {rows[1]}: skipped (missed for longer than the window)"
    )

    # Approved before versions were kept, then edited: the edit is pending, version 1 still sends.
    Campaign.objects.filter(pk=campaign.pk).update(approved_version={})
    campaign_update(campaign_id=campaign.pk, by=manager_alice, throttle_per_second=50)
    assert Campaign.objects.get(pk=campaign.pk).has_pending_revision
    assert rows_shown() == rows

    # Version 2 sends at 09:00 in Paris, not at each profile's local time.
    campaign_update(campaign_id=campaign.pk, by=manager_alice, at_local_time=False)
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_approve(campaign_id=campaign.pk, by=approver_bob, now=due + dt.timedelta(hours=28))
    assert Campaign.objects.get(pk=campaign.pk).approved().at_local_time is False
    assert rows_shown() == rows


@pytest.mark.presses("campaigns.campaign:transition/submit")
def test_submit_carries_the_requesters_note_to_the_review(client, make_campaign, manager_alice, approver_bob):
    from accounts.models import ApprovalRequest

    campaign = make_campaign()
    client.force_login(manager_alice)
    page = client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()
    assert 'name="message"' in page and "Note to the approvers" in page
    url = f"/admin/campaigns/campaign/{campaign.pk}/transition/submit/"
    for note, said in (("x" * 2_001, "at most 2,000 characters"), ("Ready\x00", "NUL")):
        answer = client.post(url, {"message": note}, follow=True)
        assert said in answer.content.decode() and not ApprovalRequest.objects.exists()
        assert Campaign.objects.get(pk=campaign.pk).status == "draft"

    client.post(url, {"message": "  For Monday's newsletter: the numbers were checked with finance.  "})
    request = ApprovalRequest.objects.get()
    assert request.message == "For Monday's newsletter: the numbers were checked with finance."
    client.force_login(approver_bob)
    review = client.get(f"/admin/accounts/approvalrequest/{request.pk}/change/").content.decode()
    assert "For Monday&#x27;s newsletter: the numbers were checked with finance." in review
    # Once it is in review, the note goes with no button: nothing to submit.
    client.force_login(manager_alice)
    assert 'name="message"' not in client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()


def test_a_viewer_gets_no_note_to_write(client, make_campaign, viewer_carol):
    campaign = make_campaign()
    client.force_login(viewer_carol)
    assert 'name="message"' not in client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()


def test_a_live_campaigns_revision_in_review_says_who_asked_and_when(
    client, make_campaign, manager_alice, approver_bob
):
    import datetime as dt
    from zoneinfo import ZoneInfo

    from accounts.models import ApprovalRequest

    nine = dt.datetime(2027, 1, 5, 9, 0, tzinfo=ZoneInfo("Europe/Paris"))
    campaign = make_campaign(schedule_kind="at", send_at=nine, time_zone="Europe/Paris")
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_approve(campaign_id=campaign.pk, by=approver_bob, now=nine - dt.timedelta(days=2))
    Campaign.objects.filter(pk=campaign.pk).update(send_at=nine + dt.timedelta(hours=1))
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    ApprovalRequest.objects.filter(status="pending").update(requested_at=dt.datetime(2027, 1, 3, 7, 15, tzinfo=dt.UTC))
    client.force_login(manager_alice)
    page = client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()
    assert "Revision waiting for approval: asked by manager_alice on 2027-01-03 08:15 (Europe/Paris)" in page


@pytest.mark.presses("campaigns.campaign:transition/stop")
def test_stop_asks_again_saying_what_it_cancels_and_stops_only_on_the_answer(
    client, make_campaign, manager_alice, approver_bob, viewer_carol
):
    """Stop was done at the first press: a campaign cannot be started again, and a stray click
    cancelled its sends for good."""
    import datetime as dt
    import re
    from zoneinfo import ZoneInfo

    paris = ZoneInfo("Europe/Paris")
    send_at = dt.datetime(2026, 12, 24, 9, 30, tzinfo=paris)
    campaign = make_campaign(schedule_kind="at", send_at=send_at, time_zone="Europe/Paris")
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_approve(campaign_id=campaign.pk, by=approver_bob, now=send_at - dt.timedelta(days=1))
    assert Campaign.objects.get(pk=campaign.pk).status == "scheduled"
    url = f"/admin/campaigns/campaign/{campaign.pk}/transition/stop/"

    client.force_login(viewer_carol)  # refused as before, not asked
    assert client.post(url).status_code == 403
    client.force_login(manager_alice)
    asked = client.post(url)
    assert asked.status_code == 200
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", asked.content.decode()))
    assert "Stop campaign “Spring sale”? This cannot be undone." in text
    assert "Its next send (2026-12-24 09:30 (Europe/Paris)) and every one after it are cancelled." in text
    assert "Duplicate makes a new draft of it." in text
    assert Campaign.objects.get(pk=campaign.pk).status == "scheduled"
    # The page's answer is posted where the button was.
    form = re.search(r'<form method="post" action="([^"]+)">', asked.content.decode())
    assert form.group(1) == url and 'name="confirmed" value="yes"' in asked.content.decode()
    done = client.post(url, {"confirmed": "yes"})
    assert done.status_code == 302
    stopped = Campaign.objects.get(pk=campaign.pk)
    assert stopped.status == "stopped" and stopped.next_occurrence_at is None


def test_stop_of_an_api_triggered_campaign_says_its_calls_are_refused(client, live_trigger, manager_alice):
    client.force_login(manager_alice)
    asked = client.post(f"/admin/campaigns/campaign/{live_trigger.pk}/transition/stop/")
    assert "Its trigger API refuses every call from now on." in asked.content.decode()
    assert Campaign.objects.get(pk=live_trigger.pk).status == "live"


def test_a_throttle_of_no_message_a_second_is_refused_at_its_field(client, make_campaign, manager_alice):
    from tests.campaigns.helpers import change_form

    campaign = make_campaign()
    client.force_login(manager_alice)
    answer = client.post(
        f"/admin/campaigns/campaign/{campaign.pk}/change/", change_form(campaign, throttle_per_second=0)
    )
    assert answer.status_code == 200
    page = answer.content.decode()
    row = page[page.index("field-throttle_per_second") :]
    assert "at least 1 message per second" in row[: row.index("</div>", row.index("errorlist"))]
    assert Campaign.objects.get(pk=campaign.pk).throttle_per_second is None


def test_a_missed_window_longer_than_seven_days_is_refused_at_its_field(client, make_campaign, manager_alice):
    from tests.campaigns.helpers import change_form

    campaign = make_campaign()
    client.force_login(manager_alice)
    url = f"/admin/campaigns/campaign/{campaign.pk}/change/"
    answer = client.post(url, change_form(campaign, missed_window_minutes=525_600))
    assert answer.status_code == 200
    page = answer.content.decode()
    row = page[page.index("field-missed_window_minutes") :]
    assert "at most 10,080 minutes (7 days)" in row[: row.index("</div>", row.index("errorlist"))]
    assert Campaign.objects.get(pk=campaign.pk).missed_window_minutes == 60
    assert client.post(url, change_form(campaign, missed_window_minutes=10_080)).status_code == 302
    assert Campaign.objects.get(pk=campaign.pk).missed_window_minutes == 10_080


@pytest.mark.embedded  # the sends' zone read from the approved version on SQLite too
def test_the_report_its_csv_and_the_sends_read_in_the_approved_zone_while_a_revision_changes_it(
    client, make_campaign, manager_alice, approver_bob
):
    """An edit of the zone waiting for approval moved the report's timeline, its CSV and the times of
    the campaign's sends to the revision's zone, at odds with the occurrences and the sends' labels:
    a send made at 11:15 Paris read 05:15 New York, and the hours and days the chart sums by moved
    with an edit nobody approved."""
    import datetime as dt
    from zoneinfo import ZoneInfo

    from campaigns.services.lifecycle import campaign_update
    from delivery.admin.dispatches import campaign_sends_url
    from tests.delivery.reporting import T0, sent_dispatch

    nine = dt.datetime(2027, 1, 5, 9, 0, tzinfo=ZoneInfo("Europe/Paris"))
    campaign = make_campaign(schedule_kind="at", send_at=nine, time_zone="Europe/Paris")
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_approve(campaign_id=campaign.pk, by=approver_bob, now=nine - dt.timedelta(days=2))
    send = sent_dispatch(campaign.app, kind="campaign", source_id=campaign.pk)
    Dispatch.objects.filter(pk=send.pk).update(created_at=T0, started_at=T0, finished_at=T0)  # 11:15 in Paris
    campaign_update(campaign_id=campaign.pk, by=manager_alice, time_zone="America/New_York")
    assert Campaign.objects.get(pk=campaign.pk).has_pending_revision

    client.force_login(manager_alice)
    page = client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()
    report = page[page.index('id="campaign-report"') :]
    report = report[: report.index("Export as CSV")]
    assert "<th>hour (Europe/Paris)</th>" in report and "<td>2026-11-28 11:00</td>" in report
    assert "America/New_York" not in report
    csv_text = client.get(f"/admin/campaigns/campaign/{campaign.pk}/report.csv").content.decode()
    assert f"{send.pk},Report send,done,2026-11-28T11:15:00+01:00," in csv_text
    for url in (f"/admin/delivery/dispatch/{send.pk}/change/", campaign_sends_url(campaign.pk)):
        shown = client.get(url).content.decode()
        assert "2026-11-28 11:15 (Europe/Paris)" in shown and "(America/New_York)" not in shown, url
    rows = client.get(f"/admin/delivery/delivery/?dispatch__id__exact={send.pk}").content.decode()
    assert "(Europe/Paris)" in rows and "(America/New_York)" not in rows


def test_a_viewer_is_led_to_no_page_they_cannot_open_from_a_campaign(client, make_campaign, segment, viewer_carol):
    """The campaign's segment is neither named nor linked for a reader outside the segment's access:
    "segment #12", in its field and where the audience's size is withheld."""
    campaign = make_campaign()
    client.force_login(viewer_carol)
    page = client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()
    assert "Everyone" not in page and f"size not shown: segment #{segment.pk} is outside your access" in page
    assert f"/admin/audiences/segment/{segment.pk}/change/" not in page
    links = set(re.findall(r'href="(/admin/[^"#?]*)', page))
    assert links and {link for link in links if client.get(link).status_code == 404} == set()


def test_the_lists_delete_action_refuses_a_campaign_submitted_after_its_check(
    client, make_campaign, manager_alice, monkeypatch
):
    """The list's delete action checks each campaign's state, then deletes: a submission landing in
    between (a colleague's, the moment after) left a campaign in review to be deleted with it. Each
    is deleted through its delete service, which locks it and reads its state again; nothing is
    deleted, nor recorded as deleted, when one is refused."""
    from django.contrib.admin.models import LogEntry

    from accounts.models import AuditEvent
    from campaigns.admin import CampaignAdmin

    draft, submitted_meanwhile = make_campaign(name="Spare"), make_campaign(name="Spring sale")
    checked = CampaignAdmin.get_deleted_objects

    def check_then_submit(self, objs, request):
        answer = checked(self, objs, request)
        campaign_submit(campaign_id=submitted_meanwhile.pk, by=manager_alice)
        return answer

    monkeypatch.setattr(CampaignAdmin, "get_deleted_objects", check_then_submit)
    client.force_login(manager_alice)
    answer = client.post(
        "/admin/campaigns/campaign/",
        {"action": "delete_selected", "_selected_action": [draft.pk, submitted_meanwhile.pk], "post": "yes"},
    )
    assert answer.status_code == 403
    assert set(Campaign.objects.values_list("pk", flat=True)) == {draft.pk, submitted_meanwhile.pk}
    assert not LogEntry.objects.filter(action_flag=3).exists()
    assert not AuditEvent.objects.filter(action="campaign_deleted").exists()

    monkeypatch.setattr(CampaignAdmin, "get_deleted_objects", checked)
    answer = client.post(
        "/admin/campaigns/campaign/", {"action": "delete_selected", "_selected_action": [draft.pk], "post": "yes"}
    )
    assert answer.status_code == 302
    assert not Campaign.objects.filter(pk=draft.pk).exists()
    assert LogEntry.objects.filter(action_flag=3, object_id=str(draft.pk)).count() == 1
    assert AuditEvent.objects.filter(action="campaign_deleted", object_id=str(draft.pk)).count() == 1

    other = make_campaign(name="Other")  # its own delete page: recorded as before
    assert client.post(f"/admin/campaigns/campaign/{other.pk}/delete/", {"post": "yes"}).status_code == 302
    assert not Campaign.objects.filter(pk=other.pk).exists()
    assert LogEntry.objects.filter(action_flag=3, object_id=str(other.pk)).count() == 1
    assert AuditEvent.objects.filter(action="campaign_deleted", object_id=str(other.pk)).count() == 1


def test_a_colleague_s_campaign_form_offers_the_segment_they_may_not_see_by_number(
    client, make_campaign, segment, manager_alice, manager_mallory
):
    """manager_mallory works on the app, not on alice's segment: the campaign's form keeps it (a
    save does not blank it) as "a segment you have no access to (#12)", never by name."""
    campaign = make_campaign()
    url = f"/admin/campaigns/campaign/{campaign.pk}/change/"
    client.force_login(manager_mallory)
    page = client.get(url)
    choices = dict(page.context["adminform"].form.fields["segment"].choices)
    assert choices[segment.pk] == f"a segment you have no access to (#{segment.pk})"
    assert "Everyone" not in page.content.decode()
    client.force_login(manager_alice)
    choices = dict(client.get(url).context["adminform"].form.fields["segment"].choices)
    assert choices[segment.pk] == "Everyone"


@pytest.mark.presses("campaigns.campaign:transition/submit", "campaigns.campaign:transition/cancel_request")
def test_submit_and_cancel_say_in_words_what_happened(client, make_campaign, manager_alice, viewer_carol):
    """The message after Submit for review read "Done: submit." (the button's code, not words)."""
    from django.contrib.messages import get_messages

    campaign = make_campaign()
    client.force_login(viewer_carol)
    assert client.post(f"/admin/campaigns/campaign/{campaign.pk}/transition/submit/").status_code == 403
    client.force_login(manager_alice)

    def said(action):
        answer = client.post(f"/admin/campaigns/campaign/{campaign.pk}/transition/{action}/", follow=True)
        assert answer.redirect_chain[-1][0] == f"/admin/campaigns/campaign/{campaign.pk}/change/"
        return [str(m) for m in get_messages(answer.wsgi_request)]

    assert said("submit") == [
        "Submitted for review: “Spring sale” waits in the approvers' inbox; nothing is sent until one approves it."
    ]
    assert Campaign.objects.get(pk=campaign.pk).status == "in_review"
    assert said("cancel_request") == ["Request cancelled: “Spring sale” is a draft again, editable."]
    assert Campaign.objects.get(pk=campaign.pk).status == "draft"


def test_the_approval_inbox_says_what_kind_of_thing_waits_in_words(client, make_campaign, manager_alice, approver_bob):
    """The inbox's column read "Campaigns | campaign" (Django's name of the table), not a word."""
    campaign = make_campaign()
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    client.force_login(approver_bob)
    inbox = client.get("/admin/accounts/approvalrequest/").content.decode()
    assert "Campaigns | campaign" not in inbox
    assert re.search(r'<th[^>]*>\s*<div class="text">(<a[^>]*>)?Kind(</a>)?</div>', inbox)
    assert '<td class="field-subject_kind">Campaign</td>' in inbox
    request_id = re.search(r"/admin/accounts/approvalrequest/(\d+)/review/", inbox).group(1)
    page = client.get(f"/admin/accounts/approvalrequest/{request_id}/change/").content.decode()
    assert "Campaigns | campaign" not in page and re.search(r'field-subject_kind">.*?Campaign</div>', page, re.S)


@pytest.mark.presses("campaigns.campaign:transition/submit")
def test_submit_warns_at_once_when_no_one_may_approve_the_request(
    client, make_campaign, segment, admin_erin, approver_bob, manager_alice, viewer_carol
):
    """A request no one may decide was flagged stuck only afterwards (the inbox, the home page, the
    Administrators' notice); its submitter is now told at once, and on the page while it waits."""
    from django.contrib.messages import get_messages

    from accounts.models import ApprovalPolicy, ApprovalRequest
    from accounts.services import access_grant, approval_policy_activate

    policy = ApprovalPolicy.objects.create(name="Two approvers")
    policy.approver_users.set([approver_bob])
    approval_policy_activate(policy_id=policy.pk, by=admin_erin)
    access_grant(obj=segment, to=approver_bob, by=None)
    mine, theirs = make_campaign(by=approver_bob, name="Bob's sale"), make_campaign(name="Alice's sale")
    submit, page = "/admin/campaigns/campaign/{}/transition/submit/", "/admin/campaigns/campaign/{}/change/"

    def said(answer):
        return [(m.level_tag, str(m)) for m in get_messages(answer.wsgi_request)]

    client.force_login(viewer_carol)  # a refused role: refused as before, nothing asked
    assert client.post(submit.format(mine.pk)).status_code == 403
    assert not ApprovalRequest.objects.exists()

    client.force_login(approver_bob)
    warning = (
        "No one may approve this yet: the policy 'Two approvers' names only you, and you may not approve your "
        "own work. Ask an Administrator to add an approver to the policy; then cancel this request and submit "
        "it again."
    )
    answer = client.post(submit.format(mine.pk), follow=True)
    assert said(answer) == [
        (
            "success",
            "Submitted for review: “Bob's sale” waits in the approvers' inbox; nothing is sent until one approves it.",
        ),
        ("warning", warning),
    ]
    assert Campaign.objects.get(pk=mine.pk).status == "in_review"  # recorded all the same
    assert said(client.get(page.format(mine.pk))) == [("warning", warning)]  # while it waits
    client.force_login(viewer_carol)  # the policy is the request's, shown to its submitter only
    assert said(client.get(page.format(mine.pk))) == []

    client.force_login(manager_alice)  # approver_bob may decide Alice's: no warning
    answer = client.post(submit.format(theirs.pk), follow=True)
    assert [level for level, _ in said(answer)] == ["success"]
    assert said(client.get(page.format(theirs.pk))) == []
    client.force_login(admin_erin)  # an Administrator, who unblocks it, reads it too
    assert said(client.get(page.format(mine.pk))) == [
        (
            "warning",
            warning.replace(
                "names only you, and you may not approve your own work",
                "names only its submitter, who may not approve their own work",
            ),
        )
    ]


def test_the_warning_names_what_each_asked_approver_lacks_and_whom_to_ask(
    make_campaign, segment, team, admin_erin, approver_bob, manager_alice, manager_mallory
):
    """Said from the stuck flag's own standings: the only Approver being the submitter; some approvers
    without the role and some without access; never a user's or an app's name."""
    from django.contrib.auth.models import Group

    from accounts.models import ApprovalPolicy
    from accounts.selectors import approval_stuck_text
    from accounts.services import access_grant, access_revoke, approval_policy_activate, approval_policy_deactivate

    access_grant(obj=segment, to=approver_bob, by=None)
    admin_erin.groups.clear()  # the Administrator approves too: left out, approver_bob is the only Approver
    own = campaign_submit(campaign_id=make_campaign(by=approver_bob, name="Own").pk, by=approver_bob)
    assert approval_stuck_text(own, reader=approver_bob) == (
        "No one may approve this yet: the only Approver is you, and you may not approve your own work. "
        "Ask an Administrator to make someone else an Approver."
    )

    policy = ApprovalPolicy.objects.create(name="Team review")
    policy.approver_users.set([approver_bob, manager_mallory])  # the manager has no role that approves
    admin_erin.groups.add(Group.objects.get(name="Administrator"))
    approval_policy_activate(policy_id=policy.pk, by=type(admin_erin).objects.get(pk=admin_erin.pk))
    request = campaign_submit(campaign_id=make_campaign(name="Theirs").pk, by=manager_alice)
    assert approval_stuck_text(request, reader=manager_alice) == ""
    # A revoke that would leave the active policy without a decider is refused: the policy is
    # deactivated first, the request keeping the approvers it named.
    approval_policy_deactivate(policy_id=policy.pk, by=admin_erin)
    access_revoke(obj=team, to=approver_bob, by=None)
    said = approval_stuck_text(request, reader=manager_alice)
    assert said == (
        "No one may approve this yet: of the approvers the policy 'Team review' names, some hold no role that may "
        "approve campaigns; some have no access to this campaign. Ask an Administrator to give an approver the "
        "role that approves campaigns or give an approver access to this campaign."
    )
    assert "bob" not in said and "mallory" not in said and team.name not in said


@pytest.mark.parametrize("changelist", ["/admin/campaigns/campaign/", "/admin/journeys/journey/"])
def test_a_status_that_is_none_says_the_filter_is_wrong(client, manager_alice, changelist):
    """As the lists' other filters do for a value they do not know (``?e=1``): the list read as if
    nothing had the status, empty, with nothing said."""
    client.force_login(manager_alice)
    answer = client.get(changelist, {"status": "lve"})
    assert answer.status_code == 302 and answer.url.endswith("?e=1")
    for known in ("active", "all", "live", "draft"):
        assert client.get(changelist, {"status": known}).status_code == 200, known


def test_the_campaign_page_says_whether_the_approval_covers_its_name(
    client, make_campaign, manager_alice, approver_bob, team
):
    """Its content shows the name (``context.campaign.name``): a rename of the scheduled campaign is a
    revision, and the page says so beside the name and above the form. Otherwise a rename is free."""
    import datetime as dt

    from tests.factories import PushContentFactory

    send_at = timezone.now() + dt.timedelta(days=2)
    shown = PushContentFactory(app=team, name="Named", title="{{ context.campaign.name }}", body="Hello")
    named = make_campaign(content=shown, schedule_kind="at", send_at=send_at)
    plain = make_campaign(name="Plain", schedule_kind="at", send_at=send_at)
    for campaign in (named, plain):
        campaign_submit(campaign_id=campaign.pk, by=manager_alice)
        campaign_approve(campaign_id=campaign.pk, by=approver_bob)
    client.force_login(manager_alice)
    page = client.get(f"/admin/campaigns/campaign/{named.pk}/change/").content.decode()
    assert (
        "Saving an edit of its name (its content shows it), app, purpose, content, variants, audience, schedule, "
        "throttle or winner mode makes a pending" in page
    )
    assert "Its content shows the name (context.campaign.name): the approval covers it" in page
    page = client.get(f"/admin/campaigns/campaign/{plain.pk}/change/").content.decode()
    assert (
        "Saving an edit of its app, purpose, content, variants, audience, schedule, throttle or winner mode makes a pending"
        in page
    )
    assert "Not part of what an approval covers: its content does not show it" in page
    # Winner mode picking by the goal's conversion rate: the goal too.
    Campaign.objects.filter(pk=plain.pk).update(winner_mode=True, winner_metric=Campaign.WinnerMetric.CONVERSION_RATE)
    page = client.get(f"/admin/campaigns/campaign/{plain.pk}/change/").content.decode()
    assert (
        "Saving an edit of its app, purpose, content, variants, audience, schedule, throttle, winner mode or "
        "conversion goal (winner mode picks by it) makes a pending" in page
    )


def _related_links(page, field: str) -> dict[str, str]:
    """The links Django's related widget draws beside ``field``, by kind: their address, the
    selected object's id put in as its script does."""
    found = re.findall(
        rf'<a class="related-widget-wrapper-link (\w+)-related" id="\1_id_{field}"\s+(?:data-href-template|href)="([^"]+)"',
        page.content.decode(),
    )
    return {kind: url.replace("&amp;", "&") for kind, url in found}


def test_the_segments_links_are_offered_only_to_a_reader_they_work_for(
    client, make_campaign, segment, manager_alice, approver_bob
):
    """Beside the segment, an Approver read Django's change, delete and view links, asked of the
    segment's admin without an object (their role may delete segments), and the segment, Alice's,
    answered 403 to them. Each is shown only when the reader may use it on every choice offered."""
    campaign = make_campaign()
    client.force_login(approver_bob)
    page = client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/")
    assert page.status_code == 200 and 'name="segment"' in page.content.decode()
    assert client.get(f"/admin/audiences/segment/{segment.pk}/delete/").status_code in (403, 404)
    assert set(_related_links(page, "segment")) <= {"add"}

    client.force_login(manager_alice)
    links = _related_links(client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/"), "segment")
    assert {"change", "delete"} <= set(links)
    for kind in ("change", "delete"):
        answer = client.get(links[kind].replace("__fk__", str(segment.pk)))
        assert answer.status_code == 200, (kind, answer.status_code)


def test_an_approved_campaign_says_it_is_scheduled_until_its_first_send_then_sending(
    client, make_campaign, manager_alice, approver_bob
):
    """A campaign approved two days before its first send said "Version 1 ... is sending." on its
    page; it says when it will send, in its zone, until its first send, and "is sending" once live."""
    import datetime as dt
    from zoneinfo import ZoneInfo

    nine = dt.datetime(2027, 1, 5, 9, 0, tzinfo=ZoneInfo("Europe/Paris"))
    campaign = make_campaign(schedule_kind="at", send_at=nine, time_zone="Europe/Paris")
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_approve(campaign_id=campaign.pk, by=approver_bob, now=nine - dt.timedelta(days=2))
    assert Campaign.objects.get(pk=campaign.pk).status == Campaign.Status.SCHEDULED
    client.force_login(manager_alice)
    url = f"/admin/campaigns/campaign/{campaign.pk}/change/"

    def said(page):
        html = page.content.decode()
        version = html[html.index('<p id="approved-version">') :]
        return version[: version.index("</p>")].removeprefix('<p id="approved-version">')

    page = client.get(url)
    assert said(page).endswith(") is scheduled: its first send is at 2027-01-05 09:00 (Europe/Paris)."), said(page)
    warning = next(str(m) for m in page.context["messages"])
    assert "version 1 stays scheduled until the revision is approved" in warning and "sending" not in warning

    Campaign.objects.filter(pk=campaign.pk).update(status=Campaign.Status.LIVE)  # its first send started
    page = client.get(url)
    assert said(page).endswith(") is sending."), said(page)
    assert "version 1 keeps sending until the revision is approved" in next(str(m) for m in page.context["messages"])


def test_the_list_sorted_by_app_does_not_place_a_campaign_by_an_app_its_reader_may_not_see(
    client, viewer_carol, manager_mallory, admin_erin
):
    """Sorted by its App column (?o=), the list placed a campaign granted without its app among
    the reader's others by the name of the app it says by number: between "Alpha" and "Zulu", apps
    named letter by letter narrowed it down. That column is not sortable to whoever does not see
    every object; an Administrator still sorts by it."""
    from accounts.services import access_grant
    from campaigns.services.lifecycle import campaign_create
    from tests.factories import AppFactory, PushContentFactory, SegmentFactory

    segment = SegmentFactory(created_by=manager_mallory)
    access_grant(obj=segment, to=manager_mallory, by=None)
    campaigns = {}
    for name in ("Merger", "Alpha", "Zulu"):
        app = AppFactory(name=name)
        access_grant(obj=app, to=manager_mallory, by=None)
        campaigns[name] = campaign_create(
            by=manager_mallory,
            name=f"Sale in {name}",
            app=app,
            kind="scheduled",
            segment=segment,
            content=PushContentFactory(app=app),
        )
        access_grant(obj=app if name != "Merger" else campaigns[name], to=viewer_carol, by=None)

    def order(user, sort: bool) -> list[int]:
        client.force_login(user)
        return [
            row.pk
            for row in listed_rows(
                client, "/admin/campaigns/campaign/", sorted_by="app_shown" if sort else None, query={"status": "all"}
            )
        ]

    unsorted = order(viewer_carol, sort=False)
    assert sorted(unsorted) == sorted(c.pk for c in campaigns.values())
    assert order(viewer_carol, sort=True) == unsorted
    assert order(admin_erin, sort=True) == [campaigns[name].pk for name in ("Alpha", "Merger", "Zulu")]
