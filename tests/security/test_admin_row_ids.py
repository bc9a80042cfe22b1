"""Ids past any row's (a bigint) in admin input: a list action's selection, a many-to-many choice,
a segment a rule names, an access grant to revoke. PostgreSQL compares such a number and finds
nothing; SQLite cannot bind it in a list of ids (OverflowError, a 500). Each is refused as an id
that names nothing, on both databases (these tests run again on SQLite)."""

import json

import pytest
from django.contrib.auth.models import Group
from django.urls import reverse

from accounts.models import User
from accounts.services import access_grant
from tests.factories import AppFactory, DeviceFactory, SegmentFactory

PAST = "9" * 30
pytestmark = pytest.mark.embedded


def test_a_list_action_on_ids_past_any_row_does_nothing(client, admin_erin):
    device = DeviceFactory(app=AppFactory(), platform="ios", is_test=False)
    client.force_login(admin_erin)
    url = reverse("admin:delivery_device_changelist")
    for selected in ([PAST], [str(device.pk), PAST], ["-" + PAST]):
        answer = client.post(url, {"action": "mark_test", "_selected_action": selected, "index": "0"}, follow=True)
        assert answer.status_code == 200
        assert "Items are selected by their ids: nothing was done." in answer.content.decode()
    device.refresh_from_db()
    assert device.is_test is False


@pytest.mark.parametrize(
    ("url_name", "field"),
    [
        ("admin:accounts_user_change", "groups"),
        ("admin:auth_group_change", "members"),  # a team's page offers no permissions: a role's say what one may do
    ],
)
def test_a_many_to_many_choice_past_any_row_is_an_invalid_choice(client, admin_erin, manager_alice, url_name, field):
    target = manager_alice if "user" in url_name else Group.objects.create(name="Team")  # a role's are fixed
    client.force_login(admin_erin)
    url = reverse(url_name, args=[target.pk])
    form = client.get(url).context["adminform"].form
    data = {name: value for name, value in form.initial.items() if value is not None and not isinstance(value, list)}
    data.update({"username": manager_alice.username, "name": "Team", field: [PAST]})
    answer = client.post(url, data)
    assert answer.status_code == 200
    assert "Select a valid choice" in str(answer.context["adminform"].form.errors[field])


def test_an_approval_policy_naming_approvers_past_any_row_is_refused_on_the_form(client, admin_erin):
    client.force_login(admin_erin)
    url = reverse("admin:accounts_approvalpolicy_add")
    for field in ("approver_users", "approver_groups"):
        answer = client.post(url, {"name": "Two eyes", "applies_to_campaigns": "on", field: [PAST]})
        assert answer.status_code == 200
        assert "Select a valid choice" in str(answer.context["adminform"].form.errors[field])
    assert not answer.context["adminform"].form.instance.pk


def test_a_rule_naming_a_segment_or_app_past_any_row_is_refused_naming_it(client, admin_erin):
    client.force_login(admin_erin)
    preview = reverse("admin:audiences_segment_preview_rules")
    for rules, path in (
        ({"segment": int(PAST)}, "rules.segment"),
        ({"all": [{"segment": int(PAST)}]}, "rules.all[0].segment"),
        ({"reachable": {"app": int(PAST)}}, "rules.reachable.app"),
    ):
        answer = client.post(preview, json.dumps({"rules": rules}), content_type="application/json")
        assert answer.status_code == 400, answer.content
        assert [e["path"] for e in answer.json()["errors"]] == [path]
        assert "you may use" in answer.json()["errors"][0]["message"]
    answer = client.post(
        reverse("admin:audiences_segment_add"),
        {"name": "Past", "kind": "rules", "rules": json.dumps({"segment": int(PAST)})},
    )
    assert answer.status_code == 200 and answer.context["adminform"].form.errors


@pytest.mark.parametrize("revoke", ["user:abc", "group:", "x", "user:1.5", "group:\x00", f"user:{PAST}"])
def test_revoking_access_from_what_is_not_an_id_answers_404_and_revokes_nothing(
    client, admin_erin, manager_alice, revoke
):
    segment = SegmentFactory(name="Shared")
    access_grant(obj=segment, to=manager_alice, by=None)
    client.force_login(admin_erin)
    answer = client.post(reverse("admin:audiences_segment_access", args=[segment.pk]), {"revoke": revoke})
    assert answer.status_code == 404
    assert User.objects.get(pk=manager_alice.pk).has_perm("audiences.view_segment", segment)


@pytest.mark.parametrize(
    "segment",
    [int(PAST), PAST, "9" * 5000, "²", -1],
    ids=["past", "past-text", "5000-digits", "superscript", "negative"],
)
def test_a_rule_preview_of_a_segment_id_that_names_no_row_answers_404(client, admin_erin, segment):
    # "²" is a digit to str.isdigit() but not to int(); 5,000 digits are past what int() reads.
    client.force_login(admin_erin)
    preview = reverse("admin:audiences_segment_preview_rules")
    answer = client.post(preview, json.dumps({"segment": segment}), content_type="application/json")
    assert answer.status_code == 404
