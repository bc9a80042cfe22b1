"""The PostgreSQL backend's health check: no round trip for a connection nothing happened to."""

import time

import psycopg
import pytest
from django.db import connection, connections

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connections["default"].vendor != "postgresql", reason="the PostgreSQL backend"),
]


def _last_query(pid: int) -> str:
    """What the server last ran for that session, read over a connection of its own."""
    with psycopg.connect(**connection.get_connection_params(), autocommit=True) as other:
        return other.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()[0]


def test_an_idle_connection_is_usable_without_asking_the_server():
    with connection.cursor() as cursor:
        cursor.execute("SELECT 'the last statement'")
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    assert connection.is_usable()
    assert _last_query(pid) == "SELECT pg_backend_pid()"  # no SELECT 1 reached the server


def test_a_connection_the_server_ended_is_found_unusable_before_a_request_uses_it():
    connection.ensure_connection()
    pid = connection.connection.info.backend_pid
    with psycopg.connect(**connection.get_connection_params(), autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", [pid])
    deadline = time.monotonic() + 5
    while connection.is_usable() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not connection.is_usable()
    connection.close()
    with connection.cursor() as cursor:  # Django opens a new one
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)


def test_a_connection_left_in_a_transaction_is_asked():
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    connection.connection.execute("BEGIN")
    try:
        assert connection.is_usable()
        assert _last_query(pid) == "SELECT 1"
    finally:
        connection.connection.execute("ROLLBACK")


def test_an_integer_list_travels_as_an_array_literal_postgresql_reads_exactly():
    from config.db import int_array

    ids = [2**63 - 1, -(2**63), 0, 42, 42]
    with connection.cursor() as cursor:
        cursor.execute("SELECT unnest(%s::bigint[])", [int_array(ids)])
        assert [row[0] for row in cursor.fetchall()] == ids
        cursor.execute("SELECT cardinality(%s::bigint[])", [int_array([])])
        assert cursor.fetchone()[0] == 0
    with pytest.raises(ValueError):
        int_array(["1}, {2"])  # only integers reach the literal


def test_a_text_list_travels_as_an_array_literal_postgresql_reads_exactly():
    from config.db import text_array

    texts = ['a"b', "c\\d", "e,f", "{g}", "NULL", "", " h ", "é 😀", '\\"', "x'y"]
    with connection.cursor() as cursor:
        cursor.execute("SELECT unnest(%s::text[])", [text_array(texts)])
        assert [row[0] for row in cursor.fetchall()] == texts
        cursor.execute("SELECT cardinality(%s::text[])", [text_array([])])
        assert cursor.fetchone()[0] == 0


def test_a_long_prepared_statement_is_converted_once_per_process(monkeypatch):
    """psycopg turns a statement's ``%s`` into ``$1`` … by scanning its text, and keeps the result
    only for texts up to 4,096 bytes: the trigger's append (about 4,800) was scanned on every call,
    some 50 µs of the web's CPU. The hot path's cursor keeps each fixed statement's conversion."""
    import psycopg._queries

    from config.db import prepared_cursor

    scanned = []
    scan = psycopg._queries._query2pg_nocache
    monkeypatch.setattr(psycopg._queries, "_query2pg_nocache", lambda *args: scanned.append(1) or scan(*args))
    padding = " ".join(["/* a statement longer than psycopg keeps */"] * 120)
    statement = f"SELECT %s::int + %s::int, %s::text {padding}"
    assert len(statement) > psycopg._queries.MAX_CACHED_STATEMENT_LENGTH
    with prepared_cursor() as cursor:
        for n in range(8):
            cursor.execute(statement, [n, 1, "%s"])
            assert cursor.fetchone() == (n + 1, "%s")
    with prepared_cursor() as cursor:  # a cursor after: the conversion is the process's
        cursor.execute(statement, [41, 1, "x"])
        assert cursor.fetchone() == (42, "x")
    assert len(scanned) <= 1
