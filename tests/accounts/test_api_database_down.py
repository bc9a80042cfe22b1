"""The API while PostgreSQL does not answer: 503 with when to try again, and a line a minute in the log."""

import logging

import psycopg
from django.db import connection

from accounts import api, api_route, authentication
from config import reporting


def _database_gone(*args, **kwargs):
    """What reading a key raises while PostgreSQL is down: Django's error, from the driver's refusal."""
    with connection.wrap_database_errors:
        psycopg.connect("host=127.0.0.1 port=1 dbname=pushdesk connect_timeout=5")


def test_calls_answer_503_with_a_retry_and_the_log_says_it_once(api_key_for, manager_alice, caplog, monkeypatch):
    """Each call answered 500 and logged the driver's traceback, a hundred lines, for as long as the
    database was down (a restart, a failover)."""
    caplog.set_level(logging.INFO)
    client = api_key_for(manager_alice, scopes=("ingest", "read", "trigger"))
    monkeypatch.setattr(api, "_calls_refused", reporting.SaidOnceAMinute())
    monkeypatch.setattr(authentication, "cached_key", _database_gone)
    monkeypatch.setattr(api_route, "cached_key", _database_gone)
    calls = [
        client.post("/api/v1/devices/", {"app": 1, "platform": "ios", "token": "a" * 64}, format="json"),
        client.get("/api/v1/me/"),
        client.post("/api/v1/campaigns/1/trigger/", {"recipients": [{"external_id": "x"}]}, format="json"),
    ]
    for answer in calls:
        assert answer.status_code == 503, answer.content
        assert answer.json() == {
            "code": "service_unavailable",
            "detail": "Pushdesk cannot take calls for a moment (its database does not answer).",
            "retry_after": 10,
        }
        assert answer["Retry-After"] == "10"
    [line] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert line.exc_info is None and "Traceback" not in caplog.text
    assert line.getMessage().startswith(
        "API calls answer 503: the database does not answer (OperationalError: connection failed: "
    )
    assert line.getMessage().endswith("start it, or check DATABASE_URL")


def test_an_error_the_database_answers_with_keeps_its_traceback(api_key_for, manager_alice, caplog, monkeypatch):
    """Only the database gone is said in a line: any other error (a bug's query) is a 500 with its traceback."""
    from django.db import ProgrammingError

    client = api_key_for(manager_alice, scopes=("read",))

    def bug(*args, **kwargs):
        raise ProgrammingError("column nope does not exist")

    monkeypatch.setattr(authentication, "cached_key", bug)
    client.raise_request_exception = False
    caplog.set_level(logging.INFO)
    assert client.get("/api/v1/me/").status_code == 500
    [line] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert line.exc_info[0] is ProgrammingError


def test_a_trigger_whose_handler_meets_the_database_gone_answers_503(api_key_for, manager_alice, caplog, monkeypatch):
    """The trigger's own route held its key in memory, so the database going away was met in the
    handler, which the route let through as a 500 with the driver's traceback."""
    from campaigns.api import CampaignTriggerView

    client = api_key_for(manager_alice, scopes=("trigger",))
    monkeypatch.setattr(api, "_calls_refused", reporting.SaidOnceAMinute())
    monkeypatch.setattr(CampaignTriggerView, "post", _database_gone)
    caplog.set_level(logging.INFO)
    answer = client.post("/api/v1/campaigns/1/trigger/", {"recipients": [{"external_id": "x"}]}, format="json")
    assert answer.status_code == 503 and answer.json()["code"] == "service_unavailable"
    assert answer["Retry-After"] == "10"
    [line] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert line.name == "pushdesk.api" and "Traceback" not in caplog.text


def test_the_line_comes_again_a_minute_later_with_the_calls_refused_meanwhile(
    api_key_for, manager_alice, caplog, monkeypatch
):
    client = api_key_for(manager_alice, scopes=("read",))
    monkeypatch.setattr(api, "_calls_refused", reporting.SaidOnceAMinute())
    monkeypatch.setattr(authentication, "cached_key", _database_gone)
    clock = [1000.0]
    monkeypatch.setattr(reporting.time, "monotonic", lambda: clock[0])
    caplog.set_level(logging.INFO)
    for _ in range(3):
        assert client.get("/api/v1/me/").status_code == 503
    clock[0] += 59
    assert client.get("/api/v1/me/").status_code == 503
    clock[0] += 2  # a minute after the first line
    assert client.get("/api/v1/me/").status_code == 503
    clock[0] += 61  # the one call since the last line is the one the line is said for
    assert client.get("/api/v1/me/").status_code == 503
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(lines) == 3
    assert all(line.startswith("API calls answer 503: the database does not answer (") for line in lines)
    assert "since the last line" not in lines[0]
    assert lines[1].endswith("start it, or check DATABASE_URL (4 calls refused since the last line)")
    assert lines[2].endswith("start it, or check DATABASE_URL (1 calls refused since the last line)")
