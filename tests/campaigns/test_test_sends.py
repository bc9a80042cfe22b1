"""A campaign's test send and its previews show what its sends will: the same texts, rendered with the
same context (every send of a campaign gives its content ``context.campaign.id`` and ``.name``)."""

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
    assert "Spring sale" in campaign_phones_html(named_campaign)


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
