"""A campaign's test send and its previews show what its sends will: the same texts, rendered with the
same context (every send of a campaign gives its content ``context.campaign.id`` and ``.name``)."""

import datetime as dt

import pytest

from accounts.services import access_grant
from campaigns.review import campaign_phones_html
from campaigns.services.lifecycle import campaign_create
from campaigns.services.scheduling import campaign_test_send
from tests.factories import DeviceFactory, PushContentFactory, SegmentFactory

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
    named_campaign, pushsim, manager_alice, settings, monkeypatch
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
    devices_test_flag_set(device_ids=[tester.pk], is_test=False, by=manager_alice)
    pushsim.state.faults.rate_503 = 0.0
    Delivery.objects.filter(pk=row.pk).update(
        next_attempt_at=row.next_attempt_at - dt.timedelta(hours=2)
    )  # its hour passed
    dispatch_send(dispatch_id=dispatch.pk)
    row.refresh_from_db()
    assert (row.status, row.reason) == ("skipped", "not_test_device")
    assert pushsim.state.count(tester.token) == 0
