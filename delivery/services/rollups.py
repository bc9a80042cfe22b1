"""Rollups: the deliveries counted as they change, so that no page counts them (``DeliveryRollup``).

Each function adds to the rollup what one change to some deliveries did, grouped in SQL in one
``INSERT … SELECT … ON CONFLICT DO UPDATE``, and must run in the transaction of that change:

- ``rollup_add_made`` / ``rollup_made_sql`` (PostgreSQL, in the resolving statement),
  ``rollup_add_appended``: rows just made (a dispatch resolved, a stream's call appended):
  targeted, and those made final already (skipped);
- ``rollup_add_finished``: rows that just became final (written back, stopped, expired, voided);
- ``rollup_take_finished``: final rows about to change their outcome (a late answer);
- ``rollup_add_opened``: rows just opened;
- ``rollup_rebuild``: a dispatch's rollup counted again from its rows (the migration's backfill).

A row counts under the platform of its device at the time (``none`` without one) and its variant
(-1 without). A row whose device was deleted before its outcome came counts under the platform
its device's tombstone keeps (``DeviceTombstone``), the one it was targeted on. Reads:
``delivery.reports``. Retention deleting a dispatch's old rows leaves its rollup: what they were
is what its reports go on showing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import datetime

from django.db import connection, transaction
from django.utils import timezone

from config.db import int_array
from delivery.models import DeliveryRollup, DeviceTombstone, Dispatch

PERIOD_MINUTES = 15
FINAL = ("accepted", "failed", "skipped", "unknown")
_TABLE = DeliveryRollup._meta.db_table
_KEY = "dispatch_id, period, platform, variant, outcome, reason, shard"
# The shard of a stream's appends: by connection, so concurrent calls add to different rows (an
# append waits for the commit of any other holding its shard's row: with 8 shards, 32 connections
# queued four deep behind each other's WAL flush; 64 leave few of them sharing one).
STREAM_SHARD = "mod(pg_backend_pid(), 64)"
# When a row was made: its call (a stream's row), else when its dispatch was created.
_MADE = "COALESCE(d.queued_at, x.created_at)"


def _period(column: str) -> str:
    """SQL for the start of the quarter hour holding ``column`` (UTC)."""
    if connection.vendor == "postgresql":
        return f"date_bin('{PERIOD_MINUTES} minutes', {column}, TIMESTAMPTZ '2000-01-01 00:00:00+00')"
    # SQLite keeps datetimes as UTC text: 'YYYY-MM-DD HH:MM:SS[.ffffff]'. Cut with substr, not
    # strftime: a bare '%' in a statement breaks Django's logging of it (DEBUG's cursor).
    minute = f"CAST(substr({column}, 15, 2) AS integer) / {PERIOD_MINUTES} * {PERIOD_MINUTES}"
    return f"substr({column}, 1, 14) || substr('0' || ({minute}), -2) || ':00'"


def gone_platform_sql(device: str) -> str:
    """SQL for the platform a deleted device (its id: ``device``, SQL) had when rows of it were
    not final yet, as its tombstone keeps it (``DeviceTombstone``); NULL when none does. Read
    through the tombstones' device index, in a COALESCE after the device's own platform: only for
    a row whose device is gone."""
    return (
        f"(SELECT t.platform FROM {DeviceTombstone._meta.db_table} t "  # noqa: S608 (constants)
        f"WHERE t.device_id = {device} AND t.platform <> '' LIMIT 1)"
    )


# The platform a row counts under: its device's, or, the device deleted while the row was not
# final, the one its tombstone keeps (``none`` without a device).
_PLATFORM = f"COALESCE(dev.platform, {gone_platform_sql('d.device_id')}, 'none')"
# Its device's alone: for a schema without the tombstones' platform (a migration before 0040's).
DEVICE_PLATFORM = "COALESCE(dev.platform, 'none')"


def _part(
    outcome: str,
    *,
    source: str = "delivery_delivery d",
    shard: str = "0",
    rows: str = "COUNT(*)",
    platform: str = _PLATFORM,
) -> str:
    """One grouped SELECT of the rows under ``{where}``: targeted, their final statuses, or opens,
    each group counting ``rows`` (SQL), under ``platform`` (SQL)."""
    if outcome == "targeted":
        period, name, reason, only = _period(_MADE), "'targeted'", "''", ""
    elif outcome == "final":
        period = _period(f"COALESCE(d.finished_at, {_MADE})")
        name, reason, only = "d.status", "d.reason", f" AND d.status IN ({', '.join(repr(s) for s in FINAL)})"
    else:
        period, name, reason, only = _period("d.opened_at"), "'opened'", "''", " AND d.opened_at IS NOT NULL"
    return (
        f"SELECT d.dispatch_id, {period} AS period, {platform} AS platform, "  # noqa: S608 (constants)
        f"COALESCE(d.variant, {DeliveryRollup.NO_VARIANT}) AS variant, {name} AS outcome, {reason} AS reason, "
        f"{shard} AS shard, {rows} AS n "
        f"FROM {source} JOIN delivery_dispatch x ON x.id = d.dispatch_id "
        "LEFT JOIN delivery_device dev ON dev.id = d.device_id "
        f"WHERE {{where}}{only} GROUP BY 1, 2, 3, 4, 5, 6, 7"
    )


def rollup_insert_sql(
    *,
    where: str,
    outcomes: Iterable[str],
    source: str = "delivery_delivery d",
    shard: str = "0",
    returning: str = "",
    rows: str = "COUNT(*)",
    platform: str = _PLATFORM,
) -> str:
    """The statement adding to the rollup what the rows of ``source`` (aliased ``d``) under
    ``where`` count as ``outcomes`` (``targeted``, ``final``, ``opened``); its parameters are
    ``where``'s, once per outcome. ``source`` may be a data-modifying CTE's name (``"ins d"``) to
    count rows in the statement that writes them; ``shard`` (SQL) the shard they go to; ``rows``
    (SQL) what each group adds, ``SUM(d.n)`` for a source whose rows say it (-1 takes one away);
    ``platform`` (SQL) the platform a row counts under, its device's by default."""
    parts = [
        _part(outcome, source=source, shard=shard, rows=rows, platform=platform).replace("{where}", where)
        for outcome in outcomes
    ]
    return (
        f"INSERT INTO {_TABLE} ({_KEY}, rows) "  # noqa: S608 (constants; values are bound)
        f"SELECT * FROM ({' UNION ALL '.join(parts)}) AS u WHERE true "
        f"ON CONFLICT ({_KEY}) DO UPDATE SET rows = {_TABLE}.rows + excluded.rows{returning}"
    )


def _add(
    *, where: str, params: list, outcomes: Iterable[str], rows: str = "COUNT(*)", platform: str = _PLATFORM
) -> None:
    outcomes = list(outcomes)
    with connection.cursor() as cursor:
        cursor.execute(
            rollup_insert_sql(where=where, outcomes=outcomes, rows=rows, platform=platform), params * len(outcomes)
        )


def late_platform_sql(gone_as: str) -> str:
    """The platform a late answer's row counts under (SQL, over ``dev`` and ``d``): its device's, or,
    the device deleted while the row was in flight, the one its tombstone keeps (the watchdog
    counted it ``unknown`` there), or, the device deleted since the watchdog counted the row under
    it, ``gone_as`` (SQL: the platform its claim read)."""
    return f"COALESCE(dev.platform, {gone_platform_sql('d.device_id')}, {gone_as}, 'none')"


def _platform_literal(platform: str) -> str:
    if platform not in ("ios", "android", "none"):
        raise ValueError(f"not a platform: {platform!r}")
    return f"'{platform}'"


def _ids_where(ids: list[int]) -> tuple[str, list]:
    if connection.vendor == "postgresql":
        return "d.id = ANY(%s::bigint[])", [int_array(ids)]
    return f"d.id IN ({', '.join(['%s'] * len(ids))})", list(ids)


def rollup_add_made(*, dispatch_id: int) -> Counter:
    """Count the rows of a dispatch just resolved, in its transaction (the portable resolve;
    PostgreSQL counts them in the resolving statement, ``rollup_made_sql``): as targeted, and by
    their final status where they have one already (skipped). Returns its rows by outcome
    (``targeted``, ``skipped``...), which are the dispatch's whole rollup then."""
    sql = rollup_insert_sql(
        where="d.dispatch_id = %s", outcomes=("targeted", "final"), returning=f" RETURNING {_TABLE}.outcome, rows"
    )
    counts: Counter = Counter()
    with connection.cursor() as cursor:
        cursor.execute(sql, [dispatch_id, dispatch_id])
        for outcome, n in cursor.fetchall():
            counts[outcome] += n
    return counts


def rollup_made_sql(*, source: str, shard: int = 0) -> str:
    """PostgreSQL: the statement counting rows a dispatch resolves, from the resolve's own rows
    (``source``, a CTE with ``platform``, ``variant``, ``status``, ``reason`` and ``finished_at``)
    rather than from the table once they are written: as targeted, and by their final status where
    they have one (skipped), in rollup rows of ``shard``. Its parameters: the dispatch's id, then
    its creation time (when its rows were made) twice. Its rows: the dispatch's rollup by outcome
    (of that shard), as ``rollup_add_made``'s.

    The rows are grouped before each group yields its two outcomes: at a million rows, reading
    them back (and their devices, for the platform) took longer than writing them."""
    made = _period("%s")
    final = _period("COALESCE(g.finished_at, %s)")
    return (
        f"INSERT INTO {_TABLE} ({_KEY}, rows) "  # noqa: S608 (constants; values are bound)
        f"SELECT %s, o.period, g.platform, g.variant, o.outcome, o.reason, {int(shard)}, SUM(g.n) "
        f"FROM (SELECT COALESCE(platform, 'none') AS platform, COALESCE(variant, {DeliveryRollup.NO_VARIANT}) AS variant, "
        f"status, reason, finished_at, COUNT(*) AS n FROM {source} GROUP BY 1, 2, 3, 4, 5) g "
        f"CROSS JOIN LATERAL (VALUES ('targeted', '', {made}), (g.status, g.reason, {final})) AS o(outcome, reason, period) "
        f"WHERE o.outcome = 'targeted' OR g.status IN ({', '.join(repr(s) for s in FINAL)}) "
        "GROUP BY 1, 2, 3, 4, 5, 6, 7 "
        f"ON CONFLICT ({_KEY}) DO UPDATE SET rows = {_TABLE}.rows + excluded.rows RETURNING {_TABLE}.outcome, rows"
    )


def rollup_add_appended(*, ids: list[int]) -> None:
    """Count rows just appended to a stream (the portable append; PostgreSQL counts them in the
    appending statement): as targeted, and by their final status where they have one already."""
    if ids:
        where, params = _ids_where(ids)
        _add(where=where, params=params, outcomes=("targeted", "final"))


def deliveries_finish(*, where: str, params: list, status: str, reason: str, now: datetime | None = None) -> int:
    """Make the deliveries under ``where`` (SQL over ``d``, e.g. a dispatch's queued rows) final with
    ``status`` and ``reason``, finished ``now`` (the database's clock when None), and count them into
    the rollup; return how many. One statement on PostgreSQL. For the changes that are not a
    write-back: a stop, expired leases, refused credentials, a voided instance."""
    finished = "%s" if now is not None else ("now()" if connection.vendor == "postgresql" else "%s")
    moment = connection.ops.adapt_datetimefield_value(now if now is not None else timezone.now())
    update = (
        "UPDATE delivery_delivery AS d SET status = %s, reason = %s, "  # noqa: S608 (constants and the callers' fixed SQL)
        f"finished_at = {finished}, next_attempt_at = NULL, lease_expires_at = NULL WHERE {where}"
    )
    head = [status, reason[:100], *([moment] if finished == "%s" else [])]
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            columns = "d.id, d.dispatch_id, d.device_id, d.variant, d.status, d.reason, d.finished_at, d.queued_at"
            cursor.execute(
                f"WITH changed AS ({update} RETURNING {columns}), "  # noqa: S608 (constants and the callers' fixed SQL)
                f"counted AS ({rollup_insert_sql(where='true', outcomes=['final'], source='changed d')}) "
                "SELECT COUNT(*) FROM changed",
                [*head, *params],
            )
            return cursor.fetchone()[0]
        cursor.execute(f"{update} RETURNING id", [*head, *params])
        ids = [row[0] for row in cursor.fetchall()]
        rollup_add_finished(ids=ids)
    return len(ids)


def rollup_add_finished(*, ids: list[int], gone_as: str | None = None) -> None:
    """Count rows that just became final (those of ``ids`` that are), at the quarter hour they
    finished. In the transaction that wrote them. ``gone_as``: the platform rows whose device is
    gone count under (a late answer's, ``rollup_take_finished``)."""
    if ids:
        where, params = _ids_where(ids)
        platform = _PLATFORM if gone_as is None else late_platform_sql(_platform_literal(gone_as))
        _add(where=where, params=params, outcomes=("final",), platform=platform)


def rollup_take_finished(*, ids: list[int], gone_as: str) -> None:
    """Take away what rows count as now (those of ``ids`` that are final), before they change
    their final status (a late answer, ``deliveries_write_back``). In the transaction that writes
    them. A row whose device was deleted since it was counted is taken from ``gone_as``, the
    platform its claim read (and the watchdog counted it under), not from ``none``."""
    if ids:
        where, params = _ids_where(ids)
        platform = late_platform_sql(_platform_literal(gone_as))
        _add(where=where, params=params, outcomes=("final",), rows="-COUNT(*)", platform=platform)


def rollup_add_opened(*, ids: list[int]) -> None:
    """Count rows just opened, at the quarter hour they were opened. In the transaction that wrote them."""
    if ids:
        where, params = _ids_where(ids)
        _add(where=where, params=params, outcomes=("opened",))


def rollup_rebuild(*, dispatch_ids: Iterable[int] | None = None, platform: str = _PLATFORM) -> None:
    """Count these dispatches' rollups again from their rows (a repair; a dispatch whose rows
    retention deleted is left as it is), or every dispatch's (``None``: the migration's backfill,
    one grouped pass over the deliveries, before retention kept any rollup). ``platform`` (SQL):
    what a row counts under (``DEVICE_PLATFORM`` for that migration, before tombstones kept one)."""
    if dispatch_ids is None:
        with connection.cursor() as cursor:
            cursor.execute(f"DELETE FROM {_TABLE}")  # noqa: S608 (the model's table)
        _add(where="true", params=[], outcomes=("targeted", "final", "opened"), platform=platform)
        return
    dispatch_ids = list(dispatch_ids)
    # A dispatch whose rows retention deleted keeps its rollup: its rows no longer say what it did.
    cleared = set(
        Dispatch.objects.filter(pk__in=dispatch_ids, rows_deleted_at__isnull=False).values_list("pk", flat=True)
    )
    for dispatch_id in dispatch_ids:
        if dispatch_id in cleared:
            continue
        DeliveryRollup.objects.filter(dispatch_id=dispatch_id).delete()
        _add(
            where="d.dispatch_id = %s",
            params=[dispatch_id],
            outcomes=("targeted", "final", "opened"),
            platform=platform,
        )
