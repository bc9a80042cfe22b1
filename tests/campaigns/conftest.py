import pytest

from accounts.services import access_grant
from tests.delivery.sending import sim, sim_app, sim_session  # noqa: F401 (fixtures: the push simulator)
from tests.factories import AppFactory, SegmentFactory


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
    from campaigns.services import campaign_create

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
