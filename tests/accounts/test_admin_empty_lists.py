"""An empty list says where its rows come from, besides Django's "0 …"; a list with rows, or one
emptied by a search, says so in its own words."""

import pytest

from tests.factories import AppFactory, DeviceFactory

pytestmark = pytest.mark.django_db

HINTS = {
    "/admin/delivery/dispatch/": "A send is listed here once it starts",
    "/admin/accounts/apikey/": "No API key yet.",
    "/admin/delivery/deliveryrules/": "None of your apps has delivery rules yet",
    "/admin/delivery/device/": "A phone is listed here once its app registers its push token",
    "/admin/audiences/import/": "Upload a CSV file of profiles",
}


@pytest.mark.parametrize("url", sorted(HINTS))
def test_an_empty_list_says_where_its_rows_come_from(login, admin_erin, url):
    page = login(admin_erin).get(url)
    assert page.status_code == 200
    assert HINTS[url] in page.content.decode()


def test_a_list_with_rows_says_nothing_of_it_and_an_emptied_search_says_it_matched_nothing(login, admin_erin):
    from accounts.services import access_grant

    app = AppFactory(name="Shop")
    access_grant(obj=app, to=admin_erin, by=None)
    DeviceFactory(app=app)
    client = login(admin_erin)
    assert HINTS["/admin/delivery/device/"] not in client.get("/admin/delivery/device/").content.decode()
    searched = client.get("/admin/audiences/import/?q=nothing-like-it").content.decode()
    assert "Nothing matches the search or filters. Upload a CSV file of profiles" in searched
