"""The operator's commands and processes with a database gone or not migrated: one line that says
what to do (start it, or `manage.py migrate`), never a traceback."""

import io
import json
import logging
import os
import socket
import subprocess
import sys
import time

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, connections

from tests.processes import ROOT, free_port, manage

COMMANDS = [["retention_apply"], ["rotate_encryption_key"], ["instance_claim", "--yes"], ["status"]]

postgresql_only = pytest.mark.skipif(
    connections["default"].vendor != "postgresql", reason="renames tables inside the test's transaction"
)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_a_command_says_in_one_line_that_the_database_does_not_answer(command):
    env = {**os.environ, "DATABASE_URL": f"postgres://pushdesk:db-password@127.0.0.1:{free_port()}/pushdesk"}
    result = manage(command, env, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "db-password" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "the database does not answer" in lines[0], result.stderr


@pytest.fixture
def silent_database():
    """A PostgreSQL address that takes connections and never answers (a server hung, or stopped
    with SIGSTOP during a failover): the kernel completes each connection, nobody reads it."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"postgres://pushdesk:db-password@127.0.0.1:{listener.getsockname()[1]}/pushdesk"


def test_status_check_says_in_seconds_that_a_database_that_never_answers_does_not_answer(silent_database):
    """It waited for ever: a monitoring check hung instead of failing."""
    env = {**os.environ, "DATABASE_URL": silent_database}
    started = time.monotonic()
    result = manage(["status", "--check"], env, timeout=60)
    assert time.monotonic() - started < 30
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "db-password" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "the database does not answer" in lines[0], result.stderr


READYZ = """
import django
django.setup()
from django.test import Client
answer = Client().get("/readyz", HTTP_HOST="10.0.0.7")
print(answer.status_code, answer.content.decode())
"""


def test_readyz_answers_503_in_seconds_when_the_database_never_answers(silent_database):
    """/readyz waited for ever, holding a web thread per probe, until the web process had none left."""
    env = {**os.environ, "DATABASE_URL": silent_database, "DJANGO_SETTINGS_MODULE": "config.settings"}
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", READYZ], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert time.monotonic() - started < 30
    assert result.stdout.startswith("503 "), (result.stdout, result.stderr)
    assert json.loads(result.stdout.split(" ", 1)[1])["problems"]["database"].startswith("does not answer")


# Django's own and those that leave the database's errors to manage.py, as the guide runs them.
ANY_COMMANDS = [
    ["migrate"],
    ["clearsessions"],
    ["createsuperuser", "--noinput", "--username", "erin", "--email", "erin@example.com"],
    ["qinfo"],
    ["demo_setup"],
]


@pytest.mark.parametrize("command", ANY_COMMANDS, ids=lambda c: c[0])
def test_any_command_says_in_one_line_that_the_database_does_not_answer(command):
    env = {**os.environ, "DATABASE_URL": f"postgres://pushdesk:db-password@127.0.0.1:{free_port()}/pushdesk"}
    result = manage(command, env, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "db-password" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("CommandError: the database does not answer"), result.stderr


def test_traceback_shows_the_database_not_answering_whole():
    env = {**os.environ, "DATABASE_URL": f"postgres://pushdesk:db-password@127.0.0.1:{free_port()}/pushdesk"}
    result = manage(["clearsessions", "--traceback"], env, timeout=60)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "OperationalError" in result.stderr


@pytest.fixture
def not_migrated(db):
    """A database whose tables are not there (rolled back with the test's transaction)."""
    with connection.cursor() as cursor:
        for table in ("operations_instance", "delivery_app", "delivery_dispatch", "django_q_schedule"):
            cursor.execute(f"ALTER TABLE {table} RENAME TO {table}_elsewhere")


@postgresql_only
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_a_command_on_a_database_not_migrated_says_to_migrate(not_migrated, command):
    with pytest.raises(CommandError) as refused:
        call_command(*command, stdout=io.StringIO())
    message = str(refused.value)
    assert "\n" not in message and "does not answer" not in message
    assert "manage.py migrate" in message, message


@postgresql_only
def test_the_stream_sender_on_a_database_not_migrated_says_to_migrate(not_migrated):
    from django.db import DatabaseError

    from delivery.services.stream_senders import _outage
    from operations.instance import instance_problem

    with pytest.raises(DatabaseError) as failed:
        with connection.cursor() as cursor:
            cursor.execute("SAVEPOINT probe")
            try:
                instance_problem()
            finally:
                cursor.execute("ROLLBACK TO SAVEPOINT probe")
    said = _outage(failed.value)
    assert said is not None and "not migrated" in said and "manage.py migrate" in said


def test_the_workers_say_when_migrations_are_not_applied(db, caplog):
    from operations.management.commands.qcluster import _ensure_queue_and_database_answer

    with connection.cursor() as cursor:  # rolled back with the test's transaction
        cursor.execute("DELETE FROM django_migrations WHERE app = 'operations'")
    with caplog.at_level(logging.ERROR, logger="pushdesk.worker"):
        _ensure_queue_and_database_answer()
    assert any(
        "migrations are not applied" in r.getMessage() and "manage.py migrate" in r.getMessage() for r in caplog.records
    ), caplog.text


def test_a_sqlite_database_that_is_locked_answers_and_one_that_cannot_be_opened_does_not():
    """SQLite's errors carry no SQLSTATE: a busy database is an error of its own (its traceback
    kept), a file that cannot be opened is a database that does not answer."""
    from django.db import OperationalError

    from operations.database import database_problem

    assert database_problem(OperationalError("database is locked")) is None
    assert database_problem(OperationalError("unable to open database file")).startswith("the database does not answer")


def test_the_workers_say_at_start_when_a_frequency_cap_outlasts_the_deliveries_kept(db, caplog, settings):
    """PUSHDESK_RETENTION_DELIVERY_DAYS is read when a process starts: a lowered one is said then,
    naming the cap and both figures, rather than when retention next refuses to run."""
    from delivery.models import DeliveryRules
    from operations.management.commands.qcluster import (
        _ensure_queue_and_database_answer,
        _say_frequency_caps_outlasting_retention,
    )
    from tests.factories import AppFactory

    app = AppFactory(name="Shop")
    DeliveryRules.objects.create(app=app, frequency_cap=1, frequency_window_hours=24 * 30)
    with caplog.at_level(logging.ERROR, logger="pushdesk.worker"):
        _say_frequency_caps_outlasting_retention()
    assert not caplog.records  # kept 180 days: the cap's 30 days are within

    settings.PUSHDESK_RETENTION_DELIVERY_DAYS = 7  # lowered, and the workers restarted with it
    with caplog.at_level(logging.ERROR, logger="pushdesk.worker"):
        _ensure_queue_and_database_answer()
    (said,) = [r.getMessage() for r in caplog.records]
    assert "retention will refuse to run" in said and f"'Shop' (id {app.pk})" in said
    assert "720 hours" in said and "PUSHDESK_RETENTION_DELIVERY_DAYS=7 (168 hours)" in said, said
