"""The tests' flush between transactional tests on PostgreSQL: locks, then deletes.

Django empties the database after each transactional test (``transaction=True``, a live server,
a browser test) with one ``TRUNCATE`` of every table. On PostgreSQL that makes new files for each
of the ~60 tables and their indexes: about 1–2 s a test on a slow machine, for tables that hold a
few rows. Deleting the rows of small tables costs milliseconds. What stays as it was:

- every table is locked first in the mode ``TRUNCATE`` takes (``ACCESS EXCLUSIVE``), so the flush
  still waits for any other session (a worker or a server thread of the test) to finish with them,
  and nothing another session writes can land between the flush and the next test;
- a table larger than ``TRUNCATE_ABOVE`` bytes on disk with its indexes (a test's 100,000
  profiles, or the dead rows of earlier flushes) is truncated, so no test inherits more than a
  few pages of dead rows that the planner would count;
- foreign keys and triggers are not checked row by row (``session_replication_role``, for the
  transaction only), as ``TRUNCATE`` checks none either;
- a flush that resets sequences, or a role that may not set ``session_replication_role`` (not a
  superuser), takes Django's own ``TRUNCATE``.
"""

from __future__ import annotations

TRUNCATE_ABOVE = 512 * 1024  # bytes: the table, its indexes and TOAST


def flush_sql(ops, tables: list[str]) -> list[str]:
    """The statements that empty ``tables`` (run in one transaction by ``execute_sql_flush``)."""
    names = ", ".join(ops.quote_name(table) for table in tables)
    # Table names are Django's own (its models' tables), quoted as SQL literals for the array.
    array = "ARRAY[" + ", ".join("'" + table.replace("'", "''") + "'" for table in tables) + "]::text[]"
    return [
        f"LOCK TABLE {names} IN ACCESS EXCLUSIVE MODE",
        "SET LOCAL session_replication_role = replica",
        "DO $$DECLARE t text; BEGIN "  # noqa: S608 (table names of ours, quoted)
        f"FOREACH t IN ARRAY {array} LOOP "
        f"IF pg_total_relation_size(format('%I', t)::regclass) > {TRUNCATE_ABOVE} "
        "THEN EXECUTE format('TRUNCATE %I CASCADE', t); "
        "ELSE EXECUTE format('DELETE FROM %I', t); END IF; "
        "END LOOP; END$$",
    ]


def _superuser(connection) -> bool:
    known = getattr(connection, "_tests_superuser", None)
    if known is None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            row = cursor.fetchone()
        known = connection._tests_superuser = bool(row and row[0])
    return known


def install() -> None:
    """Make PostgreSQL's flush lock and delete (see the module's docstring), for this process."""
    from django.db.backends.postgresql.operations import DatabaseOperations

    truncate = DatabaseOperations.sql_flush
    if getattr(truncate, "tests_flush", False):
        return

    def sql_flush(self, style, tables, *, reset_sequences=False, allow_cascade=False):
        if not tables or reset_sequences or not _superuser(self.connection):
            return truncate(self, style, tables, reset_sequences=reset_sequences, allow_cascade=allow_cascade)
        return flush_sql(self, list(tables))

    sql_flush.tests_flush = True
    DatabaseOperations.sql_flush = sql_flush
