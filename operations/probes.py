"""What ``/readyz`` checks: the database and Redis answer, migrations are applied, the instance is claimed."""

from __future__ import annotations

from django.conf import settings
from django.db import connection

_migrations_applied = False  # once true for this process's code, it stays true


def readiness_problems() -> dict[str, str]:
    """Check each dependency; return {check: problem} for those that fail (empty when ready)."""
    global _migrations_applied
    problems: dict[str, str] = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:
        problems["database"] = f"does not answer ({exc.__class__.__name__})"
        return problems  # every other check reads the database
    if settings.REDIS_URL:
        try:
            import redis

            redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=2).ping()
        except Exception as exc:
            problems["redis"] = f"does not answer ({exc.__class__.__name__})"
    if not _migrations_applied:
        from django.db.migrations.executor import MigrationExecutor

        try:
            executor = MigrationExecutor(connection)
            pending = executor.migration_plan(executor.loader.graph.leaf_nodes())
        except Exception as exc:
            problems["migrations"] = f"cannot be read ({exc.__class__.__name__})"
        else:
            if pending:
                problems["migrations"] = f"{len(pending)} not applied; run `manage.py migrate`"
            else:
                _migrations_applied = True
    if "migrations" not in problems:
        from operations.instance import instance_problem

        problem = instance_problem()
        if problem is not None:
            problems["instance"] = problem
    return problems
