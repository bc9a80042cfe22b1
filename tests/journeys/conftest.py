"""Fixtures of the journey tests: the Shop team, an app on the push simulator, a journey maker."""

import contextlib

import pytest

from accounts.services import access_grant
from tests.factories import AppFactory, PushContentFactory, SegmentFactory


@pytest.fixture
def shop(db):
    return AppFactory(name="Shop")


def _grant_team(app, users):
    for user in users:
        access_grant(obj=app, to=user, by=None)
    return app


@pytest.fixture
def team(shop, manager_alice, manager_mallory, approver_bob, viewer_carol):
    """Everyone in the cast works on the Shop app (outsider_dave does not)."""
    return _grant_team(shop, (manager_alice, manager_mallory, approver_bob, viewer_carol))


@pytest.fixture
def everyone(team, manager_alice):
    segment = SegmentFactory(name="Everyone", rules={"all": [{"field": "external_id", "op": "exists"}]})
    access_grant(obj=segment, to=manager_alice, by=None)
    return segment


@pytest.fixture
def vips(team, manager_alice):
    segment = SegmentFactory(name="VIPs", kind="static", rules=None)
    access_grant(obj=segment, to=manager_alice, by=None)
    return segment


@pytest.fixture
def welcome(team):
    return PushContentFactory(app=team, name="Welcome", title="Hello", body="Welcome aboard")


def simple_graph(*, condition_segment: int, content: int, wait: int = 0) -> dict:
    """entry → wait → condition (segment) → push → exit / all others → exit."""
    return {
        "steps": [
            {"id": "start", "type": "wait", "seconds": wait, "next": "check"},
            {
                "id": "check",
                "type": "condition",
                "branches": [{"label": "VIP", "segment": condition_segment, "next": "push"}],
                "else": "done",
            },
            {"id": "push", "type": "push", "content": content, "next": "done"},
            {"id": "done", "type": "exit"},
        ]
    }


@pytest.fixture
def make_journey(team, everyone, vips, welcome, manager_alice):
    from journeys.services.lifecycle import journey_create

    def make(by=None, app=None, graph=None, name="Onboarding", **fields):
        values = {"entry_kind": "segment", "entry_segment": everyone, **fields}
        return journey_create(
            by=by or manager_alice,
            name=name,
            app=app or team,
            graph=graph or simple_graph(condition_segment=vips.pk, content=welcome.pk),
            **values,
        )

    return make


@pytest.fixture
def publish(manager_alice, approver_bob):
    """Submit and approve a journey's draft version (entry and engine run through the queue, in-process)."""
    from journeys.models import Journey
    from journeys.services.lifecycle import journey_approve, journey_submit

    def run(journey, now=None):
        journey_submit(journey_id=journey.pk, by=manager_alice)
        journey_approve(journey_id=journey.pk, by=approver_bob, now=now)
        return Journey.objects.get(pk=journey.pk)

    return run


@pytest.fixture
def sim_team(pushsim_app, manager_alice, manager_mallory, approver_bob, viewer_carol):
    """The simulator's app, worked on by the cast."""
    return _grant_team(pushsim_app, (manager_alice, manager_mallory, approver_bob, viewer_carol))


@pytest.fixture
def sim_welcome(sim_team):
    return PushContentFactory(app=sim_team, name="Welcome", title="Hello {{ profile.external_id }}", body="Welcome")


@pytest.fixture
def sim_journey(make_journey, sim_team, sim_welcome, vips):
    """entry → wait(0) → condition (VIPs) → push / all others → exit, on the simulator's app."""

    def make(**fields):
        graph = fields.pop("graph", None) or simple_graph(condition_segment=vips.pk, content=sim_welcome.pk)
        return make_journey(app=sim_team, graph=graph, **fields)

    return make


@pytest.fixture
def enrollments_refused(db):
    """A context manager: inside it, PostgreSQL refuses every insert and update of an enrollment
    (a trigger that raises, created on entering and dropped on leaving)."""
    return lambda: writes_refused("journeys_enrollment")


@pytest.fixture
def replays_refused(db):
    """A context manager: inside it, PostgreSQL refuses to record an event replay."""
    return lambda: writes_refused("audiences_eventreplay")


@contextlib.contextmanager
def writes_refused(table: str):
    """PostgreSQL refuses every insert and update of ``table``'s rows inside this block (a trigger
    that raises, created on entering and dropped on leaving)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE FUNCTION {table}_refused() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN RAISE EXCEPTION '{table}: writes refused'; END $$"
        )
        cursor.execute(
            f"CREATE TRIGGER {table}_refused BEFORE INSERT OR UPDATE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {table}_refused()"
        )
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TRIGGER {table}_refused ON {table}")
            cursor.execute(f"DROP FUNCTION {table}_refused()")


def approved_before_segments_were_frozen(journey) -> None:
    """The live version as approved before approvals covered the segments: none frozen, its
    fingerprint made without them."""
    from journeys.models import JourneyVersion

    version = JourneyVersion.objects.get(pk=journey.live_version_id)
    contents = {step: item["fingerprint"] for step, item in version.frozen_specs.items()}
    JourneyVersion.objects.filter(pk=version.pk).update(
        approved_segments={}, approved_fingerprint=version.fingerprint(content_fingerprints=contents)
    )
