"""A rule may name only the apps and segments its author has access to: the segment form, the
preview, the services and journey condition branches refuse any other exactly as a missing one."""

import json

import pytest
from django.core.exceptions import ValidationError

from accounts.services import access_grant
from audiences.models import Segment
from audiences.rules.schema import RulesInvalid
from audiences.services.segments import segment_create, segment_preview
from tests.factories import AppFactory, DeviceFactory, ProfileFactory

pytestmark = pytest.mark.django_db


def _reachable(app_id: int) -> dict:
    return {"all": [{"reachable": {"app": app_id}}]}


@pytest.fixture
def two_apps(manager_alice):
    """App A is alice's; app B (with a reachable profile) is someone else's."""
    app_a, app_b = AppFactory(name="App A"), AppFactory(name="App B")
    access_grant(obj=app_a, to=manager_alice, by=None)
    DeviceFactory(profile=ProfileFactory(external_id="b-user"), app=app_b, platform="ios")
    return app_a, app_b


def _messages(exc: RulesInvalid, app_id: int) -> list[str]:
    return [e.message.replace(str(app_id), "N") for e in exc.errors]


def test_a_rule_on_an_app_outside_access_is_refused_like_a_missing_app(manager_alice, two_apps):
    app_a, app_b = two_apps
    segment_create(name="Reachable in A", rules=_reachable(app_a.pk), by=manager_alice)
    with pytest.raises(RulesInvalid) as outside:
        segment_create(name="Reachable in B", rules=_reachable(app_b.pk), by=manager_alice)
    with pytest.raises(RulesInvalid) as missing:
        segment_create(name="Reachable nowhere", rules=_reachable(987654), by=manager_alice)
    assert _messages(outside.value, app_b.pk) == _messages(missing.value, 987654)
    assert outside.value.errors[0].code == "unknown_app"
    assert not Segment.objects.filter(name="Reachable in B").exists()
    with pytest.raises(RulesInvalid):
        segment_preview(by=manager_alice, rules=_reachable(app_b.pk))


def test_the_admin_preview_refuses_an_app_outside_access_like_a_missing_one(client, manager_alice, two_apps):
    _, app_b = two_apps
    client.force_login(manager_alice)

    def preview(app_id):
        return client.post(
            "/admin/audiences/segment/preview/",
            json.dumps({"rules": _reachable(app_id)}),
            content_type="application/json",
        )

    outside, missing = preview(app_b.pk), preview(987654)
    assert outside.status_code == missing.status_code == 400
    assert b"b-user" not in outside.content and b'"count"' not in outside.content
    assert outside.content.replace(str(app_b.pk).encode(), b"N") == missing.content.replace(b"987654", b"N")


def test_the_admin_segment_form_refuses_an_app_outside_access(client, manager_alice, two_apps):
    _, app_b = two_apps
    client.force_login(manager_alice)
    response = client.post(
        "/admin/audiences/segment/add/",
        {"name": "Sneaky", "kind": "rules", "description": "", "rules": json.dumps(_reachable(app_b.pk))},
    )
    assert response.status_code == 200
    assert f"there is no app {app_b.pk} you may use" in response.content.decode()
    assert not Segment.objects.filter(name="Sneaky").exists()


def test_an_administrator_may_name_any_app(admin_erin, two_apps):
    _, app_b = two_apps
    assert segment_preview(by=admin_erin, rules=_reachable(app_b.pk)).count == 1


def test_a_journey_condition_on_an_app_outside_access_is_refused(manager_alice, two_apps):
    from journeys.services.lifecycle import journey_create

    app_a, app_b = two_apps
    graph = {
        "steps": [
            {
                "id": "check",
                "type": "condition",
                "branches": [{"label": "reachable", "rules": _reachable(app_b.pk), "next": "done"}],
                "else": "done",
            },
            {"id": "done", "type": "exit"},
        ]
    }
    with pytest.raises(ValidationError, match=f"there is no app {app_b.pk} you may use"):
        journey_create(by=manager_alice, name="Sneaky", app=app_a, entry_kind="event", entry_event="open", graph=graph)
