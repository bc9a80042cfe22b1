"""Admin list filters offer only what the user may see: a Manager of one app never reads another app's name."""

import pytest
from django.contrib import admin
from django.test import RequestFactory
from django.urls import reverse

from accounts.services import access_grant
from tests.factories import AppFactory, PushContentFactory

pytestmark = pytest.mark.django_db

HIDDEN = "Hidden Bank"


@pytest.fixture
def apps(manager_alice):
    shop = AppFactory(name="Shop")
    hidden = AppFactory(name=HIDDEN)
    access_grant(obj=shop, to=manager_alice, by=None)
    PushContentFactory(app=shop, name="Welcome")
    PushContentFactory(app=hidden, name="Statement ready")
    return shop, hidden


@pytest.mark.parametrize("model_name", ["campaigns.campaign", "journeys.journey"])
def test_by_app_filter_lists_only_the_apps_in_the_users_access(client, apps, manager_alice, admin_erin, model_name):
    app_label, model = model_name.split(".")
    url = reverse(f"admin:{app_label}_{model}_changelist")
    client.force_login(admin_erin)
    assert HIDDEN in client.get(url).content.decode()  # an Administrator sees every app in the filter
    client.force_login(manager_alice)
    page = client.get(url)
    assert page.status_code == 200
    assert HIDDEN not in page.content.decode()


def test_no_changelist_shows_another_apps_name_to_a_manager_of_one_app(client, apps, manager_alice):
    client.force_login(manager_alice)
    request = RequestFactory().get("/")
    request.user = manager_alice
    checked = []
    for model, model_admin in admin.site._registry.items():
        if not model_admin.has_view_or_change_permission(request):
            continue
        opts = model._meta
        page = client.get(reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"))
        assert page.status_code == 200, opts.label
        assert HIDDEN not in page.content.decode(), opts.label
        checked.append(opts.label)
    assert {"campaigns.Campaign", "journeys.Journey", "delivery.PushContent"} <= set(checked)
