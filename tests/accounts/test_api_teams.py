"""The teams list of the API: each team (a group that is no role) with its members, for Administrators."""

import pytest
from django.contrib.auth.models import Group

from tests.factories import UserFactory

URL = "/api/v1/teams/"


@pytest.fixture
def teams(approver_bob, viewer_carol, manager_alice):
    shop = Group.objects.create(name="Shop reviewers")
    night = Group.objects.create(name="Night shift")
    gone = UserFactory(username="gone_gus", role="Manager", is_active=False)
    for user in (viewer_carol, approver_bob, gone):
        user.groups.add(shop)
    return {"shop": shop, "night": night, "gone": gone}


def test_an_administrator_lists_the_teams_with_their_members_and_no_role(
    admin_erin, approver_bob, viewer_carol, teams, api_key_for, django_assert_max_num_queries
):
    client = api_key_for(admin_erin)
    with django_assert_max_num_queries(12):
        answer = client.get(URL)
    assert answer.status_code == 200
    body = answer.json()
    assert body["count"] == 2
    assert body["results"] == [
        {"id": teams["night"].pk, "name": "Night shift", "members": []},
        {
            "id": teams["shop"].pk,
            "name": "Shop reviewers",
            "members": [
                {"id": approver_bob.pk, "username": "approver_bob", "is_active": True},
                {"id": teams["gone"].pk, "username": "gone_gus", "is_active": False},
                {"id": viewer_carol.pk, "username": "viewer_carol", "is_active": True},
            ],
        },
    ]
    walked = client.get(URL, {"paging": "cursor", "limit": 1}).json()
    assert [team["name"] for team in walked["results"]] == ["Night shift"]  # a cursor walks newest first
    assert [team["name"] for team in client.get(walked["next"]).json()["results"]] == ["Shop reviewers"]


@pytest.mark.parametrize("role_user", ["manager_alice", "approver_bob"])  # a Viewer holds no API key
def test_roles_other_than_administrator_are_refused_the_teams_list(request, role_user, teams, api_key_for):
    answer = api_key_for(request.getfixturevalue(role_user)).get(URL)
    assert answer.status_code == 403
    assert answer.json()["code"] == "permission_denied"
    assert "Administrator" in answer.json()["detail"] and "Shop reviewers" not in answer.content.decode()


def test_the_teams_list_needs_the_read_scope_and_a_key(admin_erin, teams, api_key_for):
    from rest_framework.test import APIClient

    assert api_key_for(admin_erin, scopes=("ingest",)).get(URL).status_code == 403
    assert APIClient().get(URL).status_code == 401


def test_the_teams_list_is_in_the_schema(db):
    from rest_framework.test import APIClient

    schema = APIClient().get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    assert schema["paths"][URL]["get"]["operationId"] == "teams_list"
