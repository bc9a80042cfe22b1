"""The API's own route (accounts.api_route) for triggers and events: the calls it answers before the
URL resolver and DRF, the ones it hands to the view, and the same answer either way."""

import pytest

from accounts.models import ApiKey
from accounts.services import api_key_revoke
from audiences.models import Event
from campaigns.services.lifecycle import campaign_stop
from delivery.models import Delivery
from tests.factories import DeviceFactory, ProfileFactory

pytestmark = pytest.mark.embedded

ROUTE = "accounts.api_route.ApiRouteMiddleware"
COMPARED_HEADERS = ("Content-Type", "Allow", "X-Frame-Options", "Idempotent-Replayed", "WWW-Authenticate")


def _by_route(response) -> bool:
    """The route answers before Django resolves the URL: its request was never matched to a view."""
    return response.wsgi_request.resolver_match is None


def _ids_out(value):
    """The answer without what a second run cannot repeat: row and dispatch ids, its own profile's external id."""
    if isinstance(value, dict):
        return {k: _ids_out(v) for k, v in value.items() if k not in ("id", "dispatch", "external_id")}
    if isinstance(value, list):
        return [_ids_out(v) for v in value]
    return value


def _post(client, url, body, **headers):
    """A JSON body as given, or text sent as it is (a body that does not parse)."""
    if isinstance(body, str):
        return client.generic("POST", url, body, content_type="application/json", **headers)
    return client.post(url, body, format="json", **headers)


def _route_and_view_agree(settings, send, status: int, by_route: bool) -> None:
    """``send(run)`` once with the route (run 0) and once with the view alone (run 1): the same
    status, body and headers, and the first answered by the route when ``by_route``."""
    answers = []
    for run, middleware in enumerate((settings.MIDDLEWARE, [m for m in settings.MIDDLEWARE if m != ROUTE])):
        settings.MIDDLEWARE = middleware  # each run's clients are new: they load it
        response = send(run)
        assert response.status_code == status, response.content
        headers = {h: response.get(h) for h in COMPARED_HEADERS}
        answers.append((_ids_out(response.json()), headers, response.has_header("Retry-After"), _by_route(response)))
    with_route, view_only = answers
    assert with_route[3] is by_route and view_only[3] is False
    assert with_route[:3] == view_only[:3]


def _scenario(name, campaign, pushsim_app, manager_alice, manager_mallory, api_key_for, settings):
    """(client, url, body, headers) for one scenario; each run makes its own keys and profiles."""
    url = f"/api/v1/campaigns/{campaign.pk}/trigger/"
    profile = ProfileFactory()
    DeviceFactory(profile=profile, app=pushsim_app, platform="ios")
    body = {"recipients": [{"external_id": profile.external_id, "context": {"order_id": "A-1"}}]}
    client = api_key_for(manager_alice, scopes=["trigger"])
    headers = {}
    if name == "problems":
        body["recipients"] += [{"external_id": "ghost"}, {"external_id": profile.external_id}]
    elif name == "context_too_large":
        body["recipients"][0]["context"] = {"order_id": "x" * 5000}
    elif name == "replayed":
        headers["HTTP_IDEMPOTENCY_KEY"] = f"order-{profile.external_id}"  # each run's own: one user's keys share them
        assert client.post(url, body, format="json", **headers).status_code == 202
    elif name == "throttled":
        settings.PUSHDESK_TRIGGER_RATE_PER_KEY = 1
        assert client.post(url, body, format="json").status_code == 202
    elif name == "no_scope":
        client = api_key_for(manager_alice, scopes=["read"])
    elif name == "revoked":
        api_key_revoke(key_id=ApiKey.objects.get(prefix=client.raw_key.split("_")[1]).pk, by=manager_alice)
    elif name == "outside_access":
        client = api_key_for(manager_mallory, scopes=["trigger"])
    elif name == "unknown_campaign":
        url = "/api/v1/campaigns/99999999999999999999/trigger/"  # beyond any id the database can hold
    elif name == "campaign_id_past_int_digits":
        url = f"/api/v1/campaigns/{'9' * 5000}/trigger/"  # int() refuses more than 4,300 digits: it was a 500
    elif name == "idempotency_key_nul":
        headers["HTTP_IDEMPOTENCY_KEY"] = "order\x00-1"
    elif name == "bad_json":
        body = '{"recipients": ['
    elif name == "accept_not_json":
        headers["HTTP_ACCEPT"] = "application/xml"  # the view refuses it before it sends anything
    elif name == "accept_json_among_others":
        headers["HTTP_ACCEPT"] = "text/html, application/json;q=0.9, */*;q=0.8"
    elif name == "accept_json_with_its_charset":
        headers["HTTP_ACCEPT"] = "application/json; charset=utf-8"
    elif name == "accept_json_indented":
        headers["HTTP_ACCEPT"] = "application/json; indent=2"  # the view obeys it
    elif name == "accept_empty":
        headers["HTTP_ACCEPT"] = ""  # the header sent with no media type in it: none is acceptable
    return client, url, body, headers


# scenario -> (status, answered by the route)
SCENARIOS = {
    "sent": (202, True),
    "problems": (202, True),
    "context_too_large": (400, True),
    "replayed": (202, True),
    "throttled": (429, True),
    "outside_access": (404, True),
    "unknown_campaign": (404, True),
    "campaign_id_past_int_digits": (404, False),
    "idempotency_key_nul": (400, True),
    "no_scope": (403, False),
    "revoked": (401, False),
    "bad_json": (400, False),
    "accept_not_json": (406, False),
    "accept_json_among_others": (202, True),
    "accept_json_with_its_charset": (202, True),
    "accept_json_indented": (202, False),
    "accept_empty": (406, False),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_the_route_and_the_view_give_the_same_answer(
    name, live_trigger, pushsim_app, manager_alice, manager_mallory, api_key_for, settings
):
    def send(run):
        settings.PUSHDESK_TRIGGER_RATE_PER_KEY = 1000
        client, url, body, headers = _scenario(
            name, live_trigger, pushsim_app, manager_alice, manager_mallory, api_key_for, settings
        )
        return _post(client, url, body, **headers)

    _route_and_view_agree(settings, send, *SCENARIOS[name])


def test_a_trigger_answered_by_the_route_writes_its_rows(live_trigger, trigger_client, pushsim_app):
    zoe = ProfileFactory(external_id="zoe")
    DeviceFactory(profile=zoe, app=pushsim_app, platform="android")
    response = trigger_client.post(
        f"/api/v1/campaigns/{live_trigger.pk}/trigger/", {"recipients": [{"external_id": "zoe"}]}, format="json"
    )
    assert response.status_code == 202 and _by_route(response)
    (delivery,) = response.json()["deliveries"]
    row = Delivery.objects.get(pk=delivery["id"])
    assert (row.profile_id, row.status, row.dispatch_id) == (zoe.pk, "queued", response.json()["dispatch"])


def test_a_call_answered_by_the_route_builds_no_session(live_trigger, trigger_client):
    """A key's call reads no session: the route sits before the session middleware, which otherwise
    made a session store (and read the cookies) for every trigger."""
    response = trigger_client.post(f"/api/v1/campaigns/{live_trigger.pk}/trigger/", {"recipients": []}, format="json")
    assert _by_route(response)
    assert not hasattr(response.wsgi_request, "session")
    assert "Cookie" not in response.get("Vary", "")


def test_a_call_handed_to_the_view_counts_once_against_the_rate(live_trigger, trigger_client, settings):
    """The route read the stamps and took the key's token; the view answers with them, taking no second one."""
    settings.PUSHDESK_TRIGGER_RATE_PER_KEY = 1  # a burst of one token
    url = f"/api/v1/campaigns/{live_trigger.pk}/trigger/"
    handed = trigger_client.generic("POST", url, '{"recipients": [', content_type="application/json")
    assert handed.status_code == 400 and not _by_route(handed)  # a second token would have answered 429
    again = trigger_client.post(url, {"recipients": [{"external_id": "nobody"}]}, format="json")
    assert again.status_code == 429 and _by_route(again)


def test_a_call_whose_accept_leaves_out_json_sends_nothing(live_trigger, trigger_client, pushsim_app):
    """The view refuses such a call before its handler runs; the route sent it and answered JSON."""
    DeviceFactory(profile=ProfileFactory(external_id="zoe"), app=pushsim_app)
    response = trigger_client.post(
        f"/api/v1/campaigns/{live_trigger.pk}/trigger/",
        {"recipients": [{"external_id": "zoe"}]},
        format="json",
        HTTP_ACCEPT="application/xml",
    )
    assert (response.status_code, response.json()["code"]) == (406, "not_acceptable")
    assert not _by_route(response)
    assert not Delivery.objects.exists()


@pytest.mark.parametrize(("path", "query"), [("campaigns/{id}/trigger/", "format=csv"), ("events/bulk/", "format=")])
def test_a_call_asking_a_format_the_api_does_not_answer_in_writes_nothing(
    live_trigger, api_key_for, manager_alice, pushsim_app, path, query
):
    """The route answered it, and wrote, ignoring the format asked for: the view refuses it first (400 naming it)."""
    client = api_key_for(manager_alice, scopes=["trigger", "ingest"])
    DeviceFactory(profile=ProfileFactory(external_id="zoe"), app=pushsim_app)
    body = {
        "recipients": [{"external_id": "zoe"}],
        "events": [{"external_id": "zoe", "name": "open", "occurred_at": "2026-01-01T00:00:00Z"}],
    }
    response = client.post(f"/api/v1/{path.format(id=live_trigger.pk)}?{query}", body, format="json")
    assert response.status_code == 400, response.content[:300]
    assert [error["field"] for error in response.json()["errors"]] == ["format"]
    assert not _by_route(response)
    assert not Delivery.objects.exists() and not Event.objects.exists()


def test_a_stopped_campaign_is_refused_by_the_route(live_trigger, trigger_client, manager_alice):
    campaign_stop(campaign_id=live_trigger.pk, by=manager_alice)
    response = trigger_client.post(
        f"/api/v1/campaigns/{live_trigger.pk}/trigger/", {"recipients": [{"external_id": "a"}]}, format="json"
    )
    assert response.status_code == 409 and _by_route(response)
    assert response.json()["code"] == "campaign_not_live"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/campaigns/{id}/trigger/"),
        ("POST", "/api/v1/campaigns/{id}/trigger"),
        ("POST", "/api/v1/campaigns/{id}/"),
    ],
)
def test_other_requests_pass_by_the_route(method, path, live_trigger, trigger_client):
    response = trigger_client.generic(method, path.format(id=live_trigger.pk), "{}", content_type="application/json")
    assert not _by_route(response)
    assert response.status_code in (301, 404, 405)


@pytest.mark.parametrize(("name", "kwargs"), [("api:campaign-trigger", {"campaign_id": 42}), ("api:event-bulk", {})])
def test_the_routes_paths_are_the_views(name, kwargs):
    from django.urls import resolve, reverse

    from accounts.api_route import ROUTES

    path = reverse(name, kwargs=kwargs)
    [(argument, view)] = [(argument, view) for pattern, view, argument in ROUTES if pattern.match(path)]
    assert view.rsplit(".", 1)[1] == resolve(path).func.view_class.__name__
    assert argument == next(iter(kwargs), None)


# events: scenario -> (status, answered by the route)
EVENT_SCENARIOS = {
    "accepted": (200, True),
    "some_items_bad": (200, True),
    "not_a_list": (400, True),
    "no_scope": (403, False),
    "bad_json": (400, False),
    "accept_not_json": (406, False),
}


@pytest.mark.parametrize("name", list(EVENT_SCENARIOS))
def test_the_route_and_the_view_answer_events_alike(name, manager_alice, api_key_for, settings):
    def send(run):
        client = api_key_for(manager_alice, scopes=["read"] if name == "no_scope" else ["ingest"])
        event = {"external_id": f"shopper-{run}", "name": "app_open", "occurred_at": "2026-06-01T10:00:00Z"}
        body = {"events": [event]}
        if name == "some_items_bad":
            body["events"] += [{"external_id": "", "name": "app_open"}, "not an object"]
        elif name == "not_a_list":
            body = {"events": {"external_id": "x"}}
        elif name == "bad_json":
            body = '{"events": ['
        headers = {"HTTP_ACCEPT": "text/csv"} if name == "accept_not_json" else {}
        return _post(client, "/api/v1/events/bulk/", body, **headers)

    _route_and_view_agree(settings, send, *EVENT_SCENARIOS[name])
