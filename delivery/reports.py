"""Report charts of a set of dispatches (a campaign's, a journey's, one dispatch): the figures the
campaign, dispatch and journey pages draw with Chart.js, and show as tables beside the charts.

Every figure is summed from the dispatches' rollup (``DeliveryRollup``, kept by the send
pipeline as rows change), never counted over the deliveries; the page reads them from one JSON
script tag.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from django.core.cache import cache
from django.db.models import (
    Aggregate,
    Case,
    CharField,
    Count,
    Exists,
    Expression,
    F,
    Func,
    Lookup,
    Max,
    Min,
    OuterRef,
    Q,
    QuerySet,
    Sum,
    TextField,
    When,
)
from django.db.models.functions import Now, Trunc
from django.template.defaultfilters import pluralize
from django.utils import timezone

from config.db import among
from delivery.kept import NO_PAIRS, NOT_KEPT, Scope, counted_with_kept, decoded
from delivery.models import Delivery, DeliveryRollup, Dispatch, DispatchProfiles
from delivery.reasons import reason_label

# Rows skipped because no device of the profile allows notifications: the audience not opted in.
UNREACHABLE_REASONS = ("no_device", "not_opted_in")
PLATFORMS = ("ios", "android", "none")
# How the charts and their tables name each platform ("none": the profile had no device).
PLATFORM_NAMES = {"ios": "iOS", "android": "Android", "none": "no phone"}
OUTCOMES = ("targeted", "accepted", "failed", "skipped", "opened")
HOURLY_UP_TO = dt.timedelta(hours=48)  # a longer span is drawn per day
MOST_BUCKETS = 400
T = TypeVar("T")
CACHE_SECONDS = 24 * 3600  # figures whose dispatches' counters stay put stay right; a day bounds the space


def report_charts(*, dispatch_ids: Iterable[int] | QuerySet[Dispatch], tz: dt.tzinfo | None = None) -> dict:
    """The charts' figures for these dispatches (ids, or a query of them: ``rollup_of``), from their
    rollup (``DeliveryRollup``: two grouped queries over a few rows per quarter hour, whatever the
    number of deliveries).

    - ``timeline``: accepted and opened per hour, or per day when the sends span more than 48
      hours, in ``tz`` (the current time zone by default), every bucket between the first and
      the last included;
    - ``platforms``: targeted, accepted, failed, skipped and opened per platform, named in words
      (``PLATFORM_NAMES``: "no phone" when the profile had no device);
    - ``funnel``: targeted → opted in (a device that allows notifications, as an audience's size
      says "opted in") → accepted → opened;
    - ``reasons``: failures and skips by reason, the largest first.
    """
    return _charts(rollup_of(dispatch_ids), tz or timezone.get_current_timezone())


def rollup_of(dispatches: Iterable[int] | QuerySet[Dispatch]) -> Q | Lookup:
    """A filter of ``DeliveryRollup``: the rows of these dispatches, given as ids (one array
    parameter: ``among``) or as a query of them, which the database joins: a campaign's sends or a
    journey version's batches, thousands of them, summed without their ids read and sent back first."""
    if isinstance(dispatches, QuerySet):
        return Q(dispatch_id__in=dispatches.order_by().values("pk"))
    return among("dispatch_id", sorted(set(dispatches)))


# What a figure over a dispatch's rows is kept under: a row that finishes moves a counter (an open
# moves ``opened``, read when opens matter); retention deleting rows stamps ``rows_deleted_at``.
COUNTER_FIELDS = ("pk", "status", "total", "accepted", "failed", "skipped", "unknown", "rows_deleted_at")
# A dispatch that holds rows, or may still: a final one without rows counts nobody.
HOLDING = Q(total__gt=0) | ~Q(status__in=Dispatch.FINAL_STATUSES)


class _Stamp(Aggregate):
    """PostgreSQL: the md5 of the texts of one expression over the rows, in their order (NULLs
    left out; NULL without any)."""

    output_field = CharField()

    def as_sql(self, compiler, connection, **extra_context):
        sql, params = compiler.compile(self.get_source_expressions()[0])
        return f"md5(string_agg({sql}, ';' ORDER BY {sql}))", [*params, *params]


def stamps(
    dispatches: QuerySet[Dispatch], *, stamped: dict[str, tuple[tuple[str, ...], Q | None]], **aggregates
) -> dict:
    """One read of these dispatches: for each name of ``stamped``, a fingerprint of the fields
    given (the primary key first) of those the filter keeps (all: None), the same while their rows
    are (None when there are none); and ``aggregates``, as ``aggregate()`` gives them.

    On PostgreSQL the fingerprints are counted in the statement (md5 of the rows' texts), which
    sends back one line whatever the number of dispatches; on SQLite (the embedded mode) each
    filter's rows are read and hashed here."""
    from django.db import connection

    dispatches = dispatches.order_by()
    if connection.vendor == "postgresql":
        columns = {
            name: _Stamp(
                Case(
                    When(where or Q(pk__isnull=False), then=Func(*fields, template="ROW(%(expressions)s)::text")),
                    output_field=TextField(),
                )
            )
            for name, (fields, where) in stamped.items()
        }
        return dispatches.aggregate(**columns, **aggregates)
    read = dispatches.aggregate(**aggregates) if aggregates else {}
    for name, (fields, where) in stamped.items():
        rows = list((dispatches.filter(where) if where is not None else dispatches).order_by("pk").values_list(*fields))
        read[name] = stamp_of(rows) if rows else None
    return read


def kept_until_counted(
    *,
    name: str,
    dispatch_ids: Iterable[int] | QuerySet[Dispatch],
    compute: Callable[[], T],
    extra: str = "",
    opens_matter: bool = True,
) -> T:
    """``compute()``, a figure over these dispatches' deliveries (ids, or a query of them), kept in
    the cache under their counters (one query, their fingerprint: ``stamps``): a row that finishes or
    is opened moves a counter as the send tasks record it, so a kept figure is what a count now
    would say. (A stream's counters follow its rows at each watch, so its figures may lag by that
    much.) A figure that opens do not change (``opens_matter=False``) stays kept when only the
    opened counter moves. Retention deleting rows stamps the dispatch (``rows_deleted_at``), which
    voids what was kept over it."""
    dispatches = _query_of(dispatch_ids)
    fields = (*COUNTER_FIELDS, *(["opened"] if opens_matter else []))
    counters = stamps(dispatches, stamped={"counters": (fields, None)})["counters"]
    key = f"delivery:{name}:{stamp_of([extra, counters])}"
    figures = cache.get(key)
    if figures is None:
        figures = compute()
        cache.set(key, figures, CACHE_SECONDS)
    return figures


@dataclass(frozen=True)
class Sends:
    """A report's dispatches as one view reads them (``sends_read``), for its figures counted per
    profile: the query of them, and which of them are settled (final, nothing queued or in flight:
    their rows no longer change) and which, holding rows, are not (``open_ids``: a send under way, a
    stream calls still append to; few, whatever the number of sends). The settled ones are those
    holding rows that were final and not open when read, a query too; so no statement of a report
    lists its sends."""

    of: QuerySet
    open_ids: tuple[int, ...]
    count: int  # how many dispatches
    holding: int  # how many hold rows, or may still
    only_holding: int | None  # the one that does, when only one does
    settled_count: int
    only_settled: int | None  # the settled one, when only one is
    cleared: int  # how many retention deleted rows of
    first_sent: dt.datetime | None  # the earliest creation of those whose rows remain

    @property
    def holding_rows(self) -> QuerySet:
        return self.of.filter(HOLDING)

    @property
    def settled(self) -> QuerySet:
        return self.of.filter(_settled_among(self.open_ids))

    @property
    def open(self) -> QuerySet:
        return Dispatch.objects.filter(among("pk", self.open_ids))


def _settled_among(open_ids) -> Q:
    return Q(status__in=Dispatch.FINAL_STATUSES, total__gt=0) & ~Q(among("pk", open_ids))


def _query_of(dispatches: Iterable[int] | QuerySet[Dispatch]) -> QuerySet[Dispatch]:
    if isinstance(dispatches, QuerySet):
        return dispatches
    return Dispatch.objects.filter(among("pk", sorted(set(dispatches))))


def sends_read(dispatches: Iterable[int] | QuerySet[Dispatch] | Sends) -> Sends:
    """The dispatches' ``Sends`` (ids, or a query of them): two queries, their answers a line and
    the few open ones' ids."""
    if isinstance(dispatches, Sends):
        return dispatches
    dispatches = _query_of(dispatches).order_by()
    unfinished = Delivery.objects.filter(dispatch_id=OuterRef("pk"), finished_at__isnull=True)
    open_ids = tuple(
        sorted(
            dispatches.filter(HOLDING)
            .filter(~Q(status__in=Dispatch.FINAL_STATUSES) | Exists(unfinished))
            .values_list("pk", flat=True)
        )
    )
    settled = _settled_among(open_ids)
    remain = Q(rows_deleted_at__isnull=True)
    read = dispatches.aggregate(
        count=Count("pk"),
        holding=Count("pk", filter=HOLDING),
        only_holding=Max("pk", filter=HOLDING),
        settled_count=Count("pk", filter=settled),
        only_settled=Max("pk", filter=settled),
        cleared=Count("pk", filter=~remain),
        first_sent=Min("created_at", filter=remain),
    )
    return Sends(
        of=dispatches,
        open_ids=open_ids,
        count=read["count"],
        holding=read["holding"],
        only_holding=read["only_holding"] if read["holding"] == 1 else None,
        settled_count=read["settled_count"],
        only_settled=read["only_settled"] if read["settled_count"] == 1 else None,
        cleared=read["cleared"],
        first_sent=read["first_sent"],
    )


def profiles_by(
    *,
    name: str,
    dispatch_ids: Iterable[int] | QuerySet[Dispatch] | Sends,
    rows: Callable[[QuerySet[Dispatch]], QuerySet],
    group: str | Expression,
    scope: Scope | None = None,
    kept_name: str | None = None,
) -> dict:
    """Distinct profiles per value of ``group`` (a Delivery field or an expression over one) among
    ``rows(of)``, the rows of dispatches ``of`` (a query of them) to count; ``name`` names that
    choice of rows and group (the same name must always mean the same rows and group). A figure
    that opens do not change. ``dispatch_ids``: ids, a query of them, or their ``Sends`` when the
    caller read them for its own figures in the same view.

    A settled dispatch's figure (final, nothing queued or in flight: its rows no longer change) is
    counted once and kept on it (``DispatchProfiles``); so, when a single dispatch of these holds
    rows, the figure is read from one small row. Several dispatches' figures do not add up (one
    profile may be in more than one): those of the settled ones are counted together, kept in the
    cache (their counters no longer move) and, as more of them settle (a day's stream, a journey's
    batch), grown by the new ones' profiles that none before reached rather than counted again
    (``_settled_union``); the dispatches not settled (sending, or a stream
    that calls still append to) add only their profiles that no settled one reached in the same
    group, one statement probing each of their rows' profiles, kept in the cache until a
    counter other than opens moves (``kept_until_counted``). So a view after a new outcome counts
    what is still sending, not the history. No statement lists the dispatches: they are read
    by the database from their query, and a kept figure says which it covers by the highest id
    and the fingerprint of their counters (``stamps``).

    With ``scope`` (the report these dispatches make up), once retention deleted rows of one of
    them, the profiles it kept for the report's figure ``kept_name`` (by default ``name``) count too
    (``delivery.kept``): the settled rows and the kept profiles are counted together, each pair
    once, and the dispatches not settled add only their profiles neither holds.
    """
    from django.db import connection

    sends = sends_read(dispatch_ids)
    if not sends.holding:
        return {}

    select = pairs_of(rows, group)

    def count(of) -> dict:
        sql, params = select(of)
        return grouped_count(
            f"SELECT grp, count(profile_id) FROM (SELECT DISTINCT grp, profile_id FROM ({sql}) r) p GROUP BY grp",  # noqa: S608 (the ORM's SQL)
            params,
        )

    # Once retention deleted rows of one of these, the profiles it kept for the report count too.
    kept = (scope, kept_name or name) if scope is not None and sends.cleared else None

    def count_unseen(new: QuerySet, old: QuerySet | None) -> dict:
        """The pairs of dispatches ``new`` that neither the rows of settled dispatches ``old`` nor
        the kept profiles hold: one statement probing each of the new rows' profiles."""
        new_sql, params = select(new)
        unseen = []
        if old is not None:
            # Every row of a settled dispatch is finished: said, the probe reads the profile's finished rows' index.
            old_sql, old_params = pairs_of(lambda of: rows(of).filter(finished_at__isnull=False), group)(old)
            same = "IS" if connection.vendor == "sqlite" else "IS NOT DISTINCT FROM"
            unseen.append(
                f"NOT EXISTS (SELECT 1 FROM ({old_sql}) o WHERE o.profile_id = n.profile_id AND o.grp {same} n.grp)"  # noqa: S608 (the ORM's SQL)
            )
            params = [*params, *old_params]
        if kept is not None:
            unseen.append(NOT_KEPT.format(grp="COALESCE(CAST(n.grp AS TEXT), '')", profile="n.profile_id"))
            params = [*params, kept[0].key, kept[1]]
        where = f"WHERE {' AND '.join(unseen)}" if unseen else ""
        return grouped_count(
            f"SELECT grp, count(profile_id) FROM (SELECT DISTINCT grp, profile_id FROM ({new_sql}) n "  # noqa: S608 (the ORM's SQL)
            f"{where}) p GROUP BY grp",
            params,
        )

    holding = sends.holding_rows
    if sends.only_holding is not None and kept is None:
        figures = _settled_profiles(dispatch_id=sends.only_holding, name=name, count=count)
        return (
            figures
            if figures is not None
            else kept_until_counted(name=name, dispatch_ids=holding, compute=lambda: count(holding), opens_matter=False)
        )
    settled = sends.settled
    if kept is None and not sends.settled_count:
        return kept_until_counted(name=name, dispatch_ids=holding, compute=lambda: count(holding), opens_matter=False)
    if kept is not None:
        # The settled rows (the cleared ones have none) and the kept profiles, each pair once.
        def count_with_kept() -> dict:
            sql, params = select(settled) if sends.settled_count else (NO_PAIRS, [])
            return decoded(grouped_count(*counted_with_kept(sql, params, scope=scope, name=kept[1])), scope)

        before = (
            _settled_union(
                name=f"{name}:kept",
                settled=settled,
                compute=count_with_kept,
                added=count_unseen,
                extra=f"{scope.key}:{kept[1]}",
                clears_change=False,
            )
            if sends.settled_count
            else count_with_kept()
        )
    elif sends.only_settled is not None:
        before = _settled_profiles(dispatch_id=sends.only_settled, name=name, count=count) or {}
    else:
        before = _settled_union(
            name=name, settled=settled, compute=lambda: count(settled), added=count_unseen, extra="", clears_change=True
        )
    if not sends.open_ids:
        return before
    beyond = kept_until_counted(
        name=f"{name}:beyond",
        dispatch_ids=holding,
        # The holding ones' counters and which are open say which are settled.
        compute=lambda: count_unseen(sends.open, settled if sends.settled_count else None),
        extra=json.dumps([sends.open_ids, kept[0].key, kept[1]] if kept else [sends.open_ids]),
        opens_matter=False,
    )
    return summed(before, beyond)


def summed(a: dict, b: dict) -> dict:
    return {grp: a.get(grp, 0) + b.get(grp, 0) for grp in a.keys() | b.keys()}


def _settled_union(
    *,
    name: str,
    settled: QuerySet[Dispatch],
    compute: Callable[[], dict],
    added: Callable[[QuerySet, QuerySet], dict],
    extra: str,
    clears_change: bool,
) -> dict:
    """The figure ``name`` over settled dispatches ``settled`` (a query of several), kept in the
    cache under their counters, as ``kept_until_counted`` keeps it; and, when that misses, grown
    from the figure last kept over fewer of them instead of counted again over every row.

    A report's settled dispatches only grow in number (a day's stream, a journey's batch settles),
    and their rows no longer change: so the figure over ``settled`` is the one kept over an earlier
    ``base`` among them plus the pairs of the dispatches settled since that ``base``'s rows do not
    hold (``added(new, base)``, which probes only the new rows' profiles). The last figure counted
    is kept (``chain``), under the report's first dispatch and ``extra``, with what it covers: the
    settled dispatches up to an id, and the fingerprint of their counters (``stamps``); the base
    is the settled dispatches up to that id now, the new ones those past it.

    It is grown only while it is still right: the base's fingerprint is the one kept (a dispatch
    below that id settled since, one finishing out of order, changes it, and the figure is counted
    whole), retention stamps included when a clear changes the figure (``clears_change``: rows
    counted alone); otherwise, with the kept profiles counted beside the rows, a clear moves a
    dispatch's pairs from its rows to the kept ones and the figure stays; and no dispatch settled
    since was cleared (its pairs would be among the kept ones, which the figure did not count). A
    clear while growing it (a set of cleared dispatches that changed under the count) has it
    counted whole.
    """
    held_fields = COUNTER_FIELDS if clears_change else COUNTER_FIELDS[:-1]
    cleared_ones = (("pk",), Q(rows_deleted_at__isnull=False))
    read = stamps(
        settled,
        stamped={"counters": (COUNTER_FIELDS, None), "held": (held_fields, None), "cleared": cleared_ones},
        first=Min("pk"),
        top=Max("pk"),
    )
    key = f"delivery:{name}:settled:{stamp_of([extra, read['counters']])}"
    chain_key = f"delivery:{name}:chain:{stamp_of([extra, read['first']])}"
    found = cache.get_many([chain_key, key])
    chain, figures = found.get(chain_key), found.get(key)

    def keep_chain() -> None:
        cache.set(chain_key, {"upto": read["top"], "stamp": read["held"], "figures": figures}, CACHE_SECONDS)

    if figures is not None:
        if chain is None or chain.get("upto") != read["top"]:  # grown from here next (another view kept another)
            keep_chain()
        return figures
    if chain is not None and "upto" in chain:
        upto = chain["upto"]
        base = stamps(
            settled,
            stamped={"held": (held_fields, Q(pk__lte=upto))},
            cleared_since=Count("pk", filter=Q(pk__gt=upto, rows_deleted_at__isnull=False)),
        )
        if base["held"] == chain["stamp"] and not base["cleared_since"]:
            new = read["top"] > upto
            figures = (
                summed(chain["figures"], added(settled.filter(pk__gt=upto), settled.filter(pk__lte=upto)))
                if new
                else chain["figures"]
            )
            if new and stamps(settled, stamped={"cleared": cleared_ones})["cleared"] != read["cleared"]:
                figures = None
    if figures is None:
        figures = compute()
    cache.set(key, figures, CACHE_SECONDS)
    keep_chain()
    return figures


def stamp_of(value) -> str:
    return hashlib.sha256(json.dumps(value, default=str).encode()).hexdigest()


def pairs_of(rows: Callable[[QuerySet | list[int]], QuerySet], group: str | Expression) -> Callable:
    """A function giving the SQL (and its parameters) that selects ``grp`` (``group``: a Delivery
    field or an expression over one) and ``profile_id`` of ``rows(of)``, the rows of dispatches
    ``of`` (ids, or a query of them)."""

    def select(of) -> tuple[str, list]:
        counted = rows(of).annotate(grp=F(group) if isinstance(group, str) else group)
        return counted.values("grp", "profile_id").order_by().query.sql_with_params()

    return select


def settled_of(dispatch_ids: list[int]) -> list[int]:
    """Those of the dispatches that are settled: final, and no row of them queued or in flight."""
    final = list(
        Dispatch.objects.filter(among("pk", dispatch_ids), status__in=Dispatch.FINAL_STATUSES).values_list(
            "pk", flat=True
        )
    )
    busy = set(
        Delivery.objects.filter(among("dispatch_id", final), finished_at__isnull=True)
        .values_list("dispatch_id", flat=True)
        .distinct()
        .order_by()
    )
    return sorted(pk for pk in final if pk not in busy)


def _settled_profiles(*, dispatch_id: int, name: str, count: Callable[[list[int]], dict]) -> dict | None:
    """The dispatch's kept figure, counted and kept now if it is settled; None when it is not.

    The dispatch's row is held with a key-share lock while counting (PostgreSQL): retention, which
    takes the row's update lock before deleting rows, waits, so no figure is kept from rows it
    deleted meanwhile; counters and opens (no-key updates) do not wait.
    """
    from django.db import connection, transaction

    kept = DispatchProfiles.objects.filter(dispatch_id=dispatch_id, name=name).values_list("counts", flat=True).first()
    if kept is not None:
        return {grp: n for grp, n in kept}
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT id FROM delivery_dispatch WHERE id = %s FOR KEY SHARE", [dispatch_id])
        if not settled_of([dispatch_id]):
            return None
        figures = count([dispatch_id])
        DispatchProfiles.objects.bulk_create(
            [DispatchProfiles(dispatch_id=dispatch_id, name=name, counts=[[grp, n] for grp, n in figures.items()])],
            ignore_conflicts=True,
        )
    return figures


def rows_deleted(dispatches: QuerySet) -> dict | None:
    """Of these dispatches, those whose per-device rows retention deleted: {"sends": n,
    "last_finished_at": when the latest of them finished}; None when none. One query."""
    from django.db.models import Count, Max

    cleared = dispatches.filter(rows_deleted_at__isnull=False).aggregate(sends=Count("pk"), last=Max("finished_at"))
    return {"sends": cleared["sends"], "last_finished_at": cleared["last"]} if cleared["sends"] else None


def rows_deleted_html(cleared: dict | None, time_zone: str, *, per_profile: str) -> str:
    """The report's sentence on sends whose rows retention deleted (``rows_deleted``): the totals
    count them, and so do the figures counted per profile (``per_profile`` names them), their
    profiles kept (``delivery.kept``)."""
    from django.utils.html import format_html

    from config.zones import zoned

    if not cleared:
        return ""
    return format_html(
        '<p class="rows-deleted">The per-device rows of {} send{}, the latest finished {}, were deleted by '
        "retention: the totals count them, and so do {} (their profiles were kept), the conversions for the "
        "goal set when the rows went: a goal changed since counts only the sends whose rows remain.</p>",
        cleared["sends"],
        pluralize(cleared["sends"]),
        zoned(cleared["last_finished_at"], time_zone),
        per_profile,
    )


def grouped_count(sql: str, params: list) -> dict:
    """Run a grouped count (group, n) with a count's session settings (``config.db.count_session``),
    as segment counts are."""
    from django.db import connection, transaction

    from config.db import count_session

    with transaction.atomic(), connection.cursor() as cursor:
        count_session(cursor)
        cursor.execute(sql, params)
        return dict(cursor.fetchall())


def dispatch_held(dispatch: Dispatch) -> tuple[int, dt.datetime | None]:
    """(rows, when the first goes) of the dispatch's pushes held until the quiet hours end: queued
    saying ``quiet_hours`` until a time still to come. One query over their own index
    (``delivery_held_idx``), not over the dispatch's other rows."""
    found = Delivery.objects.filter(
        dispatch_id=dispatch.pk, reason="quiet_hours", finished_at__isnull=True, next_attempt_at__gt=Now()
    ).aggregate(rows=Count("*"), first=Min("next_attempt_at"))
    return found["rows"], found["first"]


def rollup_rows(dispatch_ids: Iterable[int] | QuerySet[Dispatch], *, by: tuple[str, ...], **filters) -> list[dict]:
    """The dispatches' rollup (ids, or a query of them: ``rollup_of``) summed by ``by`` (fields of
    ``DeliveryRollup``), each with ``n``."""
    return list(
        DeliveryRollup.objects.filter(rollup_of(dispatch_ids), **filters).values(*by).annotate(n=Sum("rows")).order_by()
    )


def _charts(of: Q | Lookup, tz: dt.tzinfo) -> dict:
    # Two grouped reads: the totals without the quarter hours (a few dozen rows, each with the
    # first and last quarter hour it was counted in: the timeline's span), and the timeline's
    # buckets of the two outcomes it draws (a few hundred rows, however long the sends went on).
    counted = Q(rows__gt=0)
    rows = list(
        DeliveryRollup.objects.filter(of)
        .values("platform", "outcome", "reason")
        .annotate(n=Sum("rows"), first=Min("period", filter=counted), last=Max("period", filter=counted))
        .order_by()
    )
    platforms = {name: dict.fromkeys(OUTCOMES, 0) for name in PLATFORMS}
    reasons: dict[tuple[str, str], int] = {}
    unreachable = 0
    for row in rows:
        figures = platforms[row["platform"] if row["platform"] in PLATFORMS else "none"]
        outcome, n = row["outcome"], row["n"]
        if outcome in OUTCOMES:
            figures[outcome] += n
        if outcome in ("failed", "skipped"):
            key = (outcome, row["reason"] or "unspecified")
            reasons[key] = reasons.get(key, 0) + n
            if outcome == "skipped" and (
                row["reason"] in UNREACHABLE_REASONS
                # A holdout row without a device: written by a resolve before the holdout took only
                # the rows that would be sent (a phone not opted in is not told apart there).
                or (row["reason"] == "holdout" and row["platform"] == "none")
            ):
                unreachable += n
    totals = {name: sum(platforms[p][name] for p in PLATFORMS) for name in OUTCOMES}
    shown = [p for p in PLATFORMS if platforms[p]["targeted"]]
    return {
        "timeline": _timeline(of, rows, tz),
        "platforms": {
            "labels": [PLATFORM_NAMES[p] for p in shown],
            "series": {name: [platforms[p][name] for p in shown] for name in OUTCOMES},
        },
        "funnel": {
            "labels": ["targeted", "opted in", "accepted", "opened"],
            "values": [totals["targeted"], totals["targeted"] - unreachable, totals["accepted"], totals["opened"]],
        },
        "reasons": [
            {
                "outcome": outcome,
                "reason": reason,
                "label": reason_label(reason),
                # The chart's bar, in words: the reason's label, its code when it has none.
                "bar": f"{outcome}: {reason_label(reason) or reason}",
                "count": n,
            }
            for (outcome, reason), n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))
        ],
        "time_zone": str(tz),
    }


def _timeline(of: Q | Lookup, totals: list[dict], tz: dt.tzinfo) -> dict:
    """Accepted (by when the provider accepted) and opened (by when opened) per bucket: per local
    hour from the rollup's quarter hours, or, past ``HOURLY_UP_TO``, per local day summed in SQL
    (a stream that ran for months has tens of thousands of quarter hours). The rollup's quarter
    hours fall whole into a local hour or day: every time zone's offset is a multiple of 15 minutes.
    ``totals``: the rollup summed by outcome (and more), with each group's first and last quarter hour."""
    spans = [row for row in totals if row["outcome"] in ("accepted", "opened") and row["last"] is not None]
    if not any(row["outcome"] == "accepted" for row in spans):
        return {"unit": "hour", "labels": [], "accepted": [], "opened": []}
    first = min(row["first"] for row in spans if row["outcome"] == "accepted")
    last = max(row["last"] for row in spans)
    unit = "hour" if last - first <= HOURLY_UP_TO else "day"
    drawn = DeliveryRollup.objects.filter(of, outcome__in=("accepted", "opened"))
    if unit == "hour":
        rows = list(drawn.values("period", "outcome").annotate(n=Sum("rows")).order_by())
    else:
        days = drawn.annotate(day=Trunc("period", "day", tzinfo=tz)).values("day", "outcome").annotate(n=Sum("rows"))
        rows = [{"period": row["day"], "outcome": row["outcome"], "n": row["n"]} for row in days.order_by()]
    accepted = [row for row in rows if row["outcome"] == "accepted" and row["n"]]
    opened = [row for row in rows if row["outcome"] == "opened" and row["n"]]
    step = dt.timedelta(hours=1) if unit == "hour" else dt.timedelta(days=1)
    start, end = _bucket(first, unit, tz), _bucket(last, unit, tz)
    buckets = []
    at = start
    while at <= end and len(buckets) < MOST_BUCKETS:
        buckets.append(at)
        # Days step past the next midnight and back to it (days of 23 or 25 hours); hours step in UTC.
        nxt = at + step + dt.timedelta(hours=2) if unit == "day" else at.astimezone(dt.UTC) + step
        at = _bucket(nxt, unit, tz)
    # Keyed by the instant each bucket begins: two local datetimes of one zone compare by their wall
    # time, so the hour the clocks repeat (02:00 CEST, then 02:00 CET) would be one key, and the
    # first of the two would read nothing while the second counted both.
    index = {bucket.astimezone(dt.UTC): i for i, bucket in enumerate(buckets)}
    series = {"accepted": [0] * len(buckets), "opened": [0] * len(buckets)}
    for name, selection in (("accepted", accepted), ("opened", opened)):
        for row in selection:
            i = index.get(_bucket(row["period"], unit, tz).astimezone(dt.UTC))
            if i is not None:
                series[name][i] += row["n"]
    shape = "%Y-%m-%d %H:00" if unit == "hour" else "%Y-%m-%d"
    labels = [bucket.strftime(shape) for bucket in buckets]
    repeated = {label for label, n in Counter(labels).items() if n > 1}
    # An hour the clocks repeat is told apart by its zone's abbreviation (02:00 CEST, 02:00 CET).
    labels = [
        f"{label} {bucket:%Z}" if label in repeated else label for label, bucket in zip(labels, buckets, strict=True)
    ]
    return {"unit": unit, "labels": labels, **series}


def _bucket(moment: dt.datetime, unit: str, tz: dt.tzinfo) -> dt.datetime:
    local = timezone.localtime(moment, tz)
    if unit == "hour":
        return local.replace(minute=0, second=0, microsecond=0)
    # zoneinfo: the offset of that midnight; its first, where the clocks repeat it (Havana's 1 November)
    return local.replace(hour=0, minute=0, second=0, microsecond=0, fold=0)


STEP_COUNTERS = ("entered", "waiting", "sent", "accepted", "skipped", "exited")


def step_series(stats: dict[str, dict]) -> dict:
    """A journey version's per-step counters (``version_step_stats``) as chart series: entered,
    waiting now, sent, accepted, skipped (all reasons) and exited, in the graph's order."""
    labels = list(stats)
    series = {name: [] for name in STEP_COUNTERS}
    for step in labels:
        counts = stats[step]
        for name in STEP_COUNTERS:
            value = counts.get(name, 0)
            series[name].append(sum(value.values()) if isinstance(value, dict) else value)
    return {"labels": labels, "series": series}


def report_charts_html(charts: dict) -> str:
    """The charts (drawn by pushdesk/report_charts.js from the JSON script tag ``pd-report-data``),
    each with its figures as a table for those who do not see the chart; a chart of nothing (no
    push accepted, none targeted, no failure or skip) is a sentence saying so, without its canvas."""
    from django.template.loader import render_to_string

    timeline = charts["timeline"]
    steps = charts.get("steps")
    return render_to_string(
        "admin/pushdesk_report.html",
        {
            "charts": charts,
            "outcomes": OUTCOMES,
            "timeline_rows": list(zip(timeline["labels"], timeline["accepted"], timeline["opened"], strict=True)),
            "funnel_rows": list(zip(charts["funnel"]["labels"], charts["funnel"]["values"], strict=True))
            if any(charts["funnel"]["values"])
            else [],
            "platform_rows": [
                (platform, [charts["platforms"]["series"][name][i] for name in OUTCOMES])
                for i, platform in enumerate(charts["platforms"]["labels"])
            ],
            "step_names": STEP_COUNTERS,
            "step_rows": [
                (step, [steps["series"][name][i] for name in STEP_COUNTERS]) for i, step in enumerate(steps["labels"])
            ]
            if steps
            else [],
        },
    )


def _percent(value) -> str:
    return "—" if value is None else f"{value:.1%}"


def _interval(low, high) -> str:
    return "—" if low is None else f"{low:.1%} – {high:.1%}"


def _points(value) -> str:
    return "—" if value is None else f"{value * 100:+.1f} pts"


def conversions_html(rows: list[tuple[str, dict]], goal: dict, *, table_id: str) -> str:
    """A conversions table: per group (a variant, the holdout, a journey step), profiles reached,
    conversions, rate with its 95% interval, and against the holdout the difference with its
    interval and the relative uplift; the goal it counts stated above it."""
    from django.utils.html import format_html, format_html_join

    anchor = "opened" if goal["anchor"] == "opened" else "accepted"
    where = len(goal["where"])
    conditions = f", {where} property condition{pluralize(where)}" if where else ""
    body = format_html_join(
        "",
        '<tr data-group="{}"><th>{}</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>'
        "</tr>",
        [
            (
                label,
                label,
                f["reached"],
                f["conversions"],
                _percent(f["conversion_rate"]),
                _interval(f["rate_low"], f["rate_high"]),
                _points(f.get("difference")),
                _interval(f.get("difference_low"), f.get("difference_high")).replace("%", " pts")
                if f.get("difference_low") is not None
                else "—",
                _percent(f.get("uplift")) if f.get("uplift") is None else f"{f['uplift']:+.1%}",
            )
            for label, f in rows
        ],
    )
    return format_html(
        '<div id="{}" class="conversions"><p>Conversions: <strong>{}</strong>{} within {} h after the push was {}.</p>'
        "<table><thead><tr><th></th><th>reached</th><th>conversions</th><th>rate</th><th>95% interval</th>"
        "<th>vs holdout</th><th>95% interval</th><th>uplift</th></tr></thead>{}</table></div>",
        table_id,
        goal["event"],
        conditions,
        goal["window_hours"],
        anchor,
        body,
    )
