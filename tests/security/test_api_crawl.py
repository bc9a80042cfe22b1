"""No answer of the API names what its key's user may not see: a crawl of every GET of the schema.

The world is the admin crawl's (tests/security/conftest.py, ``crawl_world``): manager_mallory's
objects carry MARKER in their names (their pushes' text TEXT); manager_alice, a Manager of the same
team, works in her own app, and her segment, campaign, journey and an import name mallory's
segments, granted to her once and revoked since.

With a key of alice's of each scope an integrator's key holds (read, trigger, ingest), the crawl
GETs every list of docs/openapi.yaml (plain, by cursor, with each of its listed values and each of
its id filters set to mallory's objects), every page of mallory's objects by their ids (each
answers 404, or 403 to a key without the scope, without naming them), and every page of alice's
own objects and of the profiles every role reads (reports, previews, sends, errors): no answer is
5xx and none holds MARKER or TEXT.
"""

from pathlib import Path

import pytest
import yaml

from tests.security.conftest import MARKER, TEXT

SCHEMA = yaml.safe_load((Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml").read_text())
# The object each path parameter or query filter names.
NAMES = {
    "campaign_id": "campaigns.campaign",
    "delivery_id": "delivery.delivery",
    "dispatch_id": "delivery.dispatch",
    "import_id": "audiences.import",
    "journey_id": "journeys.journey",
    "segment_id": "audiences.segment",
    "external_id": "audiences.profile",
    "app": "delivery.app",
}
PAGING = {"cursor", "limit", "offset", "paging", "after", "sample"}
PER_KIND = 4  # of many alike (deliveries), the first and last few


def _reads() -> list[tuple[str, list[dict]]]:
    """Every GET of the schema: (path, its parameters)."""
    reads = []
    for path, operations in SCHEMA["paths"].items():
        if "get" in operations:
            reads.append((path, operations["get"].get("parameters", []) + operations.get("parameters", [])))
    return reads


def _few(pks: list) -> list:
    return pks[:PER_KIND] + pks[PER_KIND:][-PER_KIND:]


def _ids(world) -> tuple[dict[str, list], dict[str, list]]:
    """(mallory's, alice's and everyone's) ids by label: what each path parameter is set to."""
    from django.apps import apps

    secret = world["secret_rows"]
    outsider, insider = {}, {}
    for label in set(NAMES.values()):
        model = apps.get_model(label)
        if label == "audiences.profile":  # every role reads profiles: mallory's people are read, not hidden
            insider[label] = list(model.objects.order_by("pk").values_list("external_id", flat=True))
            continue
        outsider[label] = _few(secret.get(label, []))
        theirs = set(secret.get(label, []))
        insider[label] = _few(
            [pk for pk in model.objects.order_by("pk").values_list("pk", flat=True) if pk not in theirs]
        )
    return outsider, insider


def _urls(path: str, parameters: list[dict], ids: dict[str, list]) -> list[str]:
    """``path`` with its parameter set to each of ``ids``; a list plain, by cursor, by each listed
    value of its filters and by each id one of its filters takes."""
    named = [p["name"] for p in parameters if p.get("in") == "path"]
    if named:
        (name,) = named
        return [path.replace(f"{{{name}}}", str(pk)) for pk in ids.get(NAMES[name], [])]
    urls = [path]
    for parameter in parameters:
        name, schema = parameter.get("name"), parameter.get("schema", {})
        if parameter.get("in") != "query" or name in PAGING:
            continue
        if schema.get("enum"):
            urls += [f"{path}?{name}={value}" for value in schema["enum"]]
        elif name in NAMES:
            urls += [f"{path}?{name}={pk}" for pk in ids.get(NAMES[name], [])]
    if any(p.get("name") == "paging" for p in parameters):
        urls += [f"{url}{'&' if '?' in url else '?'}paging=cursor" for url in urls]
    return urls


def _marked(body: bytes) -> list[str]:
    """Where ``body`` first holds MARKER and TEXT, with what is around it."""
    lowered, places = body.lower(), []
    for marker in (MARKER, TEXT):
        at = lowered.find(marker.lower().encode())
        if at >= 0:
            places.append(body[max(0, at - 100) : at + 40].decode(errors="replace"))
    return places


@pytest.fixture
def api_world(crawl_world, manager_alice, django_capture_on_commit_callbacks):
    """The crawls' world, where alice's campaign (its segment mallory's) was also sent to her test
    phone: a send of hers and its deliveries to read."""
    from campaigns.services.scheduling import campaign_test_send
    from tests.factories import DeviceFactory, ProfileFactory

    DeviceFactory(profile=ProfileFactory(external_id="harbor-tester"), app=crawl_world["alice"]["app"], is_test=True)
    with django_capture_on_commit_callbacks(execute=True):
        campaign_test_send(campaign_id=crawl_world["alice"]["campaign"].pk, by=manager_alice)
    return crawl_world


@pytest.mark.parametrize("scope", ["read", "trigger", "ingest"])
def test_no_api_answer_names_what_its_key_may_not_see(api_world, manager_alice, api_key_for, scope):
    client = api_key_for(manager_alice, scopes=[scope])
    outsider, insider = _ids(api_world)
    assert insider["delivery.dispatch"] and insider["delivery.delivery"]
    wrong, read = [], 0
    for path, parameters in _reads():
        by_id = any(p.get("in") == "path" for p in parameters)
        for ids, theirs in ((outsider, True), (insider, False)):
            if not by_id and not theirs:
                continue  # a list's filters by alice's objects show no more than the plain list
            for url in _urls(path, parameters, ids):
                response = client.get(url)
                read += 1
                if response.status_code >= 500:
                    wrong.append((url, response.status_code, "server error"))
                elif by_id and theirs and response.status_code not in ((404,) if scope == "read" else (403, 404)):
                    wrong.append((url, response.status_code, "one of mallory's objects, opened"))
                for around in _marked(response.content):
                    wrong.append((url, response.status_code, " ".join(around.split())))
    said = "\n".join(f"{url} ({status}): …{what}…" for url, status, what in wrong)
    assert not wrong, f"{len(wrong)} answers to alice's {scope} key:\n{said}"
    assert read > 100, read
