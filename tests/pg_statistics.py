"""PostgreSQL's statistics in tests: what the planner believes of a table, and what a transaction read."""

from django.db import connection


def statistics_say_empty(table: str) -> None:
    """Make the planner believe ``table`` holds no row, as a vacuum of an emptied table leaves it
    (pages, no rows) until the next analyze. In the test's transaction: rolled back with it."""
    with connection.cursor() as cursor:
        cursor.execute("UPDATE pg_class SET reltuples = 0, relpages = 10 WHERE oid = %s::regclass", [table])


def rows_read(table: str) -> int:
    """The rows of ``table`` this transaction has read so far, by scans and through indexes."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT seq_tup_read + COALESCE(idx_tup_fetch, 0) FROM pg_stat_xact_user_tables WHERE relid = %s::regclass",
            [table],
        )
        return cursor.fetchone()[0]
