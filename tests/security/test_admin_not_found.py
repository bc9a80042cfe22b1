"""Every object URL of every model admin answers 404 alike for a missing id and an object outside one's
access (or a kind of object one's role may not see): ids cannot be enumerated."""

import pytest
from django.contrib import admin

from accounts.services import access_grant
from delivery.models import DeliveryRules
from tests.factories import AppFactory

pytestmark = pytest.mark.django_db

OUR_APPS = {"accounts", "audiences", "delivery", "campaigns", "journeys", "auth"}
MODEL_ADMINS = sorted(
    f"{model._meta.app_label}/{model._meta.model_name}"
    for model in admin.site._registry
    if model._meta.app_label in OUR_APPS
)
MISSING = 2_000_000_000


@pytest.mark.parametrize("who", ["manager_alice", "viewer_carol", "outsider_dave", "admin_erin"])
@pytest.mark.parametrize("model", MODEL_ADMINS)
@pytest.mark.parametrize("page", ["change/", "history/", "delete/"])
def test_a_missing_id_answers_404_on_every_object_page(client, request, who, model, page):
    client.force_login(request.getfixturevalue(who))
    response = client.get(f"/admin/{model}/{MISSING}/{page}")
    assert response.status_code == 404, (model, page, response.status_code)


@pytest.mark.parametrize("page", ["change/", "history/", "delete/"])
def test_an_existing_user_group_or_policy_answers_404_to_a_manager_like_a_missing_one(
    client, manager_alice, admin_erin, page
):
    from django.contrib.auth.models import Group

    from accounts.models import ApprovalPolicy

    policy = ApprovalPolicy.objects.create(name="Everything")
    client.force_login(manager_alice)
    for url in (
        f"/admin/accounts/user/{admin_erin.pk}/{page}",
        f"/admin/auth/group/{Group.objects.get(name='Manager').pk}/{page}",
        f"/admin/accounts/approvalpolicy/{policy.pk}/{page}",
    ):
        assert client.get(url).status_code == 404, url


def test_delivery_rules_of_another_app_answer_404(client, manager_alice, admin_erin):
    mine, theirs = AppFactory(name="Mine"), AppFactory(name="Theirs")
    access_grant(obj=mine, to=manager_alice, by=None)
    rules = DeliveryRules.objects.create(app=theirs)
    client.force_login(manager_alice)
    for page in ("change/", "history/", "delete/"):
        assert client.get(f"/admin/delivery/deliveryrules/{rules.pk}/{page}").status_code == 404
    client.force_login(admin_erin)
    assert client.get(f"/admin/delivery/deliveryrules/{rules.pk}/change/").status_code == 200


# An address typed by hand: a word on each object page, digits of another script and a number past
# any column on the change page.
NO_NUMBERS = [
    *((page, "abc") for page in ("change/", "history/", "delete/")),
    ("change/", "%D9%A1"),
    ("change/", "9" * 30),
]


@pytest.mark.parametrize("who", ["manager_alice", "viewer_carol", "outsider_dave", "admin_erin"])
def test_an_id_that_is_no_number_answers_404_on_every_object_page(client, request, who):
    """The user card of a role that may not manage users looked the word up as an id (a 500)."""
    client.force_login(request.getfixturevalue(who))
    wrong = {}
    for model in MODEL_ADMINS:
        for page, missing in NO_NUMBERS:
            response = client.get(f"/admin/{model}/{missing}/{page}")
            if response.status_code != 404:
                wrong[f"/admin/{model}/{missing}/{page}"] = response.status_code
    assert not wrong, wrong
