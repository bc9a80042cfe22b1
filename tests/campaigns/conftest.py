import pytest

from accounts.services import access_grant
from campaigns.models import Campaign
from campaigns.services.lifecycle import campaign_approve, campaign_create, campaign_submit
from tests.factories import AppFactory, PushContentFactory, SegmentFactory, app_granted


@pytest.fixture
def new_app(manager_alice, approver_bob):
    """An app a revision may move a campaign to, which Alice and Bob have access to."""
    return app_granted(manager_alice, approver_bob, name="New app")


@pytest.fixture
def abc(team):
    """Three contents of the Shop app, A, B and C."""
    return [PushContentFactory(app=team, name=f"Sale {label}", title=f"Title {label}") for label in "ABC"]


@pytest.fixture
def shop(db):
    return AppFactory(name="Shop")


@pytest.fixture
def team(shop, manager_alice, manager_mallory, approver_bob, viewer_carol):
    """Everyone in the cast works on the Shop app (outsider_dave does not)."""
    for user in (manager_alice, manager_mallory, approver_bob, viewer_carol):
        access_grant(obj=shop, to=user, by=None)
    return shop


@pytest.fixture
def segment(team, manager_alice):
    segment = SegmentFactory(name="Everyone", created_by=manager_alice)
    access_grant(obj=segment, to=manager_alice, by=None)
    return segment


@pytest.fixture
def content(team):
    from delivery.models import PushContent

    return PushContent.objects.create(
        app=team, name="Welcome", title="Hello {{ profile.attributes.first_name | default: 'there' }}", body="Welcome"
    )


@pytest.fixture
def make_campaign(team, segment, content, manager_alice):
    from campaigns.services.lifecycle import campaign_create

    def make(by=None, **fields):
        values = {
            "name": "Spring sale",
            "app": team,
            "segment": segment,
            "content": content,
            "kind": "scheduled",
            **fields,
        }
        return campaign_create(by=by or manager_alice, **values)

    return make


@pytest.fixture
def live_trigger(pushsim_app, manager_alice, approver_bob):
    """A live API-triggered campaign whose content renders from the profile and the call's context."""
    return _live_trigger(
        pushsim_app,
        manager_alice,
        approver_bob,
        title="Order {{ context.order_id | default: '?' }}",
        body="Hi {{ profile.attributes.first_name | default: 'there' }}",
    )


@pytest.fixture
def context_trigger(pushsim_app, manager_alice, approver_bob):
    """A live API-triggered campaign whose content renders from the call's context alone."""
    return _live_trigger(
        pushsim_app,
        manager_alice,
        approver_bob,
        title="Order {{ context.order_id | default: '?' }}",
        body="It is on its way",
    )


@pytest.fixture
def lookup_trigger(pushsim_app, manager_alice, approver_bob):
    """A live API-triggered campaign whose content reads the profile beyond plain attribute outputs
    (a filter): each call looks its profiles up before it appends their rows."""
    return _live_trigger(
        pushsim_app,
        manager_alice,
        approver_bob,
        title="Order {{ context.order_id | default: '?' }}",
        body="Hi {{ profile.attributes.first_name | default: 'there' | capitalize }}",
    )


def _live_trigger(pushsim_app, manager_alice, approver_bob, *, title, body, name="Order shipped"):
    for user in (manager_alice, approver_bob):
        access_grant(obj=pushsim_app, to=user, by=None)
    content = PushContentFactory(app=pushsim_app, title=title, body=body)
    campaign = campaign_create(
        by=manager_alice,
        name=name,
        app=pushsim_app,
        kind="api_triggered",
        purpose="transactional",
        content=content,
    )
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_approve(campaign_id=campaign.pk, by=approver_bob)
    return Campaign.objects.get(pk=campaign.pk)


@pytest.fixture
def trigger_client(api_key_for, manager_alice):
    return api_key_for(manager_alice, scopes=["trigger", "read"])
