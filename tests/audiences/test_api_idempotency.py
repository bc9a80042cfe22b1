"""POST /api/v1/events/bulk/ with an Idempotency-Key: a call sent again replays its first answer."""

import datetime as dt

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from audiences.models import Event, EventBulkRequest, Profile
from tests.factories import ProfileFactory

pytestmark = pytest.mark.django_db

URL = "/api/v1/events/bulk/"
BODY = {
    "events": [
        {"external_id": "zoe", "name": "purchase", "properties": {"amount": 5}, "occurred_at": "2026-06-01T10:00:00Z"},
        {"external_id": "newcomer", "name": "app_open", "occurred_at": "2026-06-01T10:00:00Z"},
        {"external_id": "zoe", "name": "purchase", "occurred_at": "yesterday"},
    ]
}


@pytest.fixture
def ingest(manager_alice, api_key_for):
    ProfileFactory(external_id="zoe")
    return api_key_for(manager_alice, scopes=["ingest"])


def _writes(queries) -> list[str]:
    return [q["sql"] for q in queries if q["sql"].lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE", "WITH"))]


@pytest.mark.embedded
def test_same_key_and_body_replays_the_first_answer_and_stores_nothing_more(ingest):
    first = ingest.post(URL, BODY, format="json", HTTP_IDEMPOTENCY_KEY="batch-1")
    assert first.status_code == 200, first.content[:300]
    assert [r["status"] for r in first.json()["results"]] == ["accepted", "accepted", "error"]
    assert not first.has_header("Idempotent-Replayed")
    with CaptureQueriesContext(connection) as replay:
        again = ingest.post(URL, BODY, format="json", HTTP_IDEMPOTENCY_KEY="batch-1")
    assert again.status_code == 200
    assert again.json() == first.json()  # the per-item results, ids and errors included
    assert again["Idempotent-Replayed"] == "true"
    assert Event.objects.count() == 2 and Profile.objects.count() == 2
    # What it writes besides its key's record: only the key's ingest rate (in the database on SQLite).
    assert not [
        sql for sql in _writes(replay.captured_queries) if "eventbulkrequest" not in sql and "ratebucket" not in sql
    ]
    record = EventBulkRequest.objects.get()
    assert record.finished and record.response_status == 200 and record.idempotency_key == "batch-1"


def test_a_body_refused_as_a_whole_is_replayed_too(ingest):
    """An answer about the body is the body's for good, as on the trigger: kept and replayed."""
    body = {"events": "not a list"}
    first = ingest.post(URL, body, format="json", HTTP_IDEMPOTENCY_KEY="bad")
    again = ingest.post(URL, body, format="json", HTTP_IDEMPOTENCY_KEY="bad")
    assert first.status_code == again.status_code == 400
    assert first.json() == again.json() and first.json()["errors"][0]["field"] == "events"
    assert again["Idempotent-Replayed"] == "true"


def test_same_key_with_another_body_is_422(ingest):
    assert ingest.post(URL, BODY, format="json", HTTP_IDEMPOTENCY_KEY="k").status_code == 200
    other = {"events": [{"external_id": "zoe", "name": "refund", "occurred_at": "2026-06-01T10:00:00Z"}]}
    response = ingest.post(URL, other, format="json", HTTP_IDEMPOTENCY_KEY="k")
    assert response.status_code == 422
    assert response.json()["code"] == "idempotency_key_reused"
    assert "Idempotency-Key" in response.json()["detail"]
    assert not Event.objects.filter(name="refund").exists()


@pytest.mark.embedded
def test_same_key_still_running_is_409_and_runs_once_its_claim_is_abandoned(ingest, manager_alice):
    from accounts.idempotency import request_body_hash

    key = manager_alice.api_keys.get()
    record = EventBulkRequest.objects.create(
        api_key=key, user=key.user, idempotency_key="busy", body_hash=request_body_hash(BODY)
    )
    response = ingest.post(URL, BODY, format="json", HTTP_IDEMPOTENCY_KEY="busy")
    assert response.status_code == 409
    assert response.json()["code"] == "idempotency_in_progress"
    assert not Event.objects.exists()
    # A claim older than a request can run belonged to one that died: the retry runs.
    EventBulkRequest.objects.filter(pk=record.pk).update(created_at=timezone.now() - dt.timedelta(minutes=6))
    response = ingest.post(URL, BODY, format="json", HTTP_IDEMPOTENCY_KEY="busy")
    assert response.status_code == 200 and not response.has_header("Idempotent-Replayed")
    assert Event.objects.count() == 2
    assert EventBulkRequest.objects.get().finished


def test_a_retry_under_the_user_s_rotated_key_replays_the_first_answer(ingest, manager_alice, api_key_for):
    """An integrator rotating keys (a new key for the same user, the old one revoked) retries the
    call in flight at the switch with its Idempotency-Key: the user's keys share the keys, so the
    events are written once, and another body under the new key is refused as under the old one."""
    from accounts.services import api_key_revoke

    first = ingest.post(URL, BODY, format="json", HTTP_IDEMPOTENCY_KEY="batch-1")
    assert first.status_code == 200
    rotated = api_key_for(manager_alice, scopes=["ingest"])
    api_key_revoke(key_id=manager_alice.api_keys.order_by("created_at", "pk").first().pk, by=manager_alice)
    again = rotated.post(URL, BODY, format="json", HTTP_IDEMPOTENCY_KEY="batch-1")
    assert again.status_code == 200 and again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true"
    other = {"events": [{"external_id": "zoe", "name": "refund", "occurred_at": "2026-06-01T10:00:00Z"}]}
    refused = rotated.post(URL, other, format="json", HTTP_IDEMPOTENCY_KEY="batch-1")
    assert refused.status_code == 422 and refused.json()["code"] == "idempotency_key_reused"
    assert Event.objects.count() == 2 and EventBulkRequest.objects.count() == 1


def test_two_keys_of_one_user_share_their_idempotency_keys(manager_alice, api_key_for):
    ProfileFactory(external_id="zoe")
    backend, worker = api_key_for(manager_alice, scopes=["ingest"]), api_key_for(manager_alice, scopes=["ingest"])
    first = backend.post(URL, BODY, format="json", HTTP_IDEMPOTENCY_KEY="batch-1")
    second = worker.post(URL, BODY, format="json", HTTP_IDEMPOTENCY_KEY="batch-1")
    assert first.status_code == second.status_code == 200
    assert second["Idempotent-Replayed"] == "true" and second.json() == first.json()
    assert Event.objects.count() == 2 and EventBulkRequest.objects.count() == 1
    other = {"events": [{"external_id": "zoe", "name": "refund", "occurred_at": "2026-06-01T10:00:00Z"}]}
    assert worker.post(URL, other, format="json", HTTP_IDEMPOTENCY_KEY="batch-2").status_code == 200
    assert backend.post(URL, BODY, format="json", HTTP_IDEMPOTENCY_KEY="batch-2").status_code == 422


def test_a_key_of_another_user_gets_no_answer_of_the_first_user(ingest, manager_mallory, api_key_for):
    """Another user's key with the same Idempotency-Key and body runs its own call: the first
    user's answer (their event ids) is not theirs to read."""
    first = ingest.post(URL, BODY, format="json", HTTP_IDEMPOTENCY_KEY="batch-1")
    mallory = api_key_for(manager_mallory, scopes=["ingest"])
    theirs = mallory.post(URL, BODY, format="json", HTTP_IDEMPOTENCY_KEY="batch-1")
    assert theirs.status_code == 200 and not theirs.has_header("Idempotent-Replayed")
    first_ids = {r.get("id") for r in first.json()["results"]} - {None}
    assert not first_ids & {r.get("id") for r in theirs.json()["results"]}
    assert Event.objects.count() == 4


def test_a_key_whose_role_may_not_write_events_is_refused_and_leaves_no_claim(approver_bob, api_key_for):
    client = api_key_for(approver_bob, scopes=["ingest"])
    for _ in range(2):  # the refusal frees the key: the second call is refused again, not replayed or 409
        response = client.post(URL, BODY, format="json", HTTP_IDEMPOTENCY_KEY="batch-1")
        assert response.status_code == 403 and not response.has_header("Idempotent-Replayed")
    assert not Event.objects.exists() and not EventBulkRequest.objects.exists()


@pytest.mark.embedded
@pytest.mark.parametrize("key", ["a\x00b", "a\x01b", "a\x7fb", "a\tb", "a\x1bb", "k" * 201])
def test_an_idempotency_key_with_a_control_character_or_too_long_is_400_naming_the_header(ingest, key):
    response = ingest.post(URL, BODY, format="json", HTTP_IDEMPOTENCY_KEY=key)
    assert response.status_code == 400, response.content[:300]
    assert [error["field"] for error in response.json()["errors"]] == ["Idempotency-Key"]
    assert not EventBulkRequest.objects.exists() and not Event.objects.exists()


@pytest.mark.parametrize("key", ["", "   "])
def test_an_empty_idempotency_key_is_400_naming_the_header(ingest, key):
    response = ingest.post(URL, BODY, format="json", HTTP_IDEMPOTENCY_KEY=key)
    assert response.status_code == 400, response.content[:300]
    assert [error["field"] for error in response.json()["errors"]] == ["Idempotency-Key"]
    assert not EventBulkRequest.objects.exists() and not Event.objects.exists()


def test_an_idempotency_key_of_printable_text_beyond_ascii_is_taken_trimmed(ingest):
    response = ingest.post(URL, BODY, format="json", HTTP_IDEMPOTENCY_KEY=" commande-é ")
    assert response.status_code == 200, response.content[:300]
    assert EventBulkRequest.objects.get().idempotency_key == "commande-é"
    again = ingest.post(URL, BODY, format="json", HTTP_IDEMPOTENCY_KEY="commande-é")
    assert again["Idempotent-Replayed"] == "true" and Event.objects.count() == 2


@pytest.mark.embedded
def test_a_call_without_the_header_runs_the_statements_it_ran_before(ingest):
    """The events path is the hot one: without an Idempotency-Key it reads and writes nothing more
    (6 statements on PostgreSQL, as before the header was taken; 8 on SQLite, and 5 more there for the
    key's ingest rate, whose bucket is kept in the database without Redis)."""

    def body(minute):
        return {
            "events": [
                {"external_id": "zoe", "name": "app_open", "occurred_at": f"2026-06-01T10:0{minute}:00Z"},
                {"external_id": f"new-{minute}", "name": "app_open", "occurred_at": "2026-06-01T10:00:00Z"},
            ]
        }

    assert ingest.post(URL, body(0), format="json").status_code == 200  # the key and its stamps read once
    with CaptureQueriesContext(connection) as call:
        assert ingest.post(URL, body(1), format="json").status_code == 200
    statements = [q["sql"] for q in call.captured_queries]
    assert len(statements) == {"postgresql": 6, "sqlite": 8 + 5}[connection.vendor], statements
    assert not [sql for sql in statements if "eventbulkrequest" in sql]
    assert not EventBulkRequest.objects.exists()
