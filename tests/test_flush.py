"""The tests' own flush between transactional tests (tests/flush.py): it empties every table, waits
for other sessions as TRUNCATE does, and truncates what is large."""

import threading

import psycopg
import pytest
from django.core.management.color import no_style
from django.db import connection, connections

from audiences.models import Profile
from tests.factories import UserFactory
from tests.flush import TRUNCATE_ABOVE

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connections["default"].vendor != "postgresql", reason="the PostgreSQL flush"),
]


def _tables() -> list[str]:
    return connection.introspection.django_table_names(only_existing=True, include_views=False)


def _flush() -> None:
    connection.ops.execute_sql_flush(connection.ops.sql_flush(no_style(), _tables()))


def _file_of(table: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT relfilenode FROM pg_class WHERE oid = %s::regclass", [table])
        return cursor.fetchone()[0]


def _rows(table: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute(f'SELECT count(*) FROM "{table}"')  # noqa: S608 (a table of ours)
        return cursor.fetchone()[0]


def _size(table: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_total_relation_size(%s::regclass)", [table])
        return cursor.fetchone()[0]


def test_the_flush_deletes_from_small_tables_and_truncates_large_ones():
    users = UserFactory._meta.model._meta.db_table
    profiles = Profile._meta.db_table
    with connection.cursor() as cursor:  # earlier tests' dead rows gone: the users' table is small
        cursor.execute(f'TRUNCATE "{users}" CASCADE')
    UserFactory(username="flushed", role="Manager")
    Profile.objects.bulk_create(Profile(external_id=f"p{i}", attributes={"padding": "x" * 200}) for i in range(6000))
    assert _size(profiles) > TRUNCATE_ABOVE >= _size(users)  # the test's premise
    profiles_file, users_file = _file_of(profiles), _file_of(users)

    assert connection.ops.sql_flush(no_style(), _tables())[0].startswith("LOCK TABLE")
    _flush()

    assert all(_rows(table) == 0 for table in _tables())
    assert _file_of(profiles) != profiles_file  # truncated: new, empty files
    assert _file_of(users) == users_file  # deleted from: the same files


def test_the_flush_waits_for_another_session_writing_and_leaves_nothing_it_wrote():
    table = Profile._meta.db_table
    done = threading.Event()
    with psycopg.connect(**connection.get_connection_params()) as other:
        other.execute(
            f'INSERT INTO "{table}" (external_id, attributes, timezone, locale, created_at, updated_at) '  # noqa: S608
            "VALUES ('written-meanwhile', '{}', '', '', now(), now())"
        )

        def flush() -> None:
            try:
                _flush()
            finally:
                connections.close_all()
                done.set()

        thread = threading.Thread(target=flush)
        thread.start()
        assert not done.wait(0.5)  # the other session's transaction holds the table
        other.commit()
    assert done.wait(30)
    thread.join()
    assert _rows(table) == 0


def test_a_flush_that_resets_sequences_is_djangos_truncate():
    statements = connection.ops.sql_flush(no_style(), _tables(), reset_sequences=True)
    assert statements[0].startswith("TRUNCATE") and "RESTART IDENTITY" in statements[0]
