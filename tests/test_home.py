"""The admin's home page: per role, permission-filtered, cheap; the model list one click away."""

import datetime as dt
import json

import pytest
from django.utils import timezone

from accounts.models import ApprovalRequest
from accounts.services import access_grant
from campaigns.services.lifecycle import campaign_approve, campaign_create, campaign_request_changes, campaign_submit
from config.home import home_for, queue_state, sends_last_24h
from delivery.models import Delivery, Dispatch
from delivery.reasons import reason_html
from delivery.services.rollups import rollup_rebuild
from tests.factories import AppFactory, DeviceFactory, PushContentFactory, SegmentFactory, app_granted

pytestmark = pytest.mark.django_db


@pytest.fixture
def shop(manager_alice, approver_bob):
    return app_granted(manager_alice, approver_bob)


@pytest.fixture
def bank():
    """An app manager_alice has no access to."""
    return AppFactory(name="Bank")


def make_sends(app, outcomes, *, finished_at, label="Run", status="done", opened=0, kind="campaign"):
    """A dispatch of ``app`` with one row per (status, reason, platform), finished at ``finished_at``."""
    dispatch = Dispatch.objects.create(
        app=app,
        kind=kind,
        label=label,
        content_spec=PushContentFactory(app=app).spec(),
        status=status,
        total=len(outcomes),
        started_at=finished_at - dt.timedelta(minutes=1),
    )
    Dispatch.objects.filter(pk=dispatch.pk).update(created_at=finished_at - dt.timedelta(minutes=1))
    # Opened 5 minutes after, but never later than now: a send finished now, in an hour's last 5
    # minutes, was opened in the next hour, past the home page's window, and counted nowhere.
    opened_at = min(finished_at + dt.timedelta(minutes=5), timezone.now())
    rows = []
    for i, (row_status, reason, platform) in enumerate(outcomes):
        device = DeviceFactory(app=app, platform=platform)
        rows.append(
            Delivery(
                dispatch=dispatch,
                device=device,
                profile_id=device.profile_id,
                status=row_status,
                reason=reason,
                finished_at=finished_at,
                opened_at=min(opened_at, timezone.now()) if i < opened else None,
            )
        )
    Delivery.objects.bulk_create(rows)
    rollup_rebuild(dispatch_ids=[dispatch.pk])  # as the send pipeline would have counted them
    return dispatch


def _sends(response):
    html = response.content.decode()
    start = html.index('id="pd-sends-data"')
    start = html.index(">", start) + 1
    return json.loads(html[start : html.index("</script>", start)])


def _skips(sends):
    """The skips by reason as the page lists them: (reason, count), the most first."""
    return [(reason, count) for reason, _label, count in sends["skipped_shown"]]


def test_manager_sees_their_apps_sends_per_hour_and_no_operations(
    client, manager_alice, shop, bank, django_assert_max_num_queries
):
    now = timezone.now()
    make_sends(
        shop,
        [("accepted", "", "ios"), ("accepted", "", "android"), ("failed", "BadDeviceToken", "ios")]
        + [("unknown", "lease_expired", "android")]
        + [("skipped", "frequency_cap", "ios")] * 2
        + [("skipped", "quiet_hours", "android")],
        finished_at=now - dt.timedelta(hours=2),
        opened=1,
    )
    make_sends(shop, [("accepted", "", "ios")] * 4, finished_at=now - dt.timedelta(hours=30))  # before the window
    make_sends(bank, [("accepted", "", "ios")] * 7, finished_at=now - dt.timedelta(hours=1))  # no access
    client.force_login(manager_alice)
    with django_assert_max_num_queries(40):
        response = client.get("/admin/")
    assert response.status_code == 200
    sends = _sends(response)
    assert len(sends["labels"]) == 25  # the 24 full hours before this one, and this one
    # The outcomes add up to what was targeted, the one whose outcome was lost among them.
    assert sends["totals"] == {"targeted": 7, "accepted": 2, "failed": 1, "unknown": 1, "skipped": 3, "opened": 1}
    hour = (now - dt.timedelta(hours=2)).replace(minute=0, second=0, microsecond=0).strftime("%H:%M")
    at = sends["labels"].index(hour)
    assert (sends["series"]["accepted"][at], sends["series"]["skipped"][at]) == (2, 3)
    assert _skips(sends) == [("frequency_cap", 2), ("quiet_hours", 1)]
    html = response.content.decode()
    assert 'href="/admin/models/"' in html
    assert "pushdesk/vendor/chart.js/chart.umd.min.js" in html
    assert 'id="pd-health"' not in html and 'id="pd-queue"' not in html


def test_administrator_sees_provider_health_queue_and_running_dispatches(client, admin_erin, shop, bank):
    now = timezone.now()
    make_sends(
        shop,
        [("accepted", "", "ios")] * 3 + [("failed", "BadDeviceToken", "ios")],
        finished_at=now - dt.timedelta(minutes=10),
    )
    make_sends(
        bank,
        [("accepted", "", "android"), ("failed", "credentials: UNAUTHENTICATED", "android")],
        finished_at=now - dt.timedelta(minutes=5),
    )
    make_sends(shop, [("accepted", "", "android")] * 5, finished_at=now - dt.timedelta(hours=3))  # not the last hour
    running = make_sends(shop, [("accepted", "", "ios")], finished_at=now, label="Spring sale", status="sending")
    client.force_login(admin_erin)
    response = client.get("/admin/")
    health = {(row["app"], row["platform"]): row for row in response.context["home"]["health"]}
    assert set(health) == {("Shop", "ios"), ("Bank", "android")}
    assert (health["Shop", "ios"]["accepted"], health["Shop", "ios"]["errors"]) == (4, 1)
    assert health["Shop", "ios"]["error_rate"] == 20.0
    assert health["Shop", "ios"]["reasons"] == [("BadDeviceToken", 1)]
    assert health["Bank", "android"]["credentials"] == "credentials: UNAUTHENTICATED"
    html = response.content.decode()
    assert "credentials refused" in html
    assert f'href="/admin/delivery/dispatch/{running.pk}/change/"' in html
    assert f'href="/admin/delivery/app/{shop.pk}/change/"' in html
    assert 'id="pd-queue-depth"' in html


def test_the_home_page_under_another_encryption_key_names_the_apps_whose_credentials_it_cannot_decrypt(
    client, admin_erin, manager_alice, shop, bank, settings, django_capture_on_commit_callbacks
):
    """A database restored under the wrong key: the page shows (loading an app's row decrypted its
    credentials, and it answered 500) and tells an Administrator which app's credentials wait for the key."""
    from cryptography.fernet import Fernet

    from campaigns.models import Campaign
    from delivery.models import App

    App.objects.filter(pk=shop.pk).update(fcm_service_account="a service account")
    segment = SegmentFactory()
    access_grant(obj=segment, to=manager_alice, by=None)
    campaign = campaign_create(
        by=manager_alice,
        name="Spring sale",
        app=shop,
        segment=segment,
        content=PushContentFactory(app=shop),
        kind="scheduled",
    )
    Campaign.objects.filter(pk=campaign.pk).update(status=Campaign.Status.LIVE)
    settings.PUSHDESK_ENCRYPTION_KEY = Fernet.generate_key().decode()

    client.force_login(admin_erin)
    html = client.get("/admin/").content.decode()
    assert 'id="undecryptable-credentials"' in html
    assert (
        f'<li><a href="/admin/delivery/app/{shop.pk}/change/">app &#x27;Shop&#x27; (id {shop.pk}): the FCM service '
        "account cannot be decrypted with this PUSHDESK_ENCRYPTION_KEY (a different key, or one dropped before "
        "rotating?)</a></li>"
    ) in html
    assert "Bank" not in html.split('id="undecryptable-credentials"')[1].split("</div>")[0]
    client.force_login(manager_alice)
    html = client.get("/admin/").content.decode()
    assert "Spring sale" in html and 'id="undecryptable-credentials"' not in html


def test_test_sends_are_left_out_of_every_figure_of_the_last_24_hours(client, manager_alice, shop):
    """A test send goes to the app's test devices, not to an audience: none of its rows is counted,
    so accepted never exceeds targeted."""
    now = timezone.now()
    make_sends(shop, [("accepted", "", "ios")] * 2 + [("skipped", "no_device", "none")], finished_at=now, opened=1)
    make_sends(
        shop,
        [("accepted", "", "ios")] * 3 + [("failed", "BadDeviceToken", "android"), ("skipped", "not_opted_in", "ios")],
        finished_at=now,
        opened=2,
        kind="test",
    )
    client.force_login(manager_alice)
    sends = _sends(client.get("/admin/"))
    assert sends["totals"] == {"targeted": 3, "accepted": 2, "failed": 0, "unknown": 0, "skipped": 1, "opened": 1}
    assert _skips(sends) == [("no_device", 1)]


def test_provider_health_shows_unknown_rows_apart_from_the_errors(client, admin_erin, shop):
    """A row left unknown (a worker lost mid-send, a connection dropped after the message went out)
    may have been delivered: it is neither an error nor in the error rate."""
    now = timezone.now()
    lost = "transport:timeout (may have been delivered)"
    make_sends(
        shop,
        [("accepted", "", "ios")] * 3
        + [("failed", "BadDeviceToken", "ios")]
        + [("unknown", "lease_expired", "ios")] * 2
        + [("unknown", lost, "ios")],
        finished_at=now - dt.timedelta(minutes=10),
    )
    client.force_login(admin_erin)
    response = client.get("/admin/")
    (row,) = response.context["home"]["health"]
    assert (row["accepted"], row["errors"], row["unknown"], row["error_rate"]) == (3, 1, 3, 25.0)
    # Summed over whole quarter hours: the window's start is named, 60 to 75 minutes ago.
    since = (now - dt.timedelta(hours=1)).replace(second=0, microsecond=0)
    since = since.replace(minute=since.minute // 15 * 15)
    assert f'Provider health, last hour <span class="pd-detail">(since {since:%H:%M} UTC)</span>' in (
        response.content.decode()
    )
    assert row["reasons"] == [("BadDeviceToken", 1)]
    assert row["unknown_reasons"] == [("lease_expired", 2), (lost, 1)]
    html = response.content.decode()
    assert "<th>Unknown (maybe delivered)</th>" in html
    assert (
        '<td data-health="errors">1</td><td data-health="error-rate">25.0%</td><td data-health="unknown">3</td>' in html
    )
    # Each reason in words, its code beside, as the chart's skips above say theirs; the platform in words.
    bad, gone, timeout = (reason_html(code) for code in ("BadDeviceToken", "lease_expired", lost))
    assert f"{bad} 1; unknown: {gone} 2, {timeout} 1</td>" in html
    assert "the token is not one of the app&#x27;s environment (APNs) <code>BadDeviceToken</code> 1" in html
    assert '<td class="pd-health-platform">iOS</td>' in html


def test_provider_health_counts_as_errors_only_the_providers_answers(client, admin_erin, shop):
    """Rows that failed before a provider had them (a message that could not be personalised, one over
    the size limit) are no answer of the provider: shown apart as not sent, outside the error rate."""
    now = timezone.now()
    unrendered = "render_error: unknown variable 'first_name'"
    make_sends(
        shop,
        [("accepted", "", "ios")] * 3
        + [("failed", "BadDeviceToken", "ios")]
        + [("failed", unrendered, "ios")] * 2
        + [("failed", "payload_too_large (4200 bytes)", "ios")],
        finished_at=now - dt.timedelta(minutes=10),
    )
    client.force_login(admin_erin)
    response = client.get("/admin/")
    (row,) = response.context["home"]["health"]
    assert (row["accepted"], row["errors"], row["error_rate"]) == (3, 1, 25.0)
    assert row["reasons"] == [("BadDeviceToken", 1)]
    assert row["unsent_reasons"] == [(unrendered, 2), ("payload_too_large (4200 bytes)", 1)]
    html = response.content.decode()
    assert '<td data-health="errors">1</td><td data-health="error-rate">25.0%</td>' in html
    assert (
        f"{reason_html('BadDeviceToken')} 1; not sent (failed before a provider had them): "
        f"{reason_html(unrendered)} 2, {reason_html('payload_too_large (4200 bytes)')} 1</td>"
    ) in html


def test_a_running_stream_says_what_it_has_done_as_its_rows_are_now(client, admin_erin, shop):
    """An open stream's counters on its row are kept once a minute (calls append without touching
    it): the home page sums its rollup, as the stream's page does, not the row's last copy."""
    now = timezone.now()
    stream = make_sends(
        shop,
        [("accepted", "", "ios")] * 3 + [("failed", "BadDeviceToken", "ios")],
        finished_at=now,
        label="Order shipped: API triggers",
        status="sending",
    )
    Dispatch.objects.filter(pk=stream.pk).update(standing=True, total=1, accepted=1, failed=0)
    client.force_login(admin_erin)
    (item,) = client.get("/admin/").context["home"]["dispatches"].items
    assert item.detail.startswith("Sending, 4 of 4 done")


def test_queue_state_reports_depth_and_the_oldest_tasks_age():
    from django_q.brokers import get_broker
    from django_q.signing import SignedPackage

    broker = get_broker(list_key="pushdesk-home-test")
    broker.purge_queue()
    now = timezone.now()
    try:
        assert queue_state(broker, now=now) == {"depth": 0, "oldest_seconds": None, "problem": None}
        for minutes in (7, 2):
            task = {"id": f"t{minutes}", "func": "math.floor", "args": (), "kwargs": {}}
            broker.enqueue(SignedPackage.dumps({**task, "started": now - dt.timedelta(minutes=minutes)}))
        state = queue_state(broker, now=now)
        assert state["depth"] == 2
        assert state["oldest_seconds"] == pytest.approx(420, abs=1)
    finally:
        broker.purge_queue()


@pytest.fixture
def campaign_for_review(shop, manager_alice):
    content = PushContentFactory(app=shop)
    segment = SegmentFactory(name="Everyone", created_by=manager_alice)
    access_grant(obj=segment, to=manager_alice, by=None)
    campaign = campaign_create(
        by=manager_alice, name="Spring sale", app=shop, segment=segment, content=content, kind="scheduled"
    )
    return campaign_submit(campaign_id=campaign.pk, by=manager_alice)


def test_approvals_waiting_for_me_and_mine_waiting_for_others(client, manager_alice, approver_bob, campaign_for_review):
    request = campaign_for_review
    client.force_login(approver_bob)
    html = client.get("/admin/").content.decode()
    assert f'href="/admin/accounts/approvalrequest/{request.pk}/review/">Spring sale</a>' in html
    assert 'class="pd-stuck"' not in html
    home = home_for(manager_alice)
    waiting, mine = home["sections"][2], home["sections"][3]
    assert waiting.items == []
    assert [(item.label, item.stuck) for item in mine.items] == [("Spring sale", "")]


def test_requests_flagged_stuck_when_old_or_no_one_may_approve(manager_alice, approver_bob, campaign_for_review):
    request = campaign_for_review
    (mine,) = home_for(manager_alice)["sections"][3].items
    assert mine.stuck == ""
    ApprovalRequest.objects.filter(pk=request.pk).update(requested_at=timezone.now() - dt.timedelta(days=4))
    (mine,) = home_for(manager_alice)["sections"][3].items
    assert mine.stuck == "stuck: waiting for 4 days"
    (waiting,) = home_for(approver_bob)["sections"][2].items
    assert waiting.stuck == "stuck: waiting for 4 days"
    ApprovalRequest.objects.filter(pk=request.pk).update(requested_at=timezone.now())
    approver_bob.groups.clear()  # the only approver loses the role
    (mine,) = home_for(manager_alice)["sections"][3].items
    assert mine.stuck == "stuck: no one may approve it"


def test_live_scheduled_and_imports_are_filtered_by_access(client, manager_alice, shop, bank):
    from audiences.models import Import
    from campaigns.models import Campaign

    content = PushContentFactory(app=shop)
    segment = SegmentFactory(name="Everyone", created_by=manager_alice)
    access_grant(obj=segment, to=manager_alice, by=None)
    mine = campaign_create(by=manager_alice, name="Mine", app=shop, segment=segment, content=content, kind="scheduled")
    soon = timezone.now() + dt.timedelta(hours=3)
    Campaign.objects.filter(pk=mine.pk).update(status="scheduled", next_occurrence_at=soon)
    other = Campaign.objects.create(
        name="Theirs", app=bank, content=PushContentFactory(app=bank), kind="scheduled", owner=manager_alice
    )
    Campaign.objects.filter(pk=other.pk).update(status="live")
    running = Import.objects.create(created_by=manager_alice, status="running", rows_done=12)
    client.force_login(manager_alice)
    html = client.get("/admin/").content.decode()
    assert f'href="/admin/campaigns/campaign/{mine.pk}/change/">Campaign: Mine</a>' in html
    assert "Theirs" not in html
    assert f'href="/admin/audiences/import/{running.pk}/change/"' in html


@pytest.mark.presses("admin:models")
def test_all_models_lists_the_apps_one_may_see(client, manager_alice, outsider_dave):
    client.force_login(manager_alice)
    response = client.get("/admin/models/")
    assert response.status_code == 200
    labels = {app["app_label"] for app in response.context["app_list"]}
    assert {"campaigns", "audiences"} <= labels
    assert client.get("/admin/campaigns/").status_code == 200  # an app's own list still works
    client.force_login(outsider_dave)
    assert client.get("/admin/models/").context["app_list"] == []
    client.logout()
    response = client.get("/admin/models/")
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")


def test_home_tells_a_user_without_a_role_what_to_ask_for(client, outsider_dave):
    client.force_login(outsider_dave)
    html = client.get("/admin/").content.decode()
    assert 'id="no-access"' in html and "no role yet" in html
    assert 'id="pd-home"' not in html


def test_home_links_the_lists_one_may_view(client, manager_alice, shop):
    client.force_login(manager_alice)
    html = client.get("/admin/").content.decode()
    assert 'href="/admin/campaigns/campaign/">Campaigns</a>' in html
    assert 'href="/admin/accounts/approvalrequest/">Approval requests</a>' in html
    assert 'id="no-access"' not in html


def test_administrator_home_says_the_queue_cannot_be_read_while_redis_is_down(
    client, admin_erin, monkeypatch, settings
):
    from django_q.conf import Conf

    from tests.processes import free_port

    if "redis" not in settings.Q_CLUSTER:
        pytest.skip("the queue is the database here")
    closed = f"redis://127.0.0.1:{free_port()}/0"
    monkeypatch.setattr(Conf, "REDIS", closed)
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": closed}}
    client.force_login(admin_erin)
    response = client.get("/admin/")
    assert response.status_code == 200
    assert "cannot be read: Redis does not answer (ConnectionError)" in response.content.decode()


def test_scheduled_next_reads_each_campaigns_next_send_in_its_own_zone(client, manager_alice, approver_bob, shop):
    from zoneinfo import ZoneInfo

    segment = SegmentFactory(name="Everyone", created_by=manager_alice)
    access_grant(obj=segment, to=manager_alice, by=None)
    nine_in_new_york = dt.datetime(2027, 1, 5, 9, 0, tzinfo=ZoneInfo("America/New_York"))
    nine_in_paris = dt.datetime(2027, 1, 6, 9, 0, tzinfo=ZoneInfo("Europe/Paris"))
    for name, send_at, time_zone, local in (
        ("New York sale", nine_in_new_york, "America/New_York", False),
        ("Paris morning", nine_in_paris, "Europe/Paris", True),
    ):
        campaign = campaign_create(
            by=manager_alice,
            name=name,
            app=shop,
            segment=segment,
            content=PushContentFactory(app=shop),
            kind="scheduled",
            schedule_kind="at",
            send_at=send_at,
            time_zone=time_zone,
            at_local_time=local,
        )
        campaign_submit(campaign_id=campaign.pk, by=manager_alice)
        campaign_approve(campaign_id=campaign.pk, by=approver_bob, now=send_at - dt.timedelta(days=2))
    client.force_login(manager_alice)
    html = client.get("/admin/").content.decode()
    assert "next send 2027-01-05 09:00 (America/New_York)" in html
    # At each profile's local time: 09:00 as entered, started when UTC+14 gets there (20:00 in Paris).
    assert "next send 2027-01-06 09:00 at each profile&#x27;s local time, from 2027-01-05 20:00 (Europe/Paris)" in html


def test_my_requests_say_when_they_were_sent_in_each_campaigns_zone(client, manager_alice, shop):
    segment = SegmentFactory(name="Everyone", created_by=manager_alice)
    access_grant(obj=segment, to=manager_alice, by=None)
    for name, time_zone, local in (
        ("New York sale", "America/New_York", False),
        ("Paris morning", "Europe/Paris", True),
    ):
        campaign = campaign_create(
            by=manager_alice,
            name=name,
            app=shop,
            segment=segment,
            content=PushContentFactory(app=shop),
            kind="scheduled",
            schedule_kind="at",
            send_at=dt.datetime(2027, 2, 1, 9, 0, tzinfo=dt.UTC),
            time_zone=time_zone,
            at_local_time=local,
        )
        request = campaign_submit(campaign_id=campaign.pk, by=manager_alice)
        ApprovalRequest.objects.filter(pk=request.pk).update(
            requested_at=dt.datetime(2027, 1, 5, 14, 30, tzinfo=dt.UTC)
        )
    client.force_login(manager_alice)
    html = client.get("/admin/").content.decode()
    assert "sent for approval on 2027-01-05 09:30 (America/New_York)" in html
    assert "sent for approval on 2027-01-05 15:30 (Europe/Paris)" in html


def test_a_stuck_request_says_when_it_was_asked_as_its_requesters_card_does(
    client, manager_alice, approver_bob, admin_erin, shop
):
    from accounts.models import ApprovalPolicy
    from accounts.services import approval_policy_activate

    policy = ApprovalPolicy.objects.create(name="Bob decides", applies_to_campaigns=True)
    policy.approver_users.add(approver_bob)
    approval_policy_activate(policy_id=policy.pk, by=admin_erin)
    segment = SegmentFactory(name="Everyone", created_by=manager_alice)
    access_grant(obj=segment, to=manager_alice, by=None)
    campaign = campaign_create(
        by=manager_alice,
        name="Stranded",
        app=shop,
        segment=segment,
        content=PushContentFactory(app=shop),
        kind="scheduled",
        schedule_kind="at",
        send_at=dt.datetime(2030, 1, 5, 9, 0, tzinfo=dt.UTC),
        time_zone="America/New_York",
    )
    request = campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    ApprovalRequest.objects.filter(pk=request.pk).update(requested_at=dt.datetime(2027, 1, 5, 14, 30, tzinfo=dt.UTC))
    approver_bob.groups.clear()  # the policy's only approver loses the role: nobody may decide it

    client.force_login(admin_erin)
    html = client.get("/admin/").content.decode()
    notice = html[html.index('id="stuck-approvals"') :]
    assert "— asked by manager_alice on 2027-01-05 09:30 (America/New_York), policy" in notice
    client.force_login(manager_alice)
    html = client.get("/admin/").content.decode()
    assert "sent for approval on 2027-01-05 09:30 (America/New_York)" in html  # the requester's own card


def test_the_skips_read_in_words_with_their_code_beside(client, manager_alice, shop):
    now = timezone.now()
    make_sends(shop, [("skipped", "no_device", "none")] * 2 + [("skipped", "not_opted_in", "ios")], finished_at=now)
    client.force_login(manager_alice)
    html = client.get("/admin/").content.decode()
    assert (
        '<span data-skip-reason="no_device">no phone registered for the app <code>no_device</code> 2</span>, '
        '<span data-skip-reason="not_opted_in">notifications are turned off on the phone <code>not_opted_in</code> 1'
        "</span>"
    ) in html


def test_the_last_24_hours_end_now_not_at_the_top_of_the_hour_to_come(client, manager_alice, shop):
    """The window's heading ended at the next full hour (06:00 at 05:05): a time still to come."""
    now = timezone.localtime(timezone.now())
    client.force_login(manager_alice)
    html = client.get("/admin/").content.decode()
    heading = html[html.index("Sends, last 24 hours") :]
    heading = heading[: heading.index("</h2>")]
    upcoming = (now.replace(minute=0, second=0, microsecond=0) + dt.timedelta(hours=1)).strftime("%Y-%m-%d %H:%M")
    assert upcoming not in heading
    assert f"– now, {now:%H:%M}" in heading or f"– now, {(now + dt.timedelta(minutes=1)):%H:%M}" in heading


def test_the_last_24_hours_hold_a_send_of_23_hours_and_50_minutes_ago(manager_alice, shop):
    """At 06:10 the window began at 07:00 the day before: about 23 hours, a send of 06:20 the day before
    left out of "the last 24 hours". It holds the 24 full hours before this one and this one up to now,
    and says where it begins."""
    now = (timezone.localtime(timezone.now()) - dt.timedelta(days=2)).replace(minute=10, second=0, microsecond=0)
    make_sends(shop, [("accepted", "", "ios")] * 2, finished_at=now - dt.timedelta(hours=23, minutes=50))
    make_sends(shop, [("accepted", "", "ios")] * 3, finished_at=now - dt.timedelta(hours=25))  # before the window
    sends = sends_last_24h(manager_alice, now=now)
    assert sends["totals"]["accepted"] == 2
    assert len(sends["hours"]) == 25 and sends["labels"][0] == sends["labels"][-1] == f"{now:%H}:00"
    assert sends["start"] == f"{now - dt.timedelta(hours=24):%Y-%m-%d %H}:00"


def _sent_back(app, by, approver, *, name="Spring sale", comment="Shorten the title.", time_zone="UTC"):
    """A campaign of ``app`` that ``by`` submitted and ``approver`` sent back with ``comment``, and the request."""
    segment = SegmentFactory(created_by=by)
    access_grant(obj=segment, to=by, by=None)
    campaign = campaign_create(
        by=by,
        name=name,
        app=app,
        segment=segment,
        content=PushContentFactory(app=app),
        kind="scheduled",
        time_zone=time_zone,
    )
    request = campaign_submit(campaign_id=campaign.pk, by=by)
    campaign_request_changes(campaign_id=campaign.pk, by=approver, comment=comment, request_id=request.pk)
    return campaign, ApprovalRequest.objects.get(pk=request.pk)


def _sent_back_box(html: str) -> str:
    start = html.index("<h2>Sent back to me</h2>")
    return html[start : html.index("</section>", start)]


def _sent_back_labels(user) -> list[str]:
    (section,) = [s for s in home_for(user)["sections"] if s.title == "Sent back to me"]
    return [item.label for item in section.items]


def test_a_request_sent_back_shows_in_its_authors_box_with_who_when_and_why(client, manager_alice, approver_bob, shop):
    """Request changes took the request out of its author's pending box and told them nothing: it
    shows, sent back, with its approver, when (in the campaign's zone) and the comment."""
    campaign, request = _sent_back(shop, manager_alice, approver_bob, time_zone="America/New_York")
    ApprovalRequest.objects.filter(pk=request.pk).update(decided_at=dt.datetime(2027, 1, 5, 14, 30, tzinfo=dt.UTC))
    client.force_login(manager_alice)
    html = client.get("/admin/").content.decode()
    box = _sent_back_box(html)
    assert f'<a href="/admin/campaigns/campaign/{campaign.pk}/change/">Spring sale</a>' in box
    assert "sent back by approver_bob on 2027-01-05 09:30 (America/New_York)" in box
    assert "Shorten the title." in box
    assert f'href="/admin/accounts/approvalrequest/{request.pk}/change/"' in box
    assert 'href="/admin/accounts/approvalrequest/?show=sent_back">All</a>' in box
    assert "None of your requests is waiting." in html  # no longer pending
    client.force_login(approver_bob)
    assert "Nothing of yours was sent back." in _sent_back_box(client.get("/admin/").content.decode())


def test_a_request_sent_back_leaves_the_box_once_submitted_again_and_a_cancelled_one_never_shows(
    manager_alice, approver_bob, shop
):
    from campaigns.services.lifecycle import campaign_cancel_request

    campaign, _request = _sent_back(shop, manager_alice, approver_bob)
    assert _sent_back_labels(manager_alice) == ["Spring sale"]
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    assert _sent_back_labels(manager_alice) == []
    assert [item.label for item in home_for(manager_alice)["sections"][3].items] == ["Spring sale"]
    campaign_cancel_request(campaign_id=campaign.pk, by=manager_alice)  # its latest request is cancelled
    assert _sent_back_labels(manager_alice) == []
    segment = SegmentFactory(created_by=manager_alice)
    access_grant(obj=segment, to=manager_alice, by=None)
    withdrawn = campaign_create(
        by=manager_alice, name="Withdrawn", app=shop, segment=segment, content=PushContentFactory(app=shop)
    )
    campaign_submit(campaign_id=withdrawn.pk, by=manager_alice)
    campaign_cancel_request(campaign_id=withdrawn.pk, by=manager_alice)
    assert _sent_back_labels(manager_alice) == []


def test_a_request_sent_back_leaves_the_box_when_its_campaign_is_deleted(manager_alice, approver_bob, shop):
    from campaigns.services.lifecycle import campaign_delete

    campaign, _request = _sent_back(shop, manager_alice, approver_bob)
    campaign_delete(campaign_id=campaign.pk, by=manager_alice)  # nothing is left to submit again
    assert _sent_back_labels(manager_alice) == []


def test_only_its_author_sees_a_request_sent_back(
    manager_alice, manager_mallory, approver_bob, viewer_carol, admin_erin, shop
):
    """A Viewer submits nothing and has none; an Administrator, who sees every request, has their own only."""
    for user in (manager_mallory, viewer_carol):
        access_grant(obj=shop, to=user, by=None)
    _sent_back(shop, manager_alice, approver_bob, name="Alice's")
    _sent_back(shop, manager_mallory, approver_bob, name="Mallory's")
    _sent_back(shop, admin_erin, approver_bob, name="Erin's")
    assert _sent_back_labels(manager_alice) == ["Alice's"]
    assert _sent_back_labels(manager_mallory) == ["Mallory's"]
    assert _sent_back_labels(admin_erin) == ["Erin's"]
    assert _sent_back_labels(viewer_carol) == []


def test_a_comment_sent_back_is_escaped_and_shortened_the_whole_on_the_requests_page(
    client, manager_alice, approver_bob, shop
):
    said = "<b>Not</b> this image: " + "the colours clash with the brand. " * 20
    _campaign, request = _sent_back(shop, manager_alice, approver_bob, comment=said)
    client.force_login(manager_alice)
    box = _sent_back_box(client.get("/admin/").content.decode())
    assert "&lt;b&gt;Not&lt;/b&gt; this image" in box and "<b>Not</b>" not in box
    (item,) = [s for s in home_for(manager_alice)["sections"] if s.title == "Sent back to me"][0].items
    assert len(item.comment) <= 200 and item.comment.endswith("…")
    assert said.strip() not in box
    page = client.get(f"/admin/accounts/approvalrequest/{request.pk}/change/").content.decode()
    assert "the colours clash with the brand. " * 19 + "the colours clash with the brand." in page


def test_a_campaign_sent_back_its_author_may_no_longer_see_is_named_by_its_number(
    client, manager_alice, approver_bob, shop
):
    from accounts.services import access_revoke

    campaign, request = _sent_back(
        shop, manager_alice, approver_bob, name="Secret sale", comment="Secret sale: say 40 % off, not 30 %."
    )
    for obj in (shop, campaign):  # its creator is granted the campaign itself
        access_revoke(obj=obj, to=manager_alice, by=None)
    client.force_login(manager_alice)
    box = _sent_back_box(client.get("/admin/").content.decode())
    assert f"campaign #{campaign.pk}" in box
    assert "Secret sale" not in box and f"/admin/campaigns/campaign/{campaign.pk}/" not in box
    # The approver's words may name or quote it: withheld, as on the request's page.
    assert "40 %" not in box and f"withheld: you no longer have access to campaign #{campaign.pk}" in box
    assert f'href="/admin/accounts/approvalrequest/{request.pk}/change/"' in box  # their own request's record


def test_the_sent_back_box_reads_in_a_number_of_queries_that_does_not_grow_with_its_rows(
    client, manager_alice, approver_bob, shop, django_assert_max_num_queries
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from accounts.services import access_revoke

    _sent_back(shop, manager_alice, approver_bob, name="Sale 0", time_zone="Europe/Paris")
    client.force_login(manager_alice)
    client.get("/admin/")  # the caches every page fills (content types)
    with CaptureQueriesContext(connection) as one:
        client.get("/admin/")
    for i in range(1, 6):
        _sent_back(shop, manager_alice, approver_bob, name=f"Sale {i}", time_zone="America/New_York")
    other = app_granted(manager_alice, approver_bob, name="Other")
    for i in range(3):
        gone, _request = _sent_back(other, manager_alice, approver_bob, name=f"Gone {i}")
        access_revoke(obj=gone, to=manager_alice, by=None)
    access_revoke(obj=other, to=manager_alice, by=None)
    with django_assert_max_num_queries(len(one.captured_queries)):
        html = client.get("/admin/").content.decode()
    box = _sent_back_box(html)
    assert box.count('class="pd-item"') == 9
    assert box.count("/admin/campaigns/campaign/") == 6


def test_the_sent_back_box_shows_as_many_as_the_others_and_all_lists_them(
    client, manager_alice, manager_mallory, approver_bob, shop
):
    from config.home import LIST_LIMIT

    access_grant(obj=shop, to=manager_mallory, by=None)
    for i in range(LIST_LIMIT + 1):
        _sent_back(shop, manager_alice, approver_bob, name=f"Sale {i}")
    again, _request = _sent_back(shop, manager_alice, approver_bob, name="Submitted again")
    campaign_submit(campaign_id=again.pk, by=manager_alice)
    _sent_back(shop, manager_mallory, approver_bob, name="Mallory's")
    labels = _sent_back_labels(manager_alice)
    assert len(labels) == LIST_LIMIT and labels[0] == f"Sale {LIST_LIMIT}"  # the latest first
    client.force_login(manager_alice)
    page = client.get("/admin/accounts/approvalrequest/?show=sent_back").content.decode()
    assert page.split('<li class="selected">')[1].split("</li>")[0].count("Sent back to me") == 1
    rows = page.split('id="result_list"')[1]
    assert all(f">Sale {i}</a>" in rows for i in range(LIST_LIMIT + 1))
    assert "Submitted again" not in rows and "Mallory's" not in rows


@pytest.mark.parametrize("requester", ["manager_alice", "approver_bob"])
def test_my_requests_awaiting_others_name_a_campaign_its_requester_may_no_longer_see_by_its_number(
    client, request, shop, requester
):
    from accounts.services import access_revoke

    user = request.getfixturevalue(requester)
    segment = SegmentFactory(created_by=user)
    access_grant(obj=segment, to=user, by=None)
    campaign = campaign_create(
        by=user, name="Secret sale", app=shop, segment=segment, content=PushContentFactory(app=shop), kind="scheduled"
    )
    approval = campaign_submit(campaign_id=campaign.pk, by=user)
    for obj in (shop, campaign):  # its creator is granted the campaign itself
        access_revoke(obj=obj, to=user, by=None)
    (mine,) = home_for(user)["sections"][3].items
    assert mine.label == f"campaign #{campaign.pk}"
    assert mine.url == f"/admin/accounts/approvalrequest/{approval.pk}/change/"
    client.force_login(user)
    assert "Secret sale" not in client.get("/admin/").content.decode()


def test_my_requests_awaiting_others_name_every_campaign_to_an_administrator(client, admin_erin, shop):
    segment = SegmentFactory(created_by=admin_erin)
    campaign = campaign_create(
        by=admin_erin,
        name="Secret sale",
        app=shop,
        segment=segment,
        content=PushContentFactory(app=shop),
        kind="scheduled",
    )
    campaign_submit(campaign_id=campaign.pk, by=admin_erin)
    (mine,) = home_for(admin_erin)["sections"][3].items
    assert mine.label == "Secret sale"
