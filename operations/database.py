"""What a command or a process says when the database cannot be used: it does not answer (down,
restarting, a wrong address), or it answers but its migrations are not applied (a new database,
a release not migrated yet). One wording for ``status``, ``retention_apply``,
``rotate_encryption_key``, ``instance_claim``, ``send_stream`` and ``qcluster``: a line that says
what to do, never a traceback. Any other command run through ``manage.py`` (Django's own:
``migrate``, ``clearsessions``…) says in that line that PostgreSQL does not answer.
"""

from __future__ import annotations

from contextlib import contextmanager

from django.core.management.base import CommandError
from django.db import DatabaseError, InterfaceError, OperationalError

from config.reporting import first_line

# PostgreSQL's undefined_table and undefined_column; SQLite says it in words.
_NOT_MIGRATED_SQLSTATES = ("42P01", "42703")
_NOT_MIGRATED_SQLITE = ("no such table", "no such column")
_BUSY_SQLITE = ("database is locked", "database table is locked")


def database_problem(exc: BaseException) -> str | None:
    """Say in one line what is wrong when ``exc`` is the database gone or not migrated; return
    None for any other error (a deadlock, a bug), which deserves its traceback."""
    if not isinstance(exc, DatabaseError):
        return None
    detail = first_line(exc)
    said = f"{exc.__class__.__name__}{': ' + detail if detail else ''}"
    sqlstate = getattr(exc.__cause__, "sqlstate", None)
    if sqlstate in _NOT_MIGRATED_SQLSTATES or (sqlstate is None and detail.startswith(_NOT_MIGRATED_SQLITE)):
        return f"the database is not migrated ({said}): run `manage.py migrate`"
    # A connection that failed has no SQLSTATE, nor has any SQLite error: a SQLite database that
    # is locked answers (it is busy), and keeps its traceback.
    gone = sqlstate.startswith(("08", "57P")) if sqlstate else not detail.startswith(_BUSY_SQLITE)
    if isinstance(exc, InterfaceError) or (isinstance(exc, OperationalError) and gone):
        return _does_not_answer(said)
    return None


def database_gone(exc: BaseException) -> str | None:
    """Say in one line that PostgreSQL does not answer (a connection refused, lost, or the server
    shutting down) when ``exc`` is that; return None for any other error, SQLite's included (they
    carry no SQLSTATE to tell). For any command run through ``manage.py``, Django's own too."""
    cause = exc.__cause__
    if not isinstance(exc, (OperationalError, InterfaceError)) or not type(cause).__module__.startswith("psycopg"):
        return None
    sqlstate = getattr(cause, "sqlstate", None)
    if sqlstate and not sqlstate.startswith(("08", "57P")):
        return None
    detail = first_line(exc)
    return _does_not_answer(f"{exc.__class__.__name__}{': ' + detail if detail else ''}")


def _does_not_answer(said: str) -> str:
    return f"the database does not answer ({said}): start it, or check DATABASE_URL"


def database_error_said(exc: DatabaseError) -> str:
    """Say in one line an error the database answered with, one ``database_problem`` leaves to its
    traceback (a permission refused, a statement cancelled, a bug's query), for a command that
    reads: `migrate` is suggested only when migrations are pending, never for any error at all."""
    detail = first_line(exc)
    sqlstate = getattr(exc.__cause__, "sqlstate", None)
    said = f"{exc.__class__.__name__}{': ' + detail if detail else ''}{f' [SQLSTATE {sqlstate}]' if sqlstate else ''}"
    if sqlstate == "42501":  # insufficient_privilege
        said += ": the user of DATABASE_URL may not read it (its grants?)"
    try:
        pending = migrations_pending()
    except DatabaseError:  # django_migrations cannot be read either: whether they are applied is unknown
        return f"the database answered with an error ({said})"
    if pending:
        return f"the database answered with an error ({said}) and {pending} migrations are not applied: run `manage.py migrate`"
    return f"the database answered with an error ({said}); its migrations are all applied"


def redis_problem(exc: BaseException) -> str:
    """Redis not answering (``exc``, a Redis error), said in one line as the database's is."""
    detail = first_line(exc)
    return f"Redis does not answer ({exc.__class__.__name__}{': ' + detail if detail else ''})"


@contextmanager
def database_errors_said():
    """In a management command: turn the database gone or not migrated into a one-line
    ``CommandError``; any other error goes on as it is."""
    try:
        yield
    except DatabaseError as exc:
        problem = database_problem(exc)
        if problem is None:
            raise
        raise CommandError(problem) from None


@contextmanager
def redis_errors_said():
    """In a command that reads the task queue (``qinfo``, ``qmonitor``): turn Redis not answering
    into a one-line ``CommandError``, without django-q2's own line before it."""
    import logging

    from redis.exceptions import RedisError

    queue_logger = logging.getLogger("django-q")
    level = queue_logger.level
    queue_logger.setLevel(logging.CRITICAL)  # its "Can not connect to Redis server." says less than ours
    try:
        yield
    except RedisError as exc:
        raise CommandError(f"{redis_problem(exc)}: start it, or check REDIS_URL.") from None
    finally:
        queue_logger.setLevel(level)


def migrations_pending(*, using: str = "default") -> int:
    """How many migrations the code has that the database has not applied."""
    from django.db import connections
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connections[using])
    return len(executor.migration_plan(executor.loader.graph.leaf_nodes()))
