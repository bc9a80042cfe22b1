"""Cursor paging of every API list (``accounts.pagination``): ``?paging=cursor`` starts a walk by id,
newest first, and each page's ``next`` link carries the cursor of the next. Offset paging stays the
default. A walk returns every row that exists from its first page to its last exactly once, while
rows are inserted and updated between its pages (an offset skips or repeats them then); filters
and object access apply to each page; a cursor the server did not give for the list is a 400."""

import pytest
from django.core import signing
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.services import access_grant
from audiences.models import Segment
from campaigns.models import Campaign
from campaigns.services.lifecycle import campaign_create
from delivery.models import Dispatch
from journeys.models import Journey
from tests.factories import AppFactory, PushContentFactory, SegmentFactory

pytestmark = pytest.mark.django_db


class Team:
    """An app and what its user may make in each list."""

    def __init__(self, user):
        self.user = user
        self.app = AppFactory()
        access_grant(obj=self.app, to=user, by=None)
        self.content = PushContentFactory(app=self.app)
        self.made = 0

    def make(self, path: str) -> int:
        """A new row of the list at ``path``, visible to the team's user; its id."""
        self.made += 1
        name = f"{self.user.username} {self.made}"
        if path == "/api/v1/campaigns/":
            return campaign_create(
                by=self.user, name=name, app=self.app, segment=None, content=self.content, kind="api_triggered"
            ).pk
        if path == "/api/v1/dispatches/":
            return Dispatch.objects.create(
                app=self.app, kind="api_trigger", content_spec=self.content.spec(), status="sending"
            ).pk
        if path == "/api/v1/journeys/":
            return Journey.objects.create(name=name, app=self.app, owner=self.user).pk
        segment = SegmentFactory(name=name, created_by=self.user)
        access_grant(obj=segment, to=self.user, by=None)
        return segment.pk


def touch(path: str, row_id: int) -> None:
    """Update a row as its team would, moving it in the list's own order where that order can move."""
    now = timezone.now()
    if path == "/api/v1/campaigns/":
        Campaign.objects.filter(pk=row_id).update(name="Renamed", updated_at=now)
    elif path == "/api/v1/dispatches/":
        Dispatch.objects.filter(pk=row_id).update(accepted=7, total=7)
    elif path == "/api/v1/journeys/":
        Journey.objects.filter(pk=row_id).update(name="Renamed", updated_at=now)  # to the top of the list
    else:
        Segment.objects.filter(pk=row_id).update(name="A first now")  # to the top of the list


PAGED = ["/api/v1/campaigns/", "/api/v1/segments/", "/api/v1/journeys/", "/api/v1/dispatches/"]


@pytest.fixture
def alice(manager_alice):
    return Team(manager_alice)


@pytest.fixture
def mallory(manager_mallory):
    return Team(manager_mallory)


def walk(client, path: str, params: dict, between=lambda page: None) -> list[list[int]]:
    """Every page of a cursor walk, following ``next``; ``between`` runs after each page."""
    pages = []
    response = client.get(path, {**params, "paging": "cursor"})
    while True:
        assert response.status_code == 200, response.content[:300]
        body = response.json()
        assert set(body) == {"next", "results"}  # no count: a walk counts nothing
        pages.append([row["id"] for row in body["results"]])
        if body["next"] is None:
            return pages
        assert "paging=" not in body["next"] and "offset=" not in body["next"]
        between(len(pages))
        response = client.get(body["next"])


def follow(client, url: str) -> list[int]:
    """The ids of the page at ``url`` and of every page after it."""
    ids = []
    while url:
        body = client.get(url).json()
        ids += [row["id"] for row in body["results"]]
        url = body["next"]
    return ids


@pytest.mark.embedded  # the embedded default's API pages on SQLite
@pytest.mark.parametrize("path", PAGED)
def test_a_walk_returns_every_row_that_exists_throughout_exactly_once_while_rows_come_and_change(
    path, alice, api_key_for
):
    there = [alice.make(path) for _ in range(10)]
    client = api_key_for(alice.user, scopes=["read"])
    added = []

    def insert_and_update(page: int) -> None:
        added.append(alice.make(path))
        touch(path, there[-page])  # one already read
        touch(path, there[page])  # one not read yet

    pages = walk(client, path, {"limit": 3}, between=insert_and_update)
    seen = [row_id for page in pages for row_id in page]
    assert sorted(seen) == sorted(set(seen)), seen  # nothing twice
    assert set(there) <= set(seen), (there, seen)  # nothing that was there all along is missed
    assert seen == sorted(seen, reverse=True)  # by id, newest first
    assert [len(page) for page in pages] == [3, 3, 3, 1]
    # Offset paging is the default, in the list's own order, counted.
    body = client.get(path, {"limit": 3}).json()
    assert body["count"] == len(there) + len(added) and len(body["results"]) == 3 and "offset=3" in body["next"]


def test_an_offset_walk_of_the_same_changes_repeats_a_journey_that_a_cursor_walk_reads_once(alice, api_key_for):
    """Why the cursor walk exists: journeys sort by ``updated_at``, which an update moves."""
    there = [alice.make("/api/v1/journeys/") for _ in range(6)]
    client = api_key_for(alice.user, scopes=["read"])
    first = [row["id"] for row in client.get("/api/v1/journeys/", {"limit": 3}).json()["results"]]
    touch("/api/v1/journeys/", there[0])  # not read yet, now on top: the next offset page shifts
    second = [row["id"] for row in client.get("/api/v1/journeys/", {"limit": 3, "offset": 3}).json()["results"]]
    assert len(set(first + second)) < len(there)  # one row missed
    pages = walk(client, "/api/v1/journeys/", {"limit": 3}, between=lambda page: touch("/api/v1/journeys/", there[-1]))
    assert sorted(row_id for page in pages for row_id in page) == sorted(there)


@pytest.mark.parametrize(
    ("path", "params", "matching"),
    [
        ("/api/v1/campaigns/", {"status": "archived"}, lambda ids: Campaign.objects.filter(pk__in=ids)),
        ("/api/v1/journeys/", {"status": "stopped"}, lambda ids: Journey.objects.filter(pk__in=ids)),
        ("/api/v1/dispatches/", {"status": "done"}, lambda ids: Dispatch.objects.filter(pk__in=ids)),
    ],
)
def test_filters_apply_to_every_page_of_a_walk(path, params, matching, alice, api_key_for):
    ids = [alice.make(path) for _ in range(9)]
    chosen = ids[::2]
    matching(chosen).update(status=params["status"])
    client = api_key_for(alice.user, scopes=["read"])
    pages = walk(client, path, {**params, "limit": 2})
    assert [row_id for page in pages for row_id in page] == sorted(chosen, reverse=True)
    assert f"status={params['status']}" in client.get(path, {**params, "limit": 2, "paging": "cursor"}).json()["next"]


def test_the_dispatch_filters_of_app_and_kind_apply_to_a_walk(alice, api_key_for):
    other = AppFactory()
    access_grant(obj=other, to=alice.user, by=None)
    mine = [alice.make("/api/v1/dispatches/") for _ in range(5)]
    Dispatch.objects.create(app=other, kind="api_trigger", content_spec=alice.content.spec(), status="done")
    Dispatch.objects.filter(pk=mine[0]).update(kind="test")
    client = api_key_for(alice.user, scopes=["read"])
    pages = walk(client, "/api/v1/dispatches/", {"app": alice.app.pk, "kind": "api_trigger", "limit": 2})
    assert [row_id for page in pages for row_id in page] == sorted(mine[1:], reverse=True)


@pytest.mark.parametrize("path", PAGED)
def test_a_walk_shows_only_what_the_user_may_see_whoever_gave_the_cursor(path, alice, mallory, api_key_for):
    hers = [mallory.make(path) for _ in range(3)]
    mine = [alice.make(path) for _ in range(4)]
    more_of_hers = [mallory.make(path) for _ in range(3)]
    client, other = api_key_for(alice.user, scopes=["read"]), api_key_for(mallory.user, scopes=["read"])
    assert [row_id for page in walk(client, path, {"limit": 2}) for row_id in page] == sorted(mine, reverse=True)
    # Alice's cursor, after her newest row, walks on through Mallory's rows only when Mallory asks.
    alices_next = client.get(path, {"limit": 1, "paging": "cursor"}).json()["next"]
    assert follow(client, alices_next) == sorted(mine, reverse=True)[1:]
    assert follow(other, alices_next) == sorted(hers, reverse=True)
    assert not set(more_of_hers) & set(follow(other, alices_next))


def test_a_walk_needs_the_read_scope(alice, api_key_for):
    alice.make("/api/v1/campaigns/")
    response = api_key_for(alice.user, scopes=["ingest"]).get("/api/v1/campaigns/", {"paging": "cursor"})
    assert response.status_code == 403


def _cursor(client, path: str) -> str:
    from urllib.parse import parse_qs, urlsplit

    return parse_qs(urlsplit(client.get(path, {"limit": 1, "paging": "cursor"}).json()["next"]).query)["cursor"][0]


GARBLED = {
    "word": "garbage",
    "blank": "",
    "space": " ",
    "nul": "a\x00b",
    "huge": "A" * 100_000,
    "not-base64": "!!!:***",
    "no-signature": "WyItaWQiLDVd",
    "percent-sign": "%",
}


@pytest.mark.parametrize("path", PAGED)
@pytest.mark.parametrize("value", list(GARBLED.values()), ids=list(GARBLED))
def test_a_garbled_cursor_answers_400_naming_cursor(path, value, alice, api_key_for):
    alice.make(path)
    response = api_key_for(alice.user, scopes=["read"]).get(path, {"cursor": value})
    assert response.status_code == 400, response.content[:300]
    body = response.json()
    assert body["code"] == "invalid" and [e["field"] for e in body["errors"]] == ["cursor"], body
    assert body["detail"].startswith("cursor: ")


@pytest.mark.parametrize(
    "query",
    ["cursor=%ED%A0%80", "cursor=%ud800", "cursor=%FF%FE", "cursor=a%00", "cursor=" + "9" * 400],
    ids=["lone-surrogate-utf8", "lone-surrogate-escape", "not-utf8", "nul-escaped", "long-digits"],
)
def test_a_hostile_cursor_in_the_raw_query_answers_400_naming_cursor(query, alice, api_key_for):
    response = api_key_for(alice.user, scopes=["read"]).get(f"/api/v1/dispatches/?{query}")
    assert response.status_code == 400, response.content[:300]
    assert [e["field"] for e in response.json()["errors"]] == ["cursor"]


def test_a_tampered_or_borrowed_cursor_answers_400(alice, api_key_for):
    alice.make("/api/v1/campaigns/")
    alice.make("/api/v1/campaigns/")
    alice.make("/api/v1/dispatches/")
    alice.make("/api/v1/dispatches/")
    client = api_key_for(alice.user, scopes=["read"])
    good = _cursor(client, "/api/v1/campaigns/")
    assert client.get("/api/v1/campaigns/", {"cursor": good}).status_code == 200
    payload, signature = good.rsplit(":", 1)
    forged = signing.b64_encode(b'["-id",9999999]').decode() + ":" + signature  # a later position, its old signature
    refused = {
        "forged": forged,
        "signature-cut": good[:-1],
        "signature-gone": payload,
        "of-another-list": _cursor(client, "/api/v1/dispatches/"),
    }
    for name, value in refused.items():
        response = client.get("/api/v1/campaigns/", {"cursor": value})
        assert response.status_code == 400, (name, response.content[:300])
        assert response.json()["errors"][0]["field"] == "cursor", name


@pytest.mark.parametrize("payload", [["-id", "5"], ["id", 5], ["-id", 0], ["-id", 2**63], ["-id", 5.0], {"a": 1}, 5])
def test_a_signed_cursor_of_another_shape_answers_400_not_500(payload, alice, api_key_for):
    """Only the server signs cursors; should one of another shape ever be signed with its key, it is still refused."""
    value = signing.dumps(payload, salt="accounts.pagination.cursor:/api/v1/campaigns/", compress=False)
    response = api_key_for(alice.user, scopes=["read"]).get("/api/v1/campaigns/", {"cursor": value})
    assert response.status_code == 400 and response.json()["errors"][0]["field"] == "cursor"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"cursor": "{good}", "offset": "0"}, "cursor"),
        ({"cursor": "{good}", "paging": "offset"}, "cursor"),
        ({"paging": "cursor", "offset": "3"}, "offset"),
        ({"paging": "pages"}, "paging"),
        ({"paging": ""}, "paging"),
    ],
)
def test_cursor_and_offset_exclude_each_other(params, field, alice, api_key_for):
    alice.make("/api/v1/campaigns/")
    alice.make("/api/v1/campaigns/")
    client = api_key_for(alice.user, scopes=["read"])
    good = _cursor(client, "/api/v1/campaigns/")
    response = client.get("/api/v1/campaigns/", {k: v.format(good=good) for k, v in params.items()})
    assert response.status_code == 400, response.content[:300]
    assert [e["field"] for e in response.json()["errors"]] == [field]


def test_paging_offset_is_the_default_said_aloud(alice, api_key_for):
    alice.make("/api/v1/campaigns/")
    body = api_key_for(alice.user, scopes=["read"]).get("/api/v1/campaigns/", {"paging": "offset"}).json()
    assert body["count"] == 1 and body["previous"] is None


def test_a_walk_page_is_one_query_of_the_rows_through_the_primary_key_and_counts_nothing(
    alice, api_key_for, django_assert_max_num_queries
):
    """A few thousand dispatches: each page of a walk reads its rows by a range scan of the primary
    key, newest first, with the filters applied on the way (no sort, no count of the list)."""
    spec = alice.content.spec()
    Dispatch.objects.bulk_create(
        [
            Dispatch(app=alice.app, kind="api_trigger", content_spec=spec, status="done" if n % 3 else "sending")
            for n in range(3000)
        ]
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE delivery_dispatch")
    client = api_key_for(alice.user, scopes=["read"])
    first = client.get("/api/v1/dispatches/", {"paging": "cursor", "status": "done", "limit": 50}).json()
    with CaptureQueriesContext(connection) as queries:
        response = client.get(first["next"])
    assert response.status_code == 200 and len(response.json()["results"]) == 50
    reads = [q["sql"] for q in queries.captured_queries if 'FROM "delivery_dispatch"' in q["sql"]]
    assert len(reads) == 1, reads
    assert not [q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"].upper()]
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN {reads[0]}")
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "Index Scan Backward using delivery_dispatch_pkey" in plan and "Sort" not in plan, plan
    assert "Index Cond: (id <" in plan, plan


def test_a_dispatchs_deliveries_walk_by_id_through_next_while_sends_change_them_and_a_stream_appends(
    alice, api_key_for
):
    from delivery.models import Delivery
    from tests.factories import DeviceFactory

    dispatch = Dispatch.objects.get(pk=alice.make("/api/v1/dispatches/"))

    def append() -> int:
        device = DeviceFactory(app=alice.app)
        return Delivery.objects.create(dispatch=dispatch, device=device, profile=device.profile, status="queued").pk

    there = [append() for _ in range(7)]
    client = api_key_for(alice.user, scopes=["read"])
    url, pages, added = f"/api/v1/dispatches/{dispatch.pk}/deliveries/?limit=3", [], []
    while url:
        body = client.get(url).json()
        pages.append([row["id"] for row in body["results"]])
        assert body["next_after"] == (pages[-1][-1] if body["next"] else None)
        url = body["next"]
        Delivery.objects.filter(pk__in=there[: len(pages) * 2]).update(status="accepted")  # sends as the walk runs
        if len(added) < 2:
            added.append(append())
    seen = [row_id for page in pages for row_id in page]
    assert seen == sorted(set(seen)) == sorted(there + added)
    refused = api_key_for(alice.user, scopes=["ingest"]).get(f"/api/v1/dispatches/{dispatch.pk}/deliveries/")
    assert refused.status_code == 403
