"""The demo journey `make run` sets up again on each start: what it approves by itself."""

import io

import pytest

from audiences.demo import populate as populate_audiences
from audiences.models import Segment
from audiences.services.segments import segment_members_change
from delivery.demo import DEMO_APP, populate_devices_and_content
from delivery.models import PushContent
from delivery.services.contents import pushcontent_save
from journeys.demo import DEMO_JOURNEY
from journeys.demo import populate as populate_journeys
from journeys.models import Journey, JourneyVersion
from journeys.services.lifecycle import journey_rename
from tests.factories import AppFactory, ProfileFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def demo(db):
    """The demo's app, users (by the names the demo looks for), audiences and push contents, as
    `make run` leaves them before the journey; then its journey, live."""
    app = AppFactory(name=DEMO_APP, uses_simulator=True)
    manager = UserFactory(username="manager", role="Manager")
    UserFactory(username="approver", role="Approver")
    UserFactory(username="viewer", role="Viewer")
    populate_audiences(stdout=io.StringIO())
    populate_devices_and_content(stdout=io.StringIO())
    populate_journeys(stdout=io.StringIO())
    first = Journey.objects.get(name=DEMO_JOURNEY)
    assert first.status == Journey.Status.LIVE
    return app, manager, first


def _set_up_again(first: Journey) -> tuple[Journey, str]:
    said = io.StringIO()
    populate_journeys(stdout=said)
    again = Journey.objects.get(name=DEMO_JOURNEY)
    assert again.pk != first.pk
    return again, said.getvalue()


def test_demo_set_up_again_approves_no_journey_push_a_person_rewrote(demo):
    """`make run` sets the demo up on every start, approving its journey as the demo approver when
    no journey has its name. A Manager who rewrote the demo's "Welcome back" content and renamed the
    live journey (its pushes do not show its name: no new version) got, at the next start, a new live
    journey pushing their words, approved by nobody who read them. It now waits for approval."""
    app, manager, first = demo
    welcome = PushContent.objects.get(app=app, name="Welcome back")
    welcome.body = "Words nobody approved"
    pushcontent_save(content=welcome, by=manager)
    journey_rename(journey_id=first.pk, by=manager, name="Old welcome")

    again, said = _set_up_again(first)

    assert again.live_version is None, said
    assert again.versions.get().status == JourneyVersion.Status.IN_REVIEW
    assert "waiting for approval" in said


def test_demo_set_up_again_approves_no_audience_a_person_changed(demo):
    """The same with the demo's beta testers: a Manager who put others in the list the journey
    enters from got them pushes nobody approved for them."""
    app, manager, first = demo
    ProfileFactory(external_id="someone-else")
    beta = Segment.objects.get(name="Beta testers")
    segment_members_change(segment_id=beta.pk, by=manager, add=["someone-else"])
    journey_rename(journey_id=first.pk, by=manager, name="Old welcome")

    again, said = _set_up_again(first)

    assert again.live_version is None, said
    assert again.versions.get().status == JourneyVersion.Status.IN_REVIEW


def test_demo_set_up_approves_its_own_journey(demo):
    app, manager, first = demo
    assert first.live_version.status == JourneyVersion.Status.LIVE
