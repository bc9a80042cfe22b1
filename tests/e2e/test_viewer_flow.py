"""A Viewer browses everything they were granted and finds no way to change anything."""

import pytest

from accounts.services import access_grant
from tests.security.conftest import world  # noqa: F401 (fixture: one object of every kind)
from tests.security.test_object_access import object_urls

pytestmark = pytest.mark.browser

CHANGE_CONTROLS = (
    "input[name=_save]",
    "input[name=_continue]",
    "input[name=_addanother]",
    "a.addlink",
    "a.deletelink",
    "button[value=submit]",
    "button[value=approve]",
    "button[value=stop]",
    "button[value=archive]",
    "button[value=test_send]",
    "input[name=_approve]",
    "input[value='Grant access']",
)
# How many elements each of the controls matches, and the texts of the list's actions.
READ_CONTROLS_AND_ACTIONS = """controls => [
    controls.map(c => document.querySelectorAll(c).length),
    [...document.querySelectorAll("select[name=action] option")].map(o => o.innerText),
]"""


def test_viewer_browses_everything_and_finds_no_way_to_change_it(
    login,
    page,
    live_server,
    viewer_carol,
    world,  # noqa: F811
    screenshot,
):
    access_grant(obj=world["delivery.app"], to=viewer_carol, by=None)
    access_grant(obj=world["audiences.segment"], to=viewer_carol, by=None)
    login(viewer_carol)
    home_links = page.eval_on_selector_all("#pd-home a", "els => els.map(e => e.getAttribute('href'))")
    page.goto(f"{live_server.url}/admin/models/")
    index_links = sorted(
        {href for href in page.eval_on_selector_all("#content-main a", "els => els.map(e => e.getAttribute('href'))")}
    )
    assert len(index_links) >= 8
    pages = [f"{live_server.url}{href}" for href in index_links + home_links if href and href.startswith("/admin/")]
    pages += [
        f"{live_server.url}{url}"
        for name, url in object_urls(world)
        if name.endswith(("_change", "_review", "_preview", "_access"))
        and "apikey" not in name
        and "live_preview" not in name  # the content form posts to it; a GET answers 405
    ]
    seen = 0
    for url in pages:
        response = page.goto(url)
        if response.status == 404:
            continue  # e.g. an object outside the viewer's grants
        assert response.status == 200, url
        seen += 1
        # The controls counted, and the actions read, in one call to the page (a call each for
        # them took a quarter of the test).
        counts, actions = page.evaluate(READ_CONTROLS_AND_ACTIONS, CHANGE_CONTROLS)
        for control, count in zip(CHANGE_CONTROLS, counts, strict=True):
            assert count == 0, (url, control)
        assert [a for a in actions if a.strip("- ")] == [], (url, actions)
        if "campaign" in url and url.endswith("/change/"):
            screenshot("viewer-campaign")
    assert seen >= 15

    # Forged POSTs, with a valid CSRF token, are refused.
    token = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    campaign = world["campaigns.campaign"]
    forged = {
        f"/admin/campaigns/campaign/{campaign.pk}/change/": {"name": "forged"},
        f"/admin/campaigns/campaign/{campaign.pk}/transition/approve/": {},
        "/admin/campaigns/campaign/add/": {"name": "forged"},
        f"/admin/delivery/app/{world['delivery.app'].pk}/access/": {"user": viewer_carol.pk},
        f"/admin/audiences/segment/{world['audiences.segment'].pk}/delete/": {"post": "yes"},
        "/admin/delivery/dispatch/": {
            "action": "stop",
            "_selected_action": world["delivery.dispatch"].pk,
            "post": "yes",
        },
    }
    for path, data in forged.items():
        response = page.request.post(
            f"{live_server.url}{path}",
            form={**data, "csrfmiddlewaretoken": token},
            headers={"Referer": f"{live_server.url}{path}", "X-CSRFToken": token},
        )
        if path == "/admin/delivery/dispatch/":
            continue  # an action the viewer is not offered: the list again, the dispatch untouched (below)
        assert response.status in (403, 404), (path, response.status)
    campaign.refresh_from_db()
    assert campaign.name == "Spring sale"
    world["delivery.dispatch"].refresh_from_db()
    assert world["delivery.dispatch"].status != "stopped"
