"""The journeys' step counters (``StepStat``): entered, passed per branch, pushed, exited... per
version and step. The engine, the entries and the lifecycle's transitions (a stop, a resume) all
add to them, through the one statement here."""

from collections import Counter

from django.db import connection

# The shards of each step counter (``StepStat``): a session adds to the shard of its backend. Event
# entries add to the same counters in every call, and each held its rows to its commit: at 200
# events/s the calls queued behind each other's WAL flush (most of their time waiting on a lock).
STEP_STAT_SHARDS = 16


def step_stats_add(counts: Counter) -> None:
    """Add to the step counters in one statement (insert or increment).

    The rows are taken in key order, so two batches adding to the same counters lock them in
    the same order and cannot deadlock.
    """
    statement = step_stats_statement(counts)
    if statement is not None:
        with connection.cursor() as cursor:
            cursor.execute(*statement)


def step_stats_statement(counts: Counter) -> tuple[str, list] | None:
    """``step_stats_add``'s statement and its parameters, for a caller that runs it with others
    (the engine's write-back); None when there is nothing to add."""
    if not counts:
        return None
    merged: Counter = Counter()
    for (version_id, step, metric), n in counts.items():
        merged[(version_id, step, metric[:100])] += n
    shard = f"mod(pg_backend_pid(), {int(STEP_STAT_SHARDS)})" if connection.vendor == "postgresql" else "0"
    values = ", ".join([f"(%s, %s, %s, {shard}, %s)"] * len(merged))
    params = []
    for (version_id, step, metric), n in sorted(merged.items()):
        params += [version_id, step, metric, n]
    return (
        f"INSERT INTO journeys_stepstat (version_id, step, metric, shard, count) VALUES {values} "  # noqa: S608 (placeholders and a constant)
        "ON CONFLICT (version_id, step, metric, shard) DO UPDATE SET count = journeys_stepstat.count + excluded.count",
        params,
    )
