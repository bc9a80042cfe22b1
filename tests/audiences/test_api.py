"""The audiences API: scopes, object access, per-item answers of bulk calls."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from accounts.api import JsonDateTimeField
from accounts.models import AuditEvent
from accounts.services import access_grant
from audiences.models import Event, Import, Profile, Segment
from audiences.services.profiles import EXTERNAL_ID_PADDED
from audiences.services.segments import segment_create
from tests.factories import ProfileFactory

pytestmark = pytest.mark.django_db

PRO = {"all": [{"attribute": "plan", "type": "string", "op": "eq", "value": "pro"}]}


def test_upsert_one_profile_answers_created_then_updated(manager_alice, api_key_for):
    client = api_key_for(manager_alice, scopes=["ingest", "read"])
    first = client.post("/api/v1/profiles/", {"external_id": "u1", "attributes": {"plan": "pro"}}, format="json")
    assert first.status_code == 201, first.json()
    assert first.json()["result"] == "created"
    again = client.post("/api/v1/profiles/", {"external_id": "u1", "attributes": {"age": 3}}, format="json")
    assert again.status_code == 200
    assert again.json()["attributes"] == {"plan": "pro", "age": 3}


def test_a_key_without_the_read_scope_reads_no_profile_back_from_an_upsert(manager_alice, api_key_for):
    """The key a mobile app ships (ingest alone) is public: its answer showed the whole stored
    profile, so anyone holding it read any user's attributes, locale and time zone by sending
    their external id with nothing to change. It answers what the call did, not what is stored."""
    ProfileFactory(external_id="victim", attributes={"email": "v@example.com", "plan": "pro"}, locale="fr-FR")
    app_key = api_key_for(manager_alice, scopes=["ingest"])
    response = app_key.post("/api/v1/profiles/", {"external_id": "victim"}, format="json")
    assert response.status_code == 200, response.json()
    assert response.json() == {"external_id": "victim", "result": "unchanged"}
    response = app_key.post("/api/v1/profiles/", {"external_id": "victim", "attributes": {"age": 3}}, format="json")
    assert response.json() == {"external_id": "victim", "result": "updated"}
    assert Profile.objects.get(external_id="victim").attributes == {"email": "v@example.com", "plan": "pro", "age": 3}


def test_upsert_needs_the_ingest_scope(manager_alice, api_key_for):
    client = api_key_for(manager_alice, scopes=["read"])
    response = client.post("/api/v1/profiles/", {"external_id": "u1"}, format="json")
    assert response.status_code == 403
    assert response.json()["code"] == "insufficient_scope"


def test_viewer_key_cannot_write_profiles(viewer_carol, api_key_for):
    from accounts.services import api_key_create

    # Viewers own no keys; an administrator's key for a viewer-like role is refused by role.
    with pytest.raises(Exception):  # noqa: B017 - the role may not hold keys at all
        api_key_create(user=viewer_carol, name="x", scopes=["ingest"], by=viewer_carol)


def test_approver_key_is_refused_profile_writes_by_role(approver_bob, api_key_for):
    client = api_key_for(approver_bob, scopes=["ingest"])
    response = client.post("/api/v1/profiles/", {"external_id": "u1"}, format="json")
    assert response.status_code == 403
    assert not Profile.objects.exists()


def test_bad_profile_names_the_field(manager_alice, api_key_for):
    client = api_key_for(manager_alice, scopes=["ingest"])
    response = client.post("/api/v1/profiles/", {"external_id": "u1", "timezone": "Mars/Base"}, format="json")
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid"
    assert body["errors"][0]["field"] == "timezone"


@pytest.mark.parametrize("zone", ["localtime", "posixrules"])
def test_a_time_zone_named_after_the_servers_own_files_is_refused(manager_alice, api_key_for, zone):
    """'localtime' is the server's own zone (a link its system keeps), not an IANA name: a profile
    kept with it would be read in whatever zone the machine that reads it has."""
    client = api_key_for(manager_alice, scopes=["ingest"])
    response = client.post("/api/v1/profiles/", {"external_id": "u1", "timezone": zone}, format="json")
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "timezone"
    assert not Profile.objects.exists()


def test_bulk_upsert_lands_good_items_and_reports_bad_ones(manager_alice, api_key_for):
    client = api_key_for(manager_alice, scopes=["ingest"])
    payload = {
        "profiles": [
            {"external_id": "a", "attributes": {"plan": "pro"}},
            {"external_id": "", "attributes": {}},
            {"external_id": "b", "attributes": {"bad name!": 1}},
            "not an object",
            {"external_id": "c", "locale": "fr-FR"},
        ]
    }
    response = client.post("/api/v1/profiles/bulk/", payload, format="json")
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["accepted"] == 2 and body["failed"] == 3
    statuses = [r["status"] for r in body["results"]]
    assert statuses == ["created", "error", "error", "error", "created"]
    assert body["results"][1]["errors"][0]["field"] == "external_id"
    assert body["results"][2]["errors"][0]["field"] == "attributes"
    assert set(Profile.objects.values_list("external_id", flat=True)) == {"a", "c"}


PADDED_IDS = [" u1", "u1 ", "u1\t", "\nu1", "\u00a0u1"]


@pytest.mark.parametrize("padded", PADDED_IDS)
def test_an_external_id_with_spaces_around_it_is_refused_naming_the_field(manager_alice, api_key_for, padded):
    """ " u1" and "u1" were two profiles: an integrator's id read from a form or a file with a
    space kept made a second person, who got the events and devices meant for the first. An id
    is refused when it begins or ends with white space (trimming it would send the writes of a
    profile kept under " u1" from before to "u1" without a word), at every call that creates one."""
    ProfileFactory(external_id="u1", attributes={"plan": "pro"})
    client = api_key_for(manager_alice, scopes=["ingest"])
    one = client.post("/api/v1/profiles/", {"external_id": padded, "attributes": {"plan": "free"}}, format="json")
    assert one.status_code == 400, one.json()
    assert one.json()["errors"][0]["field"] == "external_id"
    assert "white space" in one.json()["errors"][0]["detail"]
    bulk = client.post(
        "/api/v1/profiles/bulk/", {"profiles": [{"external_id": padded}, {"external_id": "u2"}]}, format="json"
    )
    assert [r["status"] for r in bulk.json()["results"]] == ["error", "created"]
    assert bulk.json()["results"][0]["errors"][0]["field"] == "external_id"
    event = {"external_id": padded, "name": "app_open", "occurred_at": "2026-06-01T10:00:00Z"}
    events = client.post("/api/v1/events/bulk/", {"events": [event]}, format="json")
    assert events.status_code == 200, events.json()
    assert [r["status"] for r in events.json()["results"]] == ["error"]
    assert events.json()["results"][0]["errors"][0]["field"] == "external_id"
    assert sorted(Profile.objects.values_list("external_id", flat=True)) == ["u1", "u2"]
    assert Profile.objects.get(external_id="u1").attributes == {"plan": "pro"}
    assert not Event.objects.exists()


def test_the_services_refuse_an_external_id_with_spaces_around_it(manager_alice):
    from django.core.exceptions import ValidationError
    from django.utils import timezone

    from audiences.services.events import events_ingest
    from audiences.services.profiles import profiles_upsert

    with pytest.raises(ValidationError, match="external_id"):
        profiles_upsert(items=[{"external_id": "u1 "}], by=manager_alice)
    with pytest.raises(ValidationError, match="external_id"):
        events_ingest(items=[{"external_id": " u1", "name": "x", "occurred_at": timezone.now()}], by=manager_alice)
    assert not Profile.objects.exists()


def _names(prefix: str, count: int, value="x") -> dict:
    return {f"{prefix}{n}": value for n in range(count)}


def test_a_profiles_attributes_stay_within_the_limits_over_many_calls(manager_alice, api_key_for):
    # Each call within the limits; the second would have made the profile keep 300 names (it did).
    client = api_key_for(manager_alice, scopes=["ingest"])
    first = client.post("/api/v1/profiles/", {"external_id": "u1", "attributes": _names("a", 150)}, format="json")
    assert first.status_code == 201
    more = client.post(
        "/api/v1/profiles/", {"external_id": "u1", "attributes": _names("b", 150), "locale": "fr"}, format="json"
    )
    assert more.status_code == 400, more.json()
    assert more.json()["errors"] == [
        {
            "field": "attributes",
            "code": "invalid",
            "detail": "The profile would hold 300 attributes (at most 200): remove some by giving them as null.",
        }
    ]
    profile = Profile.objects.get()
    assert (len(profile.attributes), profile.locale) == (150, "")  # nothing of the refused call
    assert AuditEvent.objects.filter(action="profiles_upserted").count() == 1
    # Names removed (null) make room: 150 - 50 + 100 = 200.
    swap = {**_names("a", 50, None), **_names("b", 100)}
    assert client.post("/api/v1/profiles/", {"external_id": "u1", "attributes": swap}, format="json").status_code == 200
    profile.refresh_from_db()
    assert len(profile.attributes) == 200 and "b99" in profile.attributes and "a0" not in profile.attributes


def test_a_profiles_attributes_stay_within_16_kb_over_many_calls(manager_alice, api_key_for):
    client = api_key_for(manager_alice, scopes=["ingest"])
    half = {"bio": "x" * 9000}
    assert client.post("/api/v1/profiles/", {"external_id": "u1", "attributes": half}, format="json").status_code == 201
    response = client.post(
        "/api/v1/profiles/", {"external_id": "u1", "attributes": {"notes": "y" * 9000}}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "attributes"
    assert "at most 16384" in response.json()["errors"][0]["detail"]
    assert Profile.objects.get().attributes == half
    # Replacing a value by a shorter one is taken, whatever the profile holds beside it.
    shorter = client.post("/api/v1/profiles/", {"external_id": "u1", "attributes": {"bio": "z"}}, format="json")
    assert shorter.status_code == 200 and Profile.objects.get().attributes == {"bio": "z"}


def test_a_bulk_item_over_the_profiles_limits_fails_alone(manager_alice, api_key_for):
    client = api_key_for(manager_alice, scopes=["ingest"])
    ProfileFactory(external_id="known", attributes=_names("a", 150))
    payload = {
        "profiles": [
            {"external_id": "known", "attributes": _names("b", 100)},  # 250 names: refused
            {"external_id": "new", "attributes": _names("a", 120)},
            {"external_id": "new", "attributes": _names("b", 120)},  # 240 names on a profile made by this call
            {"external_id": "new", "attributes": {"a0": "changed"}},
            {"external_id": "known", "attributes": {"a0": "changed"}},
        ]
    }
    body = client.post("/api/v1/profiles/bulk/", payload, format="json").json()
    # The third "new" item changes the profile its first created: it says so.
    assert [r["status"] for r in body["results"]] == ["error", "created", "error", "updated", "updated"]
    assert (body["accepted"], body["failed"]) == (3, 2)
    assert body["results"][0]["errors"][0]["field"] == "attributes"
    assert "would hold 240 attributes" in body["results"][2]["errors"][0]["detail"]
    known, new = Profile.objects.get(external_id="known"), Profile.objects.get(external_id="new")
    assert len(known.attributes) == 150 and known.attributes["a0"] == "changed"
    assert len(new.attributes) == 120 and new.attributes["a0"] == "changed" and "b0" not in new.attributes


def test_a_bulk_call_naming_a_new_profile_twice_answers_created_once(manager_alice, api_key_for):
    """Items naming one external id apply in order, as an import's repeated rows do: the first
    creates the profile, a later one updates it (or leaves it unchanged), and says so; the call
    answered "created" for each, and its audit counted two profiles created where one was."""
    client = api_key_for(manager_alice, scopes=["ingest"])
    payload = {
        "profiles": [
            {"external_id": "new", "attributes": {"plan": "free"}},
            {"external_id": "new", "attributes": {"plan": "pro"}},
            {"external_id": "new", "attributes": {"plan": "pro"}},
        ]
    }
    body = client.post("/api/v1/profiles/bulk/", payload, format="json").json()
    assert [r["status"] for r in body["results"]] == ["created", "updated", "unchanged"]
    assert Profile.objects.get(external_id="new").attributes == {"plan": "pro"}
    summary = AuditEvent.objects.get(action="profiles_upserted").summary
    assert (summary["created"], summary["updated"], summary["unchanged"]) == (1, 1, 1)


def test_a_profile_over_the_limits_from_before_may_still_change_without_growing(manager_alice, api_key_for):
    client = api_key_for(manager_alice, scopes=["ingest", "read"])
    ProfileFactory(external_id="u1", attributes=_names("a", 250))  # kept from before the limits held
    kept = client.post("/api/v1/profiles/", {"external_id": "u1", "attributes": {"a0": "y"}}, format="json")
    assert kept.status_code == 200 and kept.json()["attributes"]["a0"] == "y"
    grown = client.post("/api/v1/profiles/", {"external_id": "u1", "attributes": {"new": 1}}, format="json")
    assert grown.status_code == 400 and "new" not in Profile.objects.get().attributes


def test_bulk_calls_are_capped_at_a_thousand_items(manager_alice, api_key_for):
    client = api_key_for(manager_alice, scopes=["ingest"])
    response = client.post(
        "/api/v1/profiles/bulk/", {"profiles": [{"external_id": str(n)} for n in range(1001)]}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "profiles"
    assert not Profile.objects.exists()


def test_bulk_events_land_good_items(manager_alice, api_key_for):
    client = api_key_for(manager_alice, scopes=["ingest"])
    payload = {
        "events": [
            {
                "external_id": "a",
                "name": "purchase",
                "properties": {"amount": 5},
                "occurred_at": "2026-06-01T10:00:00Z",
            },
            {"external_id": "a", "name": "purchase", "occurred_at": "yesterday"},
            {"external_id": "b", "name": "", "occurred_at": "2026-06-01T10:00:00Z"},
            {"external_id": "b", "name": "app_open", "occurred_at": "2099-01-01T00:00:00Z"},
        ]
    }
    response = client.post("/api/v1/events/bulk/", payload, format="json")
    body = response.json()
    assert response.status_code == 200, body
    assert [r["status"] for r in body["results"]] == ["accepted", "error", "error", "error"]
    assert body["results"][1]["errors"][0]["field"] == "occurred_at"
    assert body["results"][3]["errors"][0]["field"] == "occurred_at"
    assert Event.objects.count() == 1


def test_bulk_events_run_from_plans_the_connection_keeps(manager_alice, api_key_for):
    """The events' statements are prepared on the connection: PostgreSQL plans each once, not on
    every call (their lists travel as one JSON parameter, so no call's values change the plan)."""
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's prepared statements")
    client = api_key_for(manager_alice, scopes=["ingest"])
    for call in range(10):
        events = [
            {"external_id": f"p-{call % 2}", "name": "app_open", "occurred_at": f"2026-06-01T10:0{call}:00Z"},
            {"external_id": f"new-{call}", "name": "app_open", "occurred_at": "2026-06-01T10:00:00Z"},
        ]
        response = client.post("/api/v1/events/bulk/", {"events": events}, format="json")
        assert [r["status"] for r in response.json()["results"]] == ["accepted", "accepted"]
    assert Event.objects.count() == 20 and Profile.objects.count() == 12
    assert Profile.objects.get(external_id="p-1").last_seen_at.minute == 9
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements")
        prepared = cursor.fetchall()
    statements = {  # the profiles looked up and locked, created, seen; the events inserted
        "locked": "FROM jsonb_array_elements_text(",
        "created": "INSERT INTO audiences_profile ",
        "seen": "UPDATE audiences_profile AS p SET last_seen_at",
        "inserted": "INSERT INTO audiences_event ",
    }
    for what, text in statements.items():
        [(generic, custom)] = [(g, c) for sql, g, c in prepared if text in sql] or [(0, 0)]
        assert generic > 0 and custom <= 5, (what, generic, custom)


EVENT_ITEMS = [
    {
        "external_id": "a",
        "name": "purchase",
        "properties": {"amount": 5.5, "sku": "x"},
        "occurred_at": "2026-06-01T10:00:00Z",
    },
    {"external_id": "a", "name": "  app_open ", "occurred_at": "2026-06-01T12:00:00+02:00", "extra": 1},
    {"external_id": "a", "name": "x", "occurred_at": "2026-06-01T10:00:00.123456-05:30", "properties": {}},
    {
        "external_id": "a",
        "name": "x",
        "occurred_at": "2026-06-01 10:00:00+00:00",
        "properties": {"n": {"m": [1, None]}},
    },
    {"external_id": "a", "name": "x", "occurred_at": "2026-06-01T10:00:00"},  # naive: the current zone
    {"external_id": 7, "name": "x", "occurred_at": "2026-06-01T10:00:00Z"},  # numbers become text
    {"external_id": "a", "name": 7, "occurred_at": "2026-06-01T10:00:00Z"},
    {"external_id": "   ", "name": "x", "occurred_at": "2026-06-01T10:00:00Z"},
    {"external_id": "", "name": "x", "occurred_at": "2026-06-01T10:00:00Z"},
    {"external_id": "a", "name": "   ", "occurred_at": "2026-06-01T10:00:00Z"},
    {"external_id": "a" * 256, "name": "x", "occurred_at": "2026-06-01T10:00:00Z"},
    {"external_id": "a", "name": "x" * 101, "occurred_at": "2026-06-01T10:00:00Z"},
    {"external_id": "a", "name": " " + "x" * 100 + " ", "occurred_at": "2026-06-01T10:00:00Z"},
    {"external_id": "a\x00", "name": "x", "occurred_at": "2026-06-01T10:00:00Z"},
    {"external_id": "a", "name": "x\ud800", "occurred_at": "2026-06-01T10:00:00Z"},
    {"external_id": "a", "name": "x", "occurred_at": "yesterday"},
    {"external_id": "a", "name": "x", "occurred_at": "2099-01-01T00:00:00Z"},
    {"external_id": "a", "name": "x", "occurred_at": None},
    {"external_id": "a", "name": "x"},
    {"external_id": "a", "name": "x", "occurred_at": "2026-06-01T10:00:00Z", "properties": None},
    {"external_id": "a", "name": "x", "occurred_at": "2026-06-01T10:00:00Z", "properties": [1]},
    {"external_id": "a", "name": "x", "occurred_at": "2026-06-01T10:00:00Z", "properties": {"bad key": 1}},
    {"external_id": "a", "name": "x", "occurred_at": "2026-06-01T10:00:00Z", "properties": {"k": "v\x00"}},
    {"external_id": "a", "name": "x", "occurred_at": "2026-06-01T10:00:00Z", "properties": {"k": "v" * 9000}},
    {"external_id": "a", "name": "x", "occurred_at": "2026-06-01T10:00:00Z", "properties": {"k": {"m": "\ud800"}}},
    {"external_id": "a", "name": "x", "occurred_at": "2026-06-01T10:00:00Z", "properties": {"k": float("inf")}},
    {"external_id": "a", "name": "x", "occurred_at": "2026-06-01T10:00:00Z", "properties": {"k": [[[]]] * 3}},
    {"external_id": "a", "name": "x", "occurred_at": "2026-06-01T10:00:00Z", "properties": {"k": "\u00e9" * 1400}},
    {"external_id": "a", "name": "x", "occurred_at": "+2026-06-01T10:00:00Z"},
    {"external_id": "a", "name": "x", "occurred_at": "0001-01-01T00:00:00+01:00"},
    {"external_id": "a", "name": "x", "occurred_at": "20260601T100000Z"},
    {"external_id": "a", "name": "x", "occurred_at": "2026-06-01T10:00:00Z", "properties": {"k": True, "n": None}},
    # At the properties' size limit (8,192 characters of compact JSON: {"k":"…"} is 8 more) and over it.
    {"external_id": "a", "name": "x", "occurred_at": "2026-06-01T10:00:00Z", "properties": {"k": "v" * 8184}},
    {"external_id": "a", "name": "x", "occurred_at": "2026-06-01T10:00:00Z", "properties": {"k": "v" * 8185}},
    {"external_id": "a", "name": "x", "occurred_at": "2026-06-01T10:00:00Z", "properties": {"k": "\U0001f600" * 682}},
    {"external_id": "a", "name": "x", "occurred_at": "2026-06-01T10:00:00Z", "properties": {"k": "\U0001f600" * 683}},
    {"external_id": "a", "name": "x", "occurred_at": "2026-06-01T10:00:00Z", "properties": {"k": "\n" * 1364}},
    {"external_id": "a", "name": "x", "occurred_at": "2026-06-01T10:00:00Z", "properties": {"k": "\x01" * 1365}},
    {
        "external_id": "a",
        "name": "x",
        "occurred_at": "2026-06-01T10:00:00Z",
        "properties": {"a": 10**4000, "b": 10**4000},
    },
    {
        "external_id": "a",
        "name": "x",
        "occurred_at": "2026-06-01T10:00:00Z",
        "properties": {"a": 10**4000, "b": 10**4200},
    },
    # Whole numbers at a 64-bit float's edge: the largest it holds, and the smallest beyond it.
    {
        "external_id": "a",
        "name": "x",
        "occurred_at": "2026-06-01T10:00:00Z",
        "properties": {"a": 2**1024 - 2**970 - 1, "b": -(2**1024 - 2**970 - 1)},
    },
    {"external_id": "a", "name": "x", "occurred_at": "2026-06-01T10:00:00Z", "properties": {"a": -(2**1024 - 2**970)}},
    {
        "external_id": "a",
        "name": "x",
        "occurred_at": "2026-06-01T10:00:00Z",
        "properties": {f"k{i:03d}": -1.2345678901234567e-300 for i in range(250)},
    },
    {"external_id": " a", "name": "x", "occurred_at": "2026-06-01T10:00:00Z"},
    {"external_id": "a\u2003", "name": "x", "occurred_at": "2026-06-01T10:00:00Z"},
]


def _event_validated(item):
    from django.utils import timezone

    from audiences.api import _events_validated

    return _events_validated([item], now=timezone.now())[0]


@pytest.mark.parametrize("item", EVENT_ITEMS)
def test_the_event_shortcut_agrees_with_the_serializer(item):
    from audiences.api import EventInSerializer
    from tests.shortcuts import assert_shortcut_agrees

    assert_shortcut_agrees(_event_validated, EventInSerializer, item, plain=dict)


def test_the_event_shortcut_takes_the_usual_items():
    assert [_event_validated(item) is not None for item in EVENT_ITEMS[:4]] == [True] * 4


def test_the_event_shortcut_checks_a_whole_call_as_each_item_alone():
    """Items are checked together (their strings searched at once): a bad item beside good ones
    leaves only itself to the serializer, and each answer is the one the item gets alone."""
    from django.utils import timezone

    from audiences.api import _events_validated

    items = EVENT_ITEMS + ["not an object", None, [1]] + EVENT_ITEMS[:4]
    together = _events_validated(items, now=timezone.now())
    assert together == [_event_validated(item) for item in items]
    assert [data is not None for data in together[-4:]] == [True] * 4


def test_segments_list_shows_only_accessible_segments(manager_alice, manager_mallory, api_key_for):
    mine = segment_create(name="Mine", rules=PRO, by=manager_alice)
    segment_create(name="Theirs", rules=PRO, by=manager_mallory)
    client = api_key_for(manager_alice, scopes=["read"])
    response = client.get("/api/v1/segments/")
    assert response.status_code == 200
    assert [s["id"] for s in response.json()["results"]] == [mine.pk]


def test_segment_outside_access_answers_404(manager_alice, manager_mallory, api_key_for):
    theirs = segment_create(name="Theirs", rules=PRO, by=manager_mallory)
    client = api_key_for(manager_alice, scopes=["read"])
    assert client.get(f"/api/v1/segments/{theirs.pk}/").status_code == 404
    assert client.get(f"/api/v1/segments/{theirs.pk}/preview/").status_code == 404


def test_segment_preview_counts_and_samples(manager_alice, admin_erin, approver_bob, api_key_for):
    for n in range(30):
        ProfileFactory(attributes={"plan": "pro"} if n < 25 else {})
    segment = segment_create(name="Pro", rules=PRO, by=manager_alice)
    access_grant(obj=segment, to=approver_bob, by=admin_erin)
    client = api_key_for(approver_bob, scopes=["read"])
    body = client.get(f"/api/v1/segments/{segment.pk}/preview/").json()
    assert body["count"] == 25
    assert len(body["sample"]) == 20
    assert len(client.get(f"/api/v1/segments/{segment.pk}/preview/?sample=3").json()["sample"]) == 3


def test_segment_preview_says_what_a_send_would_reach_in_each_app_the_user_sees(manager_alice, admin_erin, api_key_for):
    from delivery.models import App
    from tests.factories import AppFactory, DeviceFactory

    shop, bank = AppFactory(name="Shop"), AppFactory(name="Bank")
    access_grant(obj=shop, to=manager_alice, by=admin_erin)
    pro = [ProfileFactory(attributes={"plan": "pro"}) for _ in range(4)]
    DeviceFactory(app=shop, profile=pro[0], platform="ios")
    DeviceFactory(app=shop, profile=pro[1], platform="android", push_enabled=False)
    DeviceFactory(app=bank, profile=pro[2], platform="ios")  # an app she does not see
    segment = segment_create(name="Pro", rules=PRO, by=manager_alice)
    body = api_key_for(manager_alice, scopes=["read"]).get(f"/api/v1/segments/{segment.pk}/preview/").json()
    assert body["count"] == 4
    assert body["reach"] == [
        {"app": shop.pk, "name": "Shop", "profiles": 4, "reachable": 2, "ios": 1, "android": 1, "opted_in": 1}
    ]
    assert App.objects.count() == 2


def test_segment_preview_counts_numbers_no_float_holds_stored_before_they_were_refused(manager_alice, api_key_for):
    ProfileFactory(attributes={"n": 10**400})  # as the API took it before the JSON check refused it
    ProfileFactory(attributes={"n": 3})
    ProfileFactory(attributes={"n": "three"})
    segment = segment_create(
        name="n > 1", rules={"all": [{"attribute": "n", "type": "number", "op": "gt", "value": 1}]}, by=manager_alice
    )
    response = api_key_for(manager_alice, scopes=["read"]).get(f"/api/v1/segments/{segment.pk}/preview/")
    assert response.status_code == 200, response.content[:300]
    assert response.json()["count"] == 2


def test_segment_preview_warns_of_values_its_rules_read_as_nothing(manager_alice, api_key_for):
    """The rule builder's preview warned of text a number rule does not read and of text with white
    space around it under 'is'; the API's preview said nothing, so a segment built through the API
    left such profiles out with no hint. It answers the same warnings, each with a code to act on."""
    ProfileFactory(attributes={"age": "042", "plan": "pro "})
    ProfileFactory(attributes={"age": 50, "plan": "pro"})
    ProfileFactory(attributes={"age": "42.0", "plan": "free"})
    rules = {
        "all": [
            {"attribute": "age", "type": "number", "op": "gt", "value": 30},
            {"attribute": "plan", "type": "string", "op": "in", "value": ["pro", "team"]},
        ]
    }
    segment = segment_create(name="Pro adults", rules=rules, by=manager_alice)
    body = api_key_for(manager_alice, scopes=["read"]).get(f"/api/v1/segments/{segment.pk}/preview/").json()
    assert body["count"] == 1
    assert body["warnings"] == [
        {
            "code": "number_as_text",
            "attribute": "age",
            "count": 2,
            "sampled": 3,
            "example": "042",
            "message": "2 of the 3 newest profiles hold 'age' as text a number rule does not read, such as '042': "
            "a number is read from text written plainly (42, -7, 4.5)",
        },
        {
            "code": "text_with_white_space",
            "attribute": "plan",
            "count": 1,
            "sampled": 3,
            "example": "pro ",
            "message": "1 of the 3 newest profiles hold 'plan' with white space around it, such as 'pro ', "
            "which 'is one of' compares too",
        },
    ]
    plain = segment_create(name="Pro", rules=PRO, by=manager_alice)
    ProfileFactory(attributes={"plan": "pro"})
    body = api_key_for(manager_alice, scopes=["read"]).get(f"/api/v1/segments/{plain.pk}/preview/").json()
    assert body["warnings"] == [
        {
            "code": "text_with_white_space",
            "attribute": "plan",
            "count": 1,
            "sampled": 4,
            "example": "pro ",
            "message": "1 of the 4 newest profiles hold 'plan' with white space around it, such as 'pro ', "
            "which 'is' compares too",
        }
    ]


def test_profile_read_needs_read_scope(manager_alice, api_key_for):
    ProfileFactory(external_id="ann", attributes={"plan": "pro"})
    assert api_key_for(manager_alice, scopes=["read"]).get("/api/v1/profiles/ann/").json()["attributes"] == {
        "plan": "pro"
    }
    assert api_key_for(manager_alice, scopes=["ingest"]).get("/api/v1/profiles/ann/").status_code == 403
    assert api_key_for(manager_alice, scopes=["read"]).get("/api/v1/profiles/nobody/").status_code == 404


@pytest.mark.parametrize("method", ["get", "delete"])
@pytest.mark.parametrize(
    ("path", "detail"),
    [
        ("/api/v1/profiles/%20ann/", EXTERNAL_ID_PADDED),
        ("/api/v1/profiles/ann%09/", EXTERNAL_ID_PADDED),
        ("/api/v1/profiles/%20/", "This field is required: a non-empty string."),
        (f"/api/v1/profiles/{'a' * 256}/", "At most 255 characters."),
    ],
    ids=["padded", "tab", "blank", "256 characters"],
)
def test_every_method_of_a_profile_path_refuses_an_id_no_profile_may_have_naming_the_field(
    manager_alice, api_key_for, method, path, detail
):
    ProfileFactory(external_id="ann")  # a padded id never reads or erases the profile kept under its trimmed id
    response = getattr(api_key_for(manager_alice, scopes=["ingest", "read"]), method)(path)
    assert response.status_code == 400, response.content[:300]
    assert response.json()["errors"] == [{"field": "external_id", "code": "invalid", "detail": detail}]
    assert Profile.objects.filter(external_id="ann").exists()


def test_a_profile_kept_under_a_padded_id_from_before_is_read_by_that_exact_id(manager_alice, api_key_for):
    Profile.objects.create(external_id=" ann", attributes={"plan": "pro"})  # as written before the rule
    response = api_key_for(manager_alice, scopes=["read"]).get("/api/v1/profiles/%20ann/")
    assert response.status_code == 200, response.content
    assert (response.json()["external_id"], response.json()["attributes"]) == (" ann", {"plan": "pro"})


def test_import_create_and_status(manager_alice, api_key_for, django_capture_on_commit_callbacks, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    client = api_key_for(manager_alice, scopes=["ingest"])
    upload = SimpleUploadedFile("people.csv", b"external_id,plan\na,pro\nb,free\n,x\n", content_type="text/csv")
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            "/api/v1/imports/",
            {"file": upload, "target": "new_segment", "segment_name": "From CSV"},
            format="multipart",
        )
    assert response.status_code == 202, response.json()
    import_id = response.json()["id"]
    status = client.get(f"/api/v1/imports/{import_id}/").json()
    assert status["status"] == "done"
    assert (status["rows_imported"], status["rows_failed"]) == (2, 1)
    assert status["percent"] == 100.0
    errors = client.get(f"/api/v1/imports/{import_id}/errors/")
    assert errors.status_code == 200
    assert b"external_id is empty" in b"".join(errors.streaming_content)
    segment = Segment.objects.get(name="From CSV")
    assert segment.kind == "imported" and segment.members.count() == 2


def test_a_replace_import_with_no_good_row_says_in_its_status_that_it_removed_nobody(
    manager_alice, api_key_for, django_capture_on_commit_callbacks, media
):
    segment = segment_create(name="VIP", kind=Segment.Kind.STATIC, by=manager_alice)
    ProfileFactory(external_id="a")
    segment.members.create(profile=Profile.objects.get(external_id="a"))
    client = api_key_for(manager_alice, scopes=["ingest", "read"])
    upload = SimpleUploadedFile("people.csv", b"external_id,age\nb,x\n", content_type="text/csv")
    body = {
        "file": upload,
        "target": "replace_segment",
        "segment": segment.pk,
        "columns": '{"age": {"type": "number"}}',
    }
    with django_capture_on_commit_callbacks(execute=True):
        import_id = client.post("/api/v1/imports/", body, format="multipart").json()["id"]
    status = client.get(f"/api/v1/imports/{import_id}/").json()
    assert (status["status"], status["rows_failed"], status["members_removed"]) == ("done", 1, 0)
    assert status["note"].startswith("No row of the file was imported, so no member of the segment was removed")
    assert list(segment.members.values_list("profile__external_id", flat=True)) == ["a"]


def test_import_status_gives_the_run_its_time_left_counts_from(
    manager_alice, api_key_for, django_capture_on_commit_callbacks, media
):
    """As the admin page shows it: restarted after a long stop, the time left counts from this run."""
    from django.utils import timezone
    from django.utils.dateparse import parse_datetime

    client = api_key_for(manager_alice, scopes=["ingest", "read"])
    upload = SimpleUploadedFile("people.csv", b"external_id,plan\na,pro\nb,free\n", content_type="text/csv")
    with django_capture_on_commit_callbacks(execute=True):
        import_id = client.post("/api/v1/imports/", {"file": upload}, format="multipart").json()["id"]
    record = Import.objects.get(pk=import_id)
    two_days_ago = timezone.now() - timezone.timedelta(days=2)
    ten_seconds_ago = timezone.now() - timezone.timedelta(seconds=10)
    Import.objects.filter(pk=import_id).update(
        status=Import.Status.RUNNING,
        started_at=two_days_ago,
        run_started_at=ten_seconds_ago,
        run_bytes_from=0,
        bytes_done=record.size // 2,
        heartbeat_at=timezone.now(),
        finished_at=None,
    )
    status = client.get(f"/api/v1/imports/{import_id}/").json()
    assert parse_datetime(status["started_at"]) == two_days_ago
    assert parse_datetime(status["run_started_at"]) == ten_seconds_ago
    assert 5 <= status["seconds_left"] <= 15  # from this run's pace, not from two days ago
    assert 0 < status["percent"] < 100


@pytest.mark.parametrize(
    ("content", "columns", "field", "words"),
    [
        (b"email,plan\na@x,pro\n", None, "file", "no external_id column"),
        (b"\n\n", None, "file", "The file is empty."),
        (b"external_id,plan,plan\nu1,a,b\n", None, "file", "appears twice"),
        (b"external_id,plan\nu1,pro\n", '{"tier": {"to": "level"}}', "columns", "'tier', which is not in"),
    ],
)
def test_a_file_refused_at_once_is_answered_naming_the_file_or_the_columns(
    manager_alice, api_key_for, settings, tmp_path, content, columns, field, words
):
    """A refusal of the whole file named no field (null, as for the body)."""
    settings.MEDIA_ROOT = tmp_path
    client = api_key_for(manager_alice, scopes=["ingest"])
    body = {"file": SimpleUploadedFile("people.csv", content, content_type="text/csv")}
    if columns:
        body["columns"] = columns
    response = client.post("/api/v1/imports/", body, format="multipart")
    assert response.status_code == 400
    [error] = response.json()["errors"]
    assert error["field"] == field and words in error["detail"]
    assert response.json()["detail"] == f"{field}: {error['detail']}"
    assert not Import.objects.exists() and not Profile.objects.exists()


def test_import_status_of_someone_else_is_404(
    manager_alice, manager_mallory, api_key_for, settings, tmp_path, django_capture_on_commit_callbacks
):
    settings.MEDIA_ROOT = tmp_path
    upload = SimpleUploadedFile("people.csv", b"external_id\na\n", content_type="text/csv")
    with django_capture_on_commit_callbacks(execute=True):
        response = api_key_for(manager_alice, scopes=["ingest"]).post(
            "/api/v1/imports/", {"file": upload}, format="multipart"
        )
    import_id = response.json()["id"]
    assert api_key_for(manager_mallory, scopes=["read"]).get(f"/api/v1/imports/{import_id}/").status_code == 404


def test_an_import_into_a_segment_it_cannot_reach_names_the_field_as_for_one_that_does_not_exist(
    manager_alice, manager_mallory, api_key_for, settings, tmp_path
):
    """The segment an import would change, outside the key's access or missing: the same 404,
    naming the field to fix, and nothing stored."""
    from tests.factories import SegmentFactory

    settings.MEDIA_ROOT = tmp_path
    theirs = SegmentFactory(kind="static", rules=None)
    access_grant(obj=theirs, to=manager_alice, by=None)
    client = api_key_for(manager_mallory, scopes=["ingest", "read"])
    answers = []
    for segment in (theirs.pk, 987654321):
        upload = SimpleUploadedFile("people.csv", b"external_id\na\n", content_type="text/csv")
        body = {"file": upload, "target": "add_to_segment", "segment": segment}
        response = client.post("/api/v1/imports/", body, format="multipart")
        assert response.status_code == 404, response.content
        answers.append(response.json())
    assert (
        answers[0]
        == answers[1]
        == {
            "code": "not_found",
            "detail": "segment: No segment with this id.",
            "errors": [{"field": "segment", "code": "not_found", "detail": "No segment with this id."}],
        }
    )
    assert not Import.objects.exists() and not Profile.objects.exists()


def test_import_columns_are_declared_as_json_in_multipart(
    manager_alice, api_key_for, media, django_capture_on_commit_callbacks
):
    client = api_key_for(manager_alice, scopes=["ingest"])
    upload = SimpleUploadedFile("people.csv", b"Customer,age\nc1,007\n", content_type="text/csv")
    columns = '{"Customer": {"to": "external_id"}, "age": {"type": "number"}}'
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/api/v1/imports/", {"file": upload, "columns": columns}, format="multipart")
    assert response.status_code == 202, response.json()
    assert Profile.objects.get(external_id="c1").attributes == {"age": 7}


@pytest.mark.parametrize(
    ("columns", "field"),
    [
        ('{"note": {"to": 5}}', "columns.note.to"),
        ('{"note": {"to": ["x"]}}', "columns.note.to"),
        ('{"note": {"type": "string", "to": {"a": 1}}}', "columns.note.to"),
        ('{"note": {"type": "text"}}', "columns.note.type"),
        ('{"note": 5}', "columns.note"),
    ],
)
def test_import_columns_of_the_wrong_shape_are_refused_naming_the_field(
    manager_alice, api_key_for, media, columns, field
):
    """A 'to' that was not text answered 500 (a TypeError in the column plan)."""
    client = api_key_for(manager_alice, scopes=["ingest"])
    upload = SimpleUploadedFile("people.csv", b"external_id,note\nu1,x\n", content_type="text/csv")
    response = client.post("/api/v1/imports/", {"file": upload, "columns": columns}, format="multipart")
    assert response.status_code == 400, response.content
    assert [e["field"] for e in response.json()["errors"]] == [field]
    assert not Import.objects.exists()


def test_approver_key_is_refused_imports_by_role_like_profile_writes(approver_bob, api_key_for, media):
    client = api_key_for(approver_bob, scopes=["ingest"])
    upload = SimpleUploadedFile("people.csv", b"external_id,plan\nann,pro\n", content_type="text/csv")
    response = client.post("/api/v1/imports/", {"file": upload}, format="multipart")
    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"
    assert not Import.objects.exists() and not Profile.objects.exists()


def test_times_without_a_zone_and_a_last_visit_in_the_future_are_refused_naming_the_field(manager_alice, api_key_for):
    """A time without its zone was read as UTC (an integrator's server writing its own zone would
    be off by hours); a last visit years ahead stayed for good, since it only moves forward."""
    client = api_key_for(manager_alice, scopes=["ingest"])
    events = client.post(
        "/api/v1/events/bulk/",
        {
            "events": [
                {"external_id": "a", "name": "open", "occurred_at": "2026-06-01T10:00:00"},
                {"external_id": "a", "name": "open", "occurred_at": "2026-06-01T10:00:00+02:00"},
            ]
        },
        format="json",
    ).json()
    assert [r["status"] for r in events["results"]] == ["error", "accepted"]
    assert events["results"][0]["errors"][0]["field"] == "occurred_at"
    assert "zone" in events["results"][0]["errors"][0]["detail"]
    for seen in ("2026-06-01T10:00:00", "2999-12-03T10:00:00Z"):
        answer = client.post("/api/v1/profiles/", {"external_id": "b", "last_seen_at": seen}, format="json")
        assert answer.status_code == 400, answer.json()
        assert [e["field"] for e in answer.json()["errors"]] == ["last_seen_at"]
    assert not Profile.objects.filter(external_id="b").exists()
    ok = client.post("/api/v1/profiles/", {"external_id": "b", "last_seen_at": "2026-06-01T10:00:00Z"}, format="json")
    assert ok.status_code in (200, 201)


@pytest.mark.parametrize("external_id", ["a/b", "bulk", "x/"])
def test_every_profile_written_can_be_read_by_its_external_id(manager_alice, api_key_for, external_id):
    """An external id with a slash, or the word of the bulk path, was written but never read
    (404, or the bulk upsert's 405)."""
    from urllib.parse import quote

    writer = api_key_for(manager_alice, scopes=["ingest"])
    assert writer.post("/api/v1/profiles/", {"external_id": external_id}, format="json").status_code == 201
    reader = api_key_for(manager_alice, scopes=["read"])
    for path in (quote(external_id, safe=""), external_id):
        answer = reader.get(f"/api/v1/profiles/{path}/")
        assert answer.status_code == 200, (path, answer.content)
        assert answer.json()["external_id"] == external_id
    assert writer.get(f"/api/v1/profiles/{quote(external_id, safe='')}/").status_code == 403  # ingest only


@pytest.mark.django_db(transaction=True)
def test_a_profile_another_writer_created_meanwhile_is_answered_updated_within_the_limits(manager_alice, api_key_for):
    """The call found no profile, and its insert waited for another writer's, then gave way: it
    answered 201 "created" for a profile it did not create (two calls both said so), and merged
    its attributes past the limits, which it checks only against what it creates itself."""
    import threading

    from django.db import connections, transaction

    from audiences.services.profiles import MAX_ATTRIBUTES
    from tests.locks import wait_for_a_blocked_writer

    client = api_key_for(manager_alice, scopes=["ingest"])
    answers = []

    def upsert(external_id, attributes):
        try:
            answers.append(
                client.post("/api/v1/profiles/", {"external_id": external_id, "attributes": attributes}, format="json")
            )
        finally:
            connections.close_all()

    for external_id, attributes, before in [
        ("newbie", {"plan": "pro"}, {"seen": True}),
        ("full", {"one_more": 1}, {f"a{n}": n for n in range(MAX_ATTRIBUTES)}),
    ]:
        with transaction.atomic():
            Profile.objects.create(external_id=external_id, attributes=before)  # the other writer, not committed yet
            call = threading.Thread(target=upsert, args=(external_id, attributes))
            call.start()
            assert wait_for_a_blocked_writer()
        call.join()
    updated, refused = answers
    assert (updated.status_code, updated.json()["result"]) == (200, "updated")
    assert Profile.objects.get(external_id="newbie").attributes == {"seen": True, "plan": "pro"}
    assert (refused.status_code, refused.json()["errors"][0]["field"]) == (400, "attributes")
    assert len(Profile.objects.get(external_id="full").attributes) == MAX_ATTRIBUTES


@pytest.mark.parametrize("accept", ["text/csv", "application/json", "*/*", None])
def test_the_error_file_is_answered_to_a_client_that_accepts_csv(
    manager_alice, api_key_for, media, django_capture_on_commit_callbacks, accept
):
    """The schema says it answers text/csv, which a generated client asks for: it answered 406."""
    client = api_key_for(manager_alice, scopes=["ingest"])
    upload = SimpleUploadedFile("people.csv", b"external_id,plan\na,pro\n,x\n", content_type="text/csv")
    with django_capture_on_commit_callbacks(execute=True):
        import_id = client.post("/api/v1/imports/", {"file": upload}, format="multipart").json()["id"]
    headers = {"HTTP_ACCEPT": accept} if accept else {}
    errors = client.get(f"/api/v1/imports/{import_id}/errors/", **headers)
    assert (errors.status_code, errors["Content-Type"]) == (200, "text/csv")
    assert b"external_id is empty" in b"".join(errors.streaming_content)
    missing = client.get(f"/api/v1/imports/{import_id + 1}/errors/", **headers)  # its refusals stay JSON
    assert (missing.status_code, missing["Content-Type"], missing.json()["code"]) == (
        404,
        "application/json",
        "not_found",
    )


def _import_by(client, django_capture_on_commit_callbacks, **fields):
    upload = SimpleUploadedFile(
        "people.csv", b"external_id,email\nann,ann@x.test\n,bob@x.test\n", content_type="text/csv"
    )
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/api/v1/imports/", {"file": upload, **fields}, format="multipart")
    assert response.status_code == 202, response.json()
    return Import.objects.get(pk=response.json()["id"])


def test_a_key_of_ingest_alone_reads_only_the_imports_it_uploaded(
    manager_alice, admin_erin, api_key_for, media, django_capture_on_commit_callbacks, login
):
    """The key an app ships is public: with ingest alone it read every import its user sees, and
    their error files hold whole customer rows. It reads the ones it uploaded; another is not found."""
    app_key = api_key_for(manager_alice, scopes=["ingest"])
    backend = api_key_for(manager_alice, scopes=["ingest", "read"])
    by_app = _import_by(app_key, django_capture_on_commit_callbacks)
    by_backend = _import_by(backend, django_capture_on_commit_callbacks)
    assert by_app.created_by_key.scopes == ["ingest"] and by_backend.created_by_key.scopes == ["ingest", "read"]

    assert app_key.get(f"/api/v1/imports/{by_app.pk}/").json()["rows_failed"] == 1
    assert app_key.get(f"/api/v1/imports/{by_app.pk}/errors/").status_code == 200
    other_app_key = api_key_for(manager_alice, scopes=["ingest"])  # the same user, another key
    for client, record in ((app_key, by_backend), (other_app_key, by_app)):
        for path in (f"/api/v1/imports/{record.pk}/", f"/api/v1/imports/{record.pk}/errors/"):
            response = client.get(path)
            assert (response.status_code, response.json()["code"]) == (404, "not_found")

    reader = api_key_for(manager_alice, scopes=["read"])  # a key that reads sees what its user sees
    for record in (by_app, by_backend):
        assert reader.get(f"/api/v1/imports/{record.pk}/").json()["id"] == record.pk
        assert reader.get(f"/api/v1/imports/{record.pk}/errors/").status_code == 200
    page = login(admin_erin).get("/admin/audiences/import/").content.decode()
    assert f"Import #{by_app.pk}" in page and f"Import #{by_backend.pk}" in page
    # Its page names the key that uploaded it (its name and prefix), so an administrator can trace it.
    detail = login(admin_erin).get(f"/admin/audiences/import/{by_app.pk}/change/").content.decode()
    assert str(by_app.created_by_key) in detail


def test_an_import_made_in_the_admin_is_not_read_by_a_key_of_ingest_alone(
    manager_alice, api_key_for, media, django_capture_on_commit_callbacks, login
):
    from audiences.services.imports import import_create

    upload = SimpleUploadedFile("people.csv", b"external_id\nann\n", content_type="text/csv")
    with django_capture_on_commit_callbacks(execute=True):
        record = import_create(upload=upload, by=manager_alice)
    assert record.created_by_key is None
    assert api_key_for(manager_alice, scopes=["ingest"]).get(f"/api/v1/imports/{record.pk}/").status_code == 404
    detail = login(manager_alice).get(f"/admin/audiences/import/{record.pk}/change/").content.decode()
    assert "the admin (no API key)" in detail
    assert api_key_for(manager_alice, scopes=["read"]).get(f"/api/v1/imports/{record.pk}/").status_code == 200


@pytest.mark.parametrize("target", ["add_to_segment", "replace_segment"])
def test_a_key_of_ingest_alone_may_not_change_a_segments_members_by_import(
    manager_alice, api_key_for, media, django_capture_on_commit_callbacks, target
):
    """A replace removes every member the file does not name: with the public key, anyone could
    empty a segment a campaign sends to, or add themselves to it. A key that cannot read the
    segment does not change who is in it; new_segment and profiles alone stay open to it."""
    segment = segment_create(name="VIP", kind=Segment.Kind.STATIC, by=manager_alice)
    segment.members.create(profile=ProfileFactory(external_id="zoe"))
    upload = SimpleUploadedFile("people.csv", b"external_id\nann\n", content_type="text/csv")
    body = {"file": upload, "target": target, "segment": segment.pk}
    response = api_key_for(manager_alice, scopes=["ingest"]).post("/api/v1/imports/", body, format="multipart")
    assert (response.status_code, response.json()["code"]) == (403, "insufficient_scope"), response.json()
    assert response.json()["errors"][0]["field"] == "target"
    assert "read" in response.json()["detail"]
    assert not Import.objects.exists() and not Profile.objects.filter(external_id="ann").exists()
    assert list(segment.members.values_list("profile__external_id", flat=True)) == ["zoe"]

    backend = api_key_for(manager_alice, scopes=["ingest", "read"])
    _import_by(backend, django_capture_on_commit_callbacks, target=target, segment=segment.pk)
    expected = {"ann"} if target == "replace_segment" else {"ann", "zoe"}
    assert set(segment.members.values_list("profile__external_id", flat=True)) == expected
    app_key = api_key_for(manager_alice, scopes=["ingest"])
    _import_by(app_key, django_capture_on_commit_callbacks, target="new_segment", segment_name="Fresh")
    _import_by(app_key, django_capture_on_commit_callbacks)


# Digits of other scripts: full-width (as a Japanese keyboard types them) and Arabic-Indic.
OTHER_DIGITS = ["１９７０-01-01T00:00:00Z", "2026-06-0١T10:00:00+0٢:00"]


@pytest.mark.parametrize("when", OTHER_DIGITS)
def test_times_written_with_digits_of_other_scripts_are_refused_naming_the_field(manager_alice, api_key_for, when):
    """Django's ISO 8601 reader matches any script's digits: "１９７０" was read as the year 1970."""
    client = api_key_for(manager_alice, scopes=["ingest"])
    events = client.post(
        "/api/v1/events/bulk/", {"events": [{"external_id": "a", "name": "open", "occurred_at": when}]}, format="json"
    ).json()
    assert events["results"][0]["status"] == "error"
    assert events["results"][0]["errors"] == [
        {"field": "occurred_at", "code": "invalid", "detail": JsonDateTimeField.default_error_messages["invalid"]}
    ]
    answer = client.post("/api/v1/profiles/", {"external_id": "b", "last_seen_at": when}, format="json")
    assert answer.status_code == 400, answer.json()
    assert [(e["field"], e["code"]) for e in answer.json()["errors"]] == [("last_seen_at", "invalid")]
    assert not Event.objects.exists() and not Profile.objects.exists()


def test_an_imports_segment_written_with_digits_of_other_scripts_is_refused_naming_the_field(
    manager_alice, api_key_for, media
):
    """Python's int() reads any script's digits: "٣" named segment 3."""
    from tests.factories import SegmentFactory

    segment = SegmentFactory(kind="static", rules=None)
    access_grant(obj=segment, to=manager_alice, by=None)
    client = api_key_for(manager_alice, scopes=["ingest", "read"])
    arabic = str(segment.pk).translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩"))
    for written in (arabic, str(segment.pk).translate(str.maketrans("0123456789", "０１２３４５６７８９"))):
        upload = SimpleUploadedFile("people.csv", b"external_id\na\n", content_type="text/csv")
        body = {"file": upload, "target": "add_to_segment", "segment": written}
        response = client.post("/api/v1/imports/", body, format="multipart")
        assert response.status_code == 400, response.content
        assert response.json()["errors"] == [
            {"field": "segment", "code": "invalid", "detail": "A valid integer is required."}
        ]
    assert not Import.objects.exists()


def test_an_imports_segment_written_with_an_underscore_is_refused_naming_the_field(manager_alice, api_key_for, media):
    """Python's int() reads an underscore between digits: "0_3" named segment 3."""
    from tests.factories import SegmentFactory

    segment = SegmentFactory(kind="static", rules=None)
    access_grant(obj=segment, to=manager_alice, by=None)
    client = api_key_for(manager_alice, scopes=["ingest", "read"])
    upload = SimpleUploadedFile("people.csv", b"external_id\na\n", content_type="text/csv")
    body = {"file": upload, "target": "add_to_segment", "segment": f"0_{segment.pk}"}
    response = client.post("/api/v1/imports/", body, format="multipart")
    assert response.status_code == 400, response.content
    assert response.json()["errors"] == [
        {"field": "segment", "code": "invalid", "detail": "A valid integer is required."}
    ]
    assert not Import.objects.exists()


@pytest.mark.parametrize(
    "query",
    # With digits of other scripts, or with an underscore.
    ["limit=٣", "offset=١", "sample=٣", "limit=1_0", "offset=0_1", "sample=1_0"],
)
def test_query_numbers_written_with_digits_of_other_scripts_are_refused_naming_the_parameter(
    manager_alice, api_key_for, query
):
    segment = segment_create(by=manager_alice, name="Pro", kind="rules", rules=PRO)
    client = api_key_for(manager_alice, scopes=["read"])
    url = f"/api/v1/segments/{segment.pk}/preview/" if query.startswith("sample") else "/api/v1/segments/"
    response = client.get(f"{url}?{query}")
    assert response.status_code == 400, response.content
    assert [e["field"] for e in response.json()["errors"]] == [query.partition("=")[0]]


def test_segment_preview_of_rules_broken_since_names_the_json_path(manager_alice, api_key_for):
    """The words the admin shows for a broken rule ("Group 2, condition 1 (…)") are the admin's:
    an API client is told the rule's JSON path."""
    segment = segment_create(name="Pro", rules=PRO, by=manager_alice)
    broken = {"all": [PRO, {"any": [{"segment": 987654, "member": True}]}]}
    Segment.objects.filter(pk=segment.pk).update(rules=broken)
    response = api_key_for(manager_alice, scopes=["read"]).get(f"/api/v1/segments/{segment.pk}/preview/")
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["errors"][0]["field"] == "rules"
    assert body["errors"][0]["detail"] == "rules: there is no segment 987654"
    assert "Group" not in body["detail"] and "ondition" not in body["detail"]


def test_segment_preview_of_a_saved_number_rule_holding_text_answers_400_naming_the_condition(
    manager_alice, api_key_for
):
    """Rules saved before a check existed (a data migration, an older release) are input like any:
    a number condition holding "old" is refused naming it, never a 500 from Decimal("old")."""
    segment = segment_create(name="Pro", rules=PRO, by=manager_alice)
    broken = {"all": [PRO, {"attribute": "age", "type": "number", "op": "gt", "value": "old"}]}
    Segment.objects.filter(pk=segment.pk).update(rules=broken)
    response = api_key_for(manager_alice, scopes=["read"]).get(f"/api/v1/segments/{segment.pk}/preview/")
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["errors"][0]["field"] == "rules"
    assert body["errors"][0]["detail"] == "rules.all[1].value: expected a number, got a string"


def test_an_import_whose_file_name_is_not_utf8_is_refused_naming_the_file(
    manager_alice, api_key_for, settings, tmp_path
):
    """Django leaves out a part whose header it cannot read: the answer said the file was missing."""
    from django.test.client import BOUNDARY

    from audiences.models import Import

    settings.MEDIA_ROOT = tmp_path
    client = api_key_for(manager_alice, scopes=["ingest"])
    b = BOUNDARY.encode()
    body = (
        b'--%s\r\nContent-Disposition: form-data; name="target"\r\n\r\nprofiles\r\n'
        b'--%s\r\nContent-Disposition: form-data; name="file"; filename="caf\xe9.csv"\r\n'
        b"Content-Type: text/csv\r\n\r\nexternal_id\r\nann\r\n--%s--\r\n" % (b, b, b)
    )
    response = client.generic(
        "POST", "/api/v1/imports/", body, content_type=f"multipart/form-data; boundary={BOUNDARY}"
    )
    assert response.status_code == 400, response.content
    [error] = [e for e in response.json()["errors"] if e["field"] == "file"]
    assert "not UTF-8" in error["detail"] and "No file" not in error["detail"]
    assert not Import.objects.exists()
