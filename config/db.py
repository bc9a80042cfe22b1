"""Database helpers shared by the apps: the session settings of the heavy reads (one count over
many rows, in a transaction of its own), the ids a row can have, the pace of a loop of writes on
SQLite, integer and text lists as one parameter, what a
deletion removes, the hot paths' prepared statements, and an index or a unique constraint built
without stopping writes and a column filled in batches (for migrations)."""

import time
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from functools import lru_cache

from django.db import DEFAULT_DB_ALIAS, connection, connections, migrations, router, transaction
from django.db.models import Exists, F, Lookup, Max, Min, OuterRef, QuerySet, Subquery
from django.db.models.deletion import Collector
from django.db.models.lookups import In

# The memory such a count may use per sort or hash. A rule on a large static segment or on events
# is answered by hashing their profile ids once, which the server's default 4 MB cannot hold past
# a few hundred thousand: each profile then probes an index instead (at 5,000,000 profiles and
# 500,000 members: 2.7 s instead of 12 s).
COUNT_WORK_MEM = "64MB"

# The ids a row can have (a positive bigint). A number past them names no row; in a list
# (``pk__in``) SQLite cannot even bind it (OverflowError), so such input is checked against this.
ROW_IDS = range(1, 2**63)

# SQLite lets one writer at a time hold the database; another waits by polling for it, every
# 100 ms at most once it has waited a while. A loop that begins its next write transaction as it
# commits the last (the journey engine's batches, a send's claims and write-backs) is never seen
# free, and every other writer (the admin, the task queue) waits until its timeout: 17 s for a
# 20,000-profile journey, then "database is locked". The loop pauses a little longer than that
# poll after each WRITE_HOLD_SECONDS of writing.
WRITE_HOLD_SECONDS = 0.5
WRITE_PAUSE_SECONDS = 0.12


def write_pacer() -> Callable[[], None]:
    """A function for a loop of write transactions to call between two of them: on SQLite it
    pauses ``WRITE_PAUSE_SECONDS`` once the loop has written for ``WRITE_HOLD_SECONDS`` since its
    last pause, so a waiting writer gets in; elsewhere it does nothing."""
    if connection.vendor != "sqlite":
        return lambda: None
    since = time.monotonic()

    def pace() -> None:
        nonlocal since
        if time.monotonic() - since >= WRITE_HOLD_SECONDS:
            time.sleep(WRITE_PAUSE_SECONDS)
            since = time.monotonic()

    return pace


def count_session(cursor) -> None:
    """For the cursor's current transaction, on PostgreSQL: JIT off (for a sub-second count its
    100–200 ms of compiling is more than it saves) and ``COUNT_WORK_MEM``. ``SET LOCAL``: they end
    with the transaction, or with an enclosing one when called inside it."""
    if cursor.db.vendor == "postgresql":
        cursor.execute(f"SET LOCAL jit = off; SET LOCAL work_mem = '{COUNT_WORK_MEM}'")  # one round trip


def int_array(ids) -> str:
    """Integers as PostgreSQL's array literal, for a ``%s::bigint[]`` parameter.

    psycopg adapts a list parameter value by value in Python: 1,000 ids cost 1.5 ms of the
    caller's CPU as a list and 0.25 ms as this text, which PostgreSQL parses in C. ``int()``
    keeps anything but an integer out of the literal.
    """
    return "{" + ",".join([str(int(i)) for i in ids]) + "}"


class _AmongIds(Lookup):
    """``field = ANY(%s::bigint[])`` with the ids as one array literal (``int_array``) on PostgreSQL;
    ``IN`` elsewhere. See ``among``."""

    lookup_name = "among_ids"
    prepare_rhs = False

    def as_sql(self, compiler, connection):
        if connection.vendor != "postgresql":
            return In(self.lhs, self.rhs).as_sql(compiler, connection)
        lhs, params = self.process_lhs(compiler, connection)
        return f"{lhs} = ANY(%s::bigint[])", [*params, int_array(self.rhs)]


class _AmongQuery(Lookup):
    """``field = ANY(ARRAY(subquery))`` on PostgreSQL, ``IN (subquery)`` elsewhere. See ``among``."""

    lookup_name = "among_query"
    prepare_rhs = False

    def as_sql(self, compiler, connection):
        lhs, lhs_params = self.process_lhs(compiler, connection)
        rhs, rhs_params = self.process_rhs(compiler, connection)  # "(SELECT ...)"
        if connection.vendor == "postgresql":
            return f"{lhs} = ANY(ARRAY{rhs})", [*lhs_params, *rhs_params]
        return f"{lhs} IN {rhs}", [*lhs_params, *rhs_params]


def among(field: str, ids) -> Lookup:
    """A filter: the integer ``field`` (a name, as in ``filter()``) is one of ``ids``. Where ``__in``
    puts one parameter per id into the SQL, which Django compiles and psycopg adapts one by one
    (2,000 ids in a statement: 7.7 ms of the caller's CPU, against 0.55 ms this way), this is one
    parameter on PostgreSQL, whatever the number; the same plan. For the long lists of a report's
    dispatches (a journey's batches, a stream's days).

    ``ids`` may be a query of rows instead (their primary keys: a campaign's sends, a journey
    version's batches), which the database reads itself, the ids never read into Python nor sent
    back: ``= ANY(ARRAY(subquery))`` on PostgreSQL, which reads the subquery once and then probes
    the field's index as for a list, where ``IN (subquery)`` under an ``OR`` (``Delivery.of_dispatches``)
    is planned as a scan of the whole table filtered by a hashed subplan; ``IN`` elsewhere."""
    if isinstance(ids, QuerySet):
        return _AmongQuery(F(field), ids.order_by().values("pk"))
    return _AmongIds(F(field), list(ids))  # a list: a query compiled twice reads the same ids


def text_array(values) -> str:
    """Texts as PostgreSQL's array literal, for a ``%s::text[]`` parameter (see ``int_array``; for a
    list of one text, about 7 µs of the caller's CPU less than the list). Each element is quoted,
    with its backslashes and double quotes escaped, so commas, braces, spaces and ``NULL`` stay
    text. Not for a text holding NUL, which PostgreSQL refuses in any text."""
    return "{" + ",".join(['"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values]) + "}"


def deletion_counts(objs) -> dict:
    """What deleting ``objs`` (a queryset, or a list of one model's objects) removes: {model: rows},
    in the order the cascade reaches them (their own model first), kinds with no row left out.

    Read from the plan the deletion itself follows (the ORM's cascade), so it names whatever
    belongs to them; rows the cascade deletes by query are counted, not loaded. Raises
    ProtectedError or RestrictedError as the deletion would."""
    if not isinstance(objs, QuerySet):
        objs = list(objs)
        if not objs:
            return {}
    model = objs.model if isinstance(objs, QuerySet) else type(objs[0])
    collector = Collector(using=router.db_for_write(model))
    collector.collect(objs)
    counts: Counter = Counter()
    for kind, instances in collector.data.items():
        counts[kind] += len(instances)
    for queryset in collector.fast_deletes:
        counts[queryset.model] += queryset.count()
    return {kind: rows for kind, rows in counts.items() if rows}


def deletion_counts_within(objs, *, seen, counted: bool = True) -> tuple[dict, int]:
    """``deletion_counts`` as a reader may be told it: ({model: rows} of the rows ``seen(model)``
    holds, kinds with none left out; how many other rows go too). ``seen(model)`` is a queryset of
    the rows of ``model`` the reader may see (one that filters nothing stands for the whole kind).
    The rows outside are neither counted by kind nor named: only their number is returned, for the
    caller to refuse a deletion that reaches them (an app's devices, a journey's enrollments the
    reader has no access to). ``counted=False``: only that number is wanted, and a kind the reader
    sees whole is not counted at all (a profile's million events). At most two counts per kind.
    Raises ProtectedError or RestrictedError as the deletion would."""
    if not isinstance(objs, QuerySet):
        objs = list(objs)
        if not objs:
            return {}, 0
    model = objs.model if isinstance(objs, QuerySet) else type(objs[0])
    collector = Collector(using=router.db_for_write(model))
    collector.collect(objs)
    shown: Counter = Counter()
    hidden = 0
    kinds = [(kind, [obj.pk for obj in instances]) for kind, instances in collector.data.items()]
    kinds += [(queryset.model, queryset) for queryset in collector.fast_deletes]
    for kind, rows in kinds:
        within = seen(kind)
        whole = not within.query.where
        if whole and not counted:
            continue
        total = len(rows) if isinstance(rows, list) else rows.count()
        pks = rows if isinstance(rows, list) else rows.values("pk")
        visible = total if whole else within.filter(pk__in=pks).count()
        shown[kind] += visible
        hidden += total - visible
    return {kind: rows for kind, rows in shown.items() if rows}, hidden


@contextmanager
def prepared_cursor():
    """A cursor for the hot path's fixed statements whose plans PostgreSQL keeps per connection.

    Django's cursors bind values client-side, so PostgreSQL plans every statement again: for the
    append, planning cost more than running it (0.6 ms against 0.35 ms). This one binds them
    server-side and prepares each statement on its first run on the connection, which then runs
    it from its kept plan (psycopg keeps the last 100 per connection). It goes through
    Django's wrappers (query logging, errors, transactions) as any other cursor. Behind PgBouncer
    in transaction mode, this needs PgBouncer 1.21 or later with ``max_prepared_statements`` set.
    """
    db = connections[DEFAULT_DB_ALIAS]  # once: each use of ``connection`` looks it up in a thread-local
    if db.vendor != "postgresql":
        with db.cursor() as cursor:
            yield cursor
        return
    db.close_if_health_check_failed()
    db.ensure_connection()
    with db.wrap_database_errors:
        cursor = db._prepare_cursor(_preparing_cursor_class()(db.connection))
    with cursor:
        yield cursor


@lru_cache(maxsize=1)
def _preparing_cursor_class():
    from django.db.backends.postgresql.base import ServerBindingCursor
    from psycopg._queries import PostgresQuery, _query2pg_nocache

    # psycopg converts a statement's placeholders (``%s`` to ``$1``…) by scanning its text, and
    # keeps the result only for texts up to 4,096 bytes: the trigger's append is longer, and was
    # scanned on every call (about 50 µs of the web's CPU). The hot path's statements are a few
    # fixed texts: each is scanned once per process.
    kept_conversion = lru_cache(maxsize=64)(_query2pg_nocache)

    class KeptQuery(PostgresQuery):
        def convert(self, query, vars):
            if vars is None or not isinstance(query, str | bytes):
                return super().convert(query, vars)
            converted = kept_conversion(self._ensure_bytes(query), self._tx.encoding)
            self.query, self._want_formats, self._order, self._parts = converted
            self.dump(vars)
            return None

    class PreparingCursor(ServerBindingCursor):
        _query_cls = KeptQuery

        def execute(self, query, params=None, *, prepare=True, binary=None):
            return super().execute(query, params, prepare=prepare, binary=binary)

        def _send_query_prepared(self, name, pgq, *, binary=None):
            self._query = pgq  # psycopg records only unprepared queries; Django's query log reads it
            return super()._send_query_prepared(name, pgq, binary=binary)

    return PreparingCursor


# The records a migration filling a big table writes in one transaction: what a write of one of
# them waits for at most (a fraction of a second), not the whole table.
BACKFILL_BATCH = 10_000


def idempotency_records_user_set(Record, ApiKey, *, batch: int = BACKFILL_BATCH) -> None:
    """Give each Idempotency-Key record of ``Record`` (a migration's historical model) its API key's
    user, then delete a user's later records of the same Idempotency-Key (the first is kept: a retry
    replays its answer). Each batch of ``batch`` ids is a transaction of its own, so a call carrying
    a key waits for one batch at most; run it from an ``atomic = False`` migration. Safe to run
    again after an interruption: it writes only the records still without their user, and deletes
    only later duplicates. Records inserted meanwhile have their user (the release's inserts name
    it; on PostgreSQL a trigger fills it in for the release before)."""
    user_of_key = Subquery(ApiKey.objects.filter(pk=OuterRef("api_key_id")).values("user_id")[:1])
    bounds = Record.objects.aggregate(first=Min("pk"), last=Max("pk"))
    start, last = bounds["first"], bounds["last"]
    while start is not None and start <= last:
        with transaction.atomic():
            Record.objects.filter(pk__gte=start, pk__lt=start + batch, user__isnull=True).update(user_id=user_of_key)
        start += batch
        if start > last:  # records inserted since the first read: the release before's, on SQLite
            last = Record.objects.aggregate(last=Max("pk"))["last"]
    earlier = Record.objects.filter(
        user_id=OuterRef("user_id"), idempotency_key=OuterRef("idempotency_key"), pk__lt=OuterRef("pk")
    )
    later = list(Record.objects.filter(Exists(earlier)).order_by("pk").values_list("pk", flat=True))
    for at in range(0, len(later), batch):
        with transaction.atomic():
            Record.objects.filter(pk__in=later[at : at + batch]).delete()


class AddIndexConcurrentlyOnPostgres(migrations.AddIndex):
    """AddIndex, built CONCURRENTLY on PostgreSQL (plainly elsewhere, as on SQLite), for a big
    table whose writers must go on while it builds; its migration is ``atomic = False``. If the
    build fails it leaves an invalid index behind: drop it (``DROP INDEX CONCURRENTLY``) and
    migrate again."""

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor != "postgresql":
            return super().database_forwards(app_label, schema_editor, from_state, to_state)
        model = to_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            schema_editor.add_index(model, self.index, concurrently=True)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor != "postgresql":
            return super().database_backwards(app_label, schema_editor, from_state, to_state)
        model = from_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            schema_editor.remove_index(model, self.index, concurrently=True)


class AddUniqueConstraintConcurrentlyOnPostgres(migrations.AddConstraint):
    """AddConstraint of a UniqueConstraint on fields, whose index is built CONCURRENTLY on
    PostgreSQL and then made the constraint (``ADD CONSTRAINT … UNIQUE USING INDEX``: a moment's
    lock, no scan), plainly elsewhere, for a big table whose writers must go on while it builds;
    its migration is ``atomic = False``. If the build fails (rows breaking it, say) it leaves an
    invalid index behind: drop it (``DROP INDEX CONCURRENTLY``) and migrate again. Migrating back
    drops the constraint and its index."""

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor != "postgresql":
            return super().database_forwards(app_label, schema_editor, from_state, to_state)
        model = to_state.apps.get_model(app_label, self.model_name)
        if not self.allow_migrate_model(schema_editor.connection.alias, model):
            return
        quote = schema_editor.quote_name
        table, name = quote(model._meta.db_table), quote(self.constraint.name)
        columns = ", ".join(quote(model._meta.get_field(field).column) for field in self.constraint.fields)
        schema_editor.execute(f"CREATE UNIQUE INDEX CONCURRENTLY {name} ON {table} ({columns})")
        schema_editor.execute(f"ALTER TABLE {table} ADD CONSTRAINT {name} UNIQUE USING INDEX {name}")


class RemoveIndexConcurrentlyOnPostgres(migrations.RemoveIndex):
    """RemoveIndex, dropped CONCURRENTLY on PostgreSQL (plainly elsewhere), for a big table whose
    writers must go on meanwhile (no lock held on the table); its migration is ``atomic = False``.
    Migrating back builds the index again, concurrently too."""

    def _index(self, state, app_label):
        return state.models[app_label, self.model_name_lower].get_index_by_name(self.name)

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor != "postgresql":
            return super().database_forwards(app_label, schema_editor, from_state, to_state)
        model = from_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            schema_editor.remove_index(model, self._index(from_state, app_label), concurrently=True)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor != "postgresql":
            return super().database_backwards(app_label, schema_editor, from_state, to_state)
        model = to_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            schema_editor.add_index(model, self._index(to_state, app_label), concurrently=True)


class Holders:
    """What keeps objects of one kind from being deleted where no foreign key protects them (a
    journey's graph names its contents and segments): callables ``holders(ids, by) -> list[str]``
    that the apps holding them register, each saying a line per holder without naming to ``by``
    (None: the system) what they may not see."""

    def __init__(self):
        self._holders: list = []

    def register(self, holders) -> None:
        if holders not in self._holders:
            self._holders.append(holders)

    def __call__(self, ids, *, by) -> list[str]:
        ids = set(ids)
        return [said for holders in self._holders for said in holders(ids, by)] if ids else []
