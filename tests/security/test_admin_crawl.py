"""No admin page names what its reader may not see: a crawl of the whole admin.

manager_mallory owns a full set of objects whose names carry MARKER (their pushes' text TEXT): an
app, push contents, segments (rules, a static list nested into them, an import's), campaigns of
each kind (scheduled with occurrences, API-triggered with a stream and its deliveries, a winner
test with variants, one waiting for approval), journeys (segment and event entry, push steps and
conditions), conversion goals, approvals and the audit events all of it wrote. manager_alice, a
Manager of the same team, works in her own app; her segment, campaign, journey and an import still
name mallory's segments, granted to her once and revoked since. viewer_carol was granted one
campaign of mallory's, viewer_vic one journey, neither its app, segments or contents.

Each of them walks every admin page reachable from the home page and the index, every list (plain,
searched for the marker's start, with its filters' counts, filtered by each of mallory's objects),
every page of the objects they may open and the admin's own views of them (reports, reviews,
previews, CSV exports, the journey's graph), autocomplete for every foreign key, following the
links found on the way (same site, GET only, bounded): no page answers 5xx, and none holds the
marker (nor, for alice, granted nothing of mallory's, the text). Every page of mallory's objects,
opened by its address, answers 403 or 404 without either; an approver who decided reads the review
without what he was not granted.
"""

import re
from collections import deque
from html import unescape
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit

import pytest
from django.contrib import admin
from django.urls import reverse

from accounts.services import access_grant
from tests.security.conftest import MARKER, TEXT

SEARCH = MARKER[:3]  # what a reader would type: a search echoes it, the marker must not come back

# Each reader's walk stops there, well past what the admin links to from a page of each kind.
MAX_DEPTH = 4
MAX_PAGES = 1200
QUERIES_PER_PATH = 4  # distinct query strings followed per path (a list's filters and pages)
# A list's order and the filters a page keeps for the way back change no name on it.
IGNORED = {"o", "_changelist_filters"}
PER_SHAPE = 5  # objects opened per page kind (audit events, profiles: many alike)
SKIPPED = re.compile(r"^/admin/(logout|password_change|jsi18n|r)/|/transition/")

# Known leaks, each in a file another change is rewriting now: (reader, page, what is said there).
ALLOWED: list[tuple[str, str, str]] = []


@pytest.fixture
def world(crawl_world):
    return crawl_world


# --- the crawl --------------------------------------------------------------------------------------

LINK = re.compile(r"""(?:href|src|action|data-url|data-href)\s*=\s*["']([^"'#]+)""", re.IGNORECASE)


def _links(base: str, body: str) -> list[str]:
    """The admin pages ``body`` links to, without the parameters that change no name on them."""
    found = []
    for raw in LINK.findall(body):
        parts = urlsplit(urljoin(base, unescape(raw).strip()))
        if parts.scheme not in ("", "http") or parts.netloc not in ("", "testserver"):
            continue
        if not parts.path.startswith("/admin/") or SKIPPED.search(parts.path):
            continue
        query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in IGNORED])
        found.append(parts.path + (f"?{query}" if query else ""))
    return found


def _seeds(world) -> list[str]:
    """The home page, the index, every list (plain, searched, with its filters' counts), autocomplete
    for every foreign key, and every page of the objects of alice's that reference mallory's and of
    the campaign carol was granted (the walk reaches the other objects through the lists)."""
    seeds = ["/", "/admin/"]
    for model, model_admin in admin.site._registry.items():
        opts = model._meta
        changelist = reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")
        seeds.append(changelist)
        if model_admin.search_fields:
            seeds.append(f"{changelist}?{urlencode({'q': SEARCH})}")
        if model_admin.list_filter:
            seeds.append(f"{changelist}?_facets=True")
        for field in opts.get_fields():
            remote = getattr(getattr(field, "remote_field", None), "model", None)
            if getattr(field, "concrete", False) and remote in admin.site._registry:
                query = {"app_label": opts.app_label, "model_name": opts.model_name, "field_name": field.name}
                seeds += [f"/admin/autocomplete/?{urlencode({**query, 'term': term})}" for term in (SEARCH, "")]
    from django.contrib.contenttypes.models import ContentType

    from accounts.models import ApprovalRequest

    seeds += _probes(world)
    alice = world["alice"]
    granted = (world["granted"], world["granted_journey"])
    for obj in (alice["app"], alice["segment"], alice["campaign"], alice["journey"], *granted):
        seeds += _object_pages(obj._meta.label_lower, obj.pk)
        subject = {"subject_type": ContentType.objects.get_for_model(obj), "subject_id": str(obj.pk)}
        for request in ApprovalRequest.objects.filter(**subject):
            seeds += _object_pages("accounts.approvalrequest", request.pk)
    return seeds


def _probes(world) -> list[str]:
    """Lists asked for by one of mallory's objects, as a link from her pages would ask: each
    relation to it as a filter, a campaign's and a journey step's sends."""
    from journeys.models import JourneyVersion

    secret = world["secret_rows"]
    probes = []
    for model in admin.site._registry:
        opts = model._meta
        changelist = reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")
        for field in opts.get_fields():
            remote = getattr(getattr(field, "remote_field", None), "model", None)
            if getattr(field, "concrete", False) and remote is not None and secret.get(remote._meta.label_lower):
                probes.append(f"{changelist}?{field.name}__id__exact={secret[remote._meta.label_lower][0]}")
    for campaign in world["secret"]["campaigns.campaign"]:
        probes.append(f"/admin/delivery/dispatch/?campaign={campaign.pk}")
    for version in JourneyVersion.objects.filter(journey__in=world["secret"]["journeys.journey"]):
        probes += [f"/admin/delivery/dispatch/?journey_step={version.pk}:{step}" for step in ("first", "second")]
    return probes


def _object_pages(label: str, pk: int) -> list[str]:
    """Every admin URL of one object: change, history, delete and the admin's own views of it."""
    model = next(m for m in admin.site._registry if m._meta.label_lower == label)
    urls = []
    for pattern in admin.site._registry[model].urls:
        name = getattr(pattern, "name", None)
        params = set(re.findall(r"<(?:\w+:)?(\w+)>", str(getattr(pattern, "pattern", ""))))
        if not name or not params or params - {"object_id", "request_id"}:
            continue  # a list, an add page, a transition (POSTed)
        urls.append(reverse(f"admin:{name}", kwargs=dict.fromkeys(params, pk)))
    return urls


def _body(response) -> bytes:
    return b"".join(response.streaming_content) if response.streaming else response.content


def _marked(body: bytes, markers=(MARKER,)) -> list[str]:
    """Each place ``body`` holds one of ``markers``, with what is around it."""
    lowered = body.lower()
    return [
        body[max(0, at - 100) : at + 40].decode(errors="replace")
        for marker in markers
        for at in (m.start() for m in re.finditer(marker.lower().encode(), lowered))
    ]


def crawl(client, seeds: list[str], markers: tuple[str, ...]) -> tuple[int, list, list]:
    """Walk from ``seeds`` breadth first, GET only. Returns (pages read, 5xx answers, marked places)."""
    seen: set[str] = set()
    per_path: dict[str, int] = {}
    per_shape: dict[str, int] = {}
    todo = deque((url, 0) for url in seeds)
    errors, leaks = [], []
    while todo and len(seen) < MAX_PAGES:
        url, depth = todo.popleft()
        path, _, query = url.partition("?")
        key = path + "?" + urlencode(sorted(parse_qsl(query, keep_blank_values=True)))
        if key in seen:
            continue
        if query and path != "/admin/autocomplete/":
            if per_path.get(path, 0) >= QUERIES_PER_PATH:
                continue
            per_path[path] = per_path.get(path, 0) + 1
        shape = re.sub(r"/\d+/", "/N/", path)
        if shape != path and depth > 0:
            if per_shape.get(shape, 0) >= PER_SHAPE:
                continue
            per_shape[shape] = per_shape.get(shape, 0) + 1
        seen.add(key)
        response = client.get(url)
        if response.status_code >= 500:
            errors.append((url, response.status_code))
            continue
        if response.status_code in (301, 302):
            body = f'href="{response.headers.get("Location", "")}"'.encode()
        else:
            body = _body(response)
            leaks += [(url, around) for around in _marked(body, markers)]
            if not re.search("html|json", response.headers.get("Content-Type", "")):
                continue
        if depth < MAX_DEPTH:
            todo.extend((link, depth + 1) for link in _links(url, body.decode(errors="replace")))
    return len(seen), errors, leaks


def _allowed(reader: str, url: str, around: str) -> bool:
    return any(
        who == reader and re.search(page, url) and re.search(said, around, re.DOTALL) for who, page, said in ALLOWED
    )


@pytest.mark.parametrize("reader", ["manager_alice", "viewer_carol", "viewer_vic"])
def test_no_admin_page_names_what_its_reader_may_not_see(client, world, reader, request):
    client.force_login(request.getfixturevalue(reader))
    # alice was granted nothing of mallory's: not even the text of a push of hers reaches her.
    pages, errors, leaks = crawl(client, _seeds(world), (MARKER, TEXT) if reader == "manager_alice" else (MARKER,))
    assert not errors, errors
    leaks = [(url, around) for url, around in leaks if not _allowed(reader, url, around)]
    said = "\n".join(f"{url}\n    …{' '.join(around.split())}…" for url, around in leaks)
    assert not leaks, f"{len(leaks)} places name {MARKER} to {reader} ({pages} pages read):\n{said}"
    assert pages > 150, pages  # the walk went through the admin, not a login page


def _granted_to_carol(world) -> dict[str, set[int]]:
    """What viewer_carol may open of mallory's: the campaign she was granted and its own sends."""
    from delivery.models import Delivery, Dispatch

    trigger = world["granted"]
    dispatches = set(
        Dispatch.objects.filter(kind=Dispatch.Kind.API_TRIGGER, source_id=trigger.pk).values_list("pk", flat=True)
    )
    return {
        "campaigns.campaign": {trigger.pk},
        "delivery.dispatch": dispatches,
        "delivery.delivery": set(Delivery.objects.filter(dispatch_id__in=dispatches).values_list("pk", flat=True)),
    }


def test_every_page_of_an_object_outside_access_answers_404_or_403_without_naming_it(
    client, world, manager_alice, viewer_carol
):
    """Each of mallory's objects (and what her work wrote: sends, rows, occurrences, enrollments,
    approval requests, audit events), opened by its address: change, history, delete, its own views."""
    for reader, granted in ((manager_alice, {}), (viewer_carol, _granted_to_carol(world))):
        client.force_login(reader)
        wrong, opened = [], 0
        for label, pks in world["secret_rows"].items():
            for pk in pks[:4] + pks[4:][-4:]:  # of many alike (deliveries, audit events), the first and last
                for url in _object_pages(label, pk):
                    response = client.get(url)
                    if pk in granted.get(label, ()):
                        assert response.status_code in (200, 403, 405), (reader, url)  # hers: no 404
                        continue
                    opened += 1
                    if response.status_code not in (403, 404) or _marked(_body(response), (MARKER, TEXT)):
                        wrong.append((url, response.status_code))
        assert not wrong, f"{reader}:\n" + "\n".join(f"{url} answered {status}" for url, status in wrong)
        assert opened > 100, opened


@pytest.mark.parametrize("granted", ["granted", "granted_journey"])
def test_an_approver_reads_the_review_he_decided_without_the_names_he_was_not_granted(client, world, granted):
    """approver_pat was granted mallory's campaign (or journey) alone: while its revision waited for
    him he read its app and contents through the review; once he sent it back, the review names none."""
    from django.contrib.contenttypes.models import ContentType

    from accounts.models import ApprovalRequest
    from campaigns.services.lifecycle import campaign_request_changes
    from journeys.services.lifecycle import journey_request_changes
    from tests.factories import UserFactory

    pat = UserFactory(username="approver_pat", role="Approver")
    subject = world[granted]
    access_grant(obj=subject, to=pat, by=None)
    request = ApprovalRequest.objects.get(
        subject_type=ContentType.objects.get_for_model(subject), subject_id=str(subject.pk), status="pending"
    )
    client.force_login(pat)
    url = reverse("admin:accounts_approvalrequest_review", args=[request.pk])
    assert _marked(client.get(url).content)  # his to decide: what it shows is named
    send_back = campaign_request_changes if granted == "granted" else journey_request_changes
    send_back(
        **{f"{subject._meta.model_name}_id": subject.pk}, by=pat, comment="Not on Sundays.", request_id=request.pk
    )
    page = client.get(url)
    assert page.status_code == 200
    assert not _marked(page.content), _marked(page.content)
