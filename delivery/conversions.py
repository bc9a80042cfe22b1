"""Conversions: which reached profiles did the conversion event within the window, and the statistics.

A campaign or a journey may name a conversion goal (``ConversionGoal``): an event, optional
property conditions (the audiences' event rule, compiled by its compiler) and a window after the
anchor (the delivery accepted, or opened). Attribution is grouped SQL over the dispatches'
deliveries (the reached profiles kept on each settled dispatch: ``delivery.reports.profiles_by``),
hash-joined by profile to the goal's events (read index-only from the events' (name, occurred_at)
INCLUDE (profile_id) index): per group, the profiles reached and those that converted.

The holdout is sent nothing: its anchor is the time its row was settled, when the others were
sent. Its rows are only those that would have been sent (a phone that allows notifications; the
others keep ``no_device`` / ``not_opted_in``, as in the variants), so it is compared with the
variants' reached profiles on the same footing: profiles a push could reach. Rates carry a Wilson score interval; each variant's uplift against the holdout carries
Newcombe's interval for a difference of two proportions (built from the two Wilson intervals).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.core.exceptions import ValidationError
from django.db.models import Case, F, Min, Q, QuerySet, When

from config.db import among
from delivery.models import ConversionGoal
from delivery.reports import Sends

if TYPE_CHECKING:
    from delivery.kept import Scope

Z_95 = 1.959963984540054  # the normal quantile for a two-sided 95% interval
MAX_WINDOW_HOURS = 24 * 90
MAX_CONDITIONS = 5


@dataclass(frozen=True)
class Goal:
    """A conversion goal as the attribution reads it."""

    event: str
    where: tuple[dict, ...]
    window_hours: int
    anchor: str

    @classmethod
    def of(cls, owner: ConversionGoal) -> Goal | None:
        """The goal a campaign or journey names; None when it names no conversion event."""
        if not owner.conversion_event:
            return None
        return cls(
            event=owner.conversion_event,
            where=tuple(owner.conversion_where or ()),
            window_hours=owner.conversion_window_hours,
            anchor=owner.conversion_anchor,
        )

    def as_dict(self) -> dict:
        return {
            "event": self.event,
            "where": list(self.where),
            "window_hours": self.window_hours,
            "anchor": self.anchor,
        }


def conversion_check(*, event: str, where: list, window_hours: int, anchor: str) -> None:
    """Check a conversion goal; raises ValidationError naming the field and the rule broken.

    An empty event means no goal (the other fields are then ignored). The property conditions are
    those of a segment's event rule (``where``), checked by the rules' validator.
    """
    from audiences.rules.schema import RulesInvalid
    from audiences.rules.validation import rules_validate

    if not event:
        if where:
            raise ValidationError({"conversion_event": "Property conditions need a conversion event."})
        return
    if len(event) > 100 or event != event.strip():
        raise ValidationError(
            {"conversion_event": "The event name is at most 100 characters, without spaces around it."}
        )
    if anchor not in ConversionGoal.Anchor.values:
        raise ValidationError({"conversion_anchor": f"Use one of {', '.join(ConversionGoal.Anchor.values)}."})
    if isinstance(window_hours, bool) or not isinstance(window_hours, int) or not 1 <= window_hours <= MAX_WINDOW_HOURS:
        raise ValidationError(
            {"conversion_window_hours": f"The window is a whole number of hours from 1 to {MAX_WINDOW_HOURS}."}
        )
    if not isinstance(where, list) or len(where) > MAX_CONDITIONS:
        raise ValidationError({"conversion_where": f"At most {MAX_CONDITIONS} property conditions."})
    try:
        rules_validate({"event": event, "where": where})
    except RulesInvalid as exc:
        messages = [f"{e.path.replace('rules.where', 'condition ')}: {e.message}" for e in exc.errors]
        raise ValidationError({"conversion_where": messages}) from exc


# The figures kept over ``reached_rows`` (on settled dispatches, in the cache) carry this in their
# names: 2 since the holdout's rows without a device are not reached, so figures kept when they
# were are not read as today's.
REACHED_ROWS = "reached2"


def reached_rows(of: list[int] | QuerySet):
    """The rows of dispatches ``of`` that reached their profile: accepted by the provider, or a
    holdout row (variant 0, skipped: a phone that allows notifications, which the holdout kept
    from the push). A holdout row without a device, which a resolve wrote before the holdout took
    only the rows that would be sent, reached nobody: the report's funnel leaves it out of
    its opted in too (``delivery.reports``), so the conversions' holdout and the funnel agree."""
    from delivery.models import Delivery

    holdout = Q(variant=0, status=Delivery.Status.SKIPPED, reason="holdout", device__isnull=False)
    return Delivery.objects.filter(Delivery.of_dispatches(of), Q(status=Delivery.Status.ACCEPTED) | holdout)


def converted_select(
    of: list[int] | QuerySet,
    *,
    goal: Goal,
    group: str | F,
    first_sent: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> tuple[str, list] | None:
    """The SQL selecting each (grp, profile_id) among the reached rows of dispatches ``of`` that
    converted under ``goal``, with its parameters; None when none of them holds rows.
    ``first_sent``: the earliest creation of those still holding rows, and ``until`` the end of the
    latest anchor's window, when the caller read them.

    The deliveries are joined to the events (a hash join, not a probe per delivery): the events
    read are only the goal's, from the first dispatch's creation (no anchor is earlier) to the end
    of the latest anchor's window (``_last_window_end``), through the events' (name, occurred_at) index.
    """
    parts = _converted_parts(of, goal=goal, group=group, first_sent=first_sent, until=until)
    if parts is None:
        return None
    (candidates_sql, candidates_params), (events_sql, events_params) = parts
    return (
        f"""
        SELECT DISTINCT r.grp, r.profile_id
        FROM ({candidates_sql}) r JOIN ({events_sql}) e ON e.profile_id = r.profile_id
        WHERE e.occurred_at >= r.anchor AND e.occurred_at < r.window_end
        """,  # noqa: S608 (the parts are the ORM's SQL, their values parameters)
        [*candidates_params, *events_params],
    )


def _converted_parts(
    of: list[int] | QuerySet,
    *,
    goal: Goal,
    group: str | F,
    first_sent: dt.datetime | None,
    until: dt.datetime | None,
    events_where: Q | None = None,
    rows_where: Q | None = None,
) -> tuple[tuple[str, list], tuple[str, list]] | None:
    """The SQL of the reached rows that can convert (``grp``, ``profile_id``, ``anchor``,
    ``window_end``; ``rows_where`` narrows them) and of the goal's events that can convert them
    (``profile_id``, ``occurred_at``; ``events_where`` narrows them), each with its parameters."""
    from audiences.models import Event
    from audiences.rules.compiler import Compiler
    from delivery.models import Dispatch

    # A constant, not a subquery: the planner then sees how few events it reads, and hashes them.
    # Dispatches whose rows retention deleted have no anchor left.
    if first_sent is None:
        first_sent = Dispatch.objects.filter(among("pk", of), rows_deleted_at__isnull=True).aggregate(
            first=Min("created_at")
        )["first"]
    if first_sent is None:
        return None
    if goal.anchor == ConversionGoal.Anchor.OPENED:
        anchor = Case(When(variant=0, then=F("finished_at")), default=F("opened_at"))
    else:
        anchor = F("finished_at")
    window = dt.timedelta(hours=goal.window_hours)
    # Only rows with an anchor can convert (with the "opened" anchor: the opened ones and the holdout).
    candidates = (
        reached_rows(of)
        .annotate(grp=F(group) if isinstance(group, str) else group, anchor=anchor)
        .annotate(window_end=F("anchor") + window)
        # Said, though every reached row is finished: a probe by profile reads the finished rows'
        # index by profile, whose condition the "opened" anchor's CASE hides from the planner (it
        # then hashed every kept row's conversions instead: 380 -> 185 ms after a new send).
        .filter(anchor__isnull=False, finished_at__isnull=False)
        .values("grp", "profile_id", "anchor", "window_end")
        .order_by()
    )
    if rows_where is not None:
        candidates = candidates.filter(rows_where)
    events = Event.objects.filter(
        name=goal.event, occurred_at__gte=first_sent, occurred_at__lt=until or _last_window_end(of, goal, window)
    )
    if events_where is not None:
        events = events.filter(events_where)
    compiler = Compiler()
    for condition in goal.where:
        events = events.filter(compiler.json_condition("properties", condition["property"], condition))
    return (
        candidates.query.sql_with_params(),
        events.values("profile_id", "occurred_at").order_by().query.sql_with_params(),
    )


def conversions_by(
    *,
    dispatch_ids: Iterable[int] | QuerySet | Sends,
    goal: Goal,
    group: str | F,
    group_key: str,
    scope: Scope | None = None,
) -> dict:
    """Per value of ``group`` (a Delivery field, or an expression over it, named by ``group_key``):
    the profiles reached and the profiles that converted among dispatches ``dispatch_ids`` (ids, a
    query of them, or their ``delivery.reports.Sends`` when the caller read them). The reached profiles
    change only with the rows' outcomes, never with opens or events: a settled dispatch's are
    counted once and kept on it, others kept in the cache until a dispatch's counters move
    (``delivery.reports.profiles_by``).
    The conversions, which events make, are one grouped statement, kept in the cache until the
    counters (the opens too, with the "opened" anchor) or the goal's events in its span move
    (``_events_stamp``); on PostgreSQL, without retention's kept profiles, the settled dispatches'
    are kept and grown by new events, new opens (with the "opened" anchor) and newly settled
    dispatches, the others' added beyond them on each view (``_converted_grown``). No statement
    lists the dispatches: the database reads them from their query.

    Reached: a delivery accepted by the provider, or a holdout row (variant 0, skipped). Converted:
    a reached profile that did the goal's event, its properties meeting the conditions, at or after
    its anchor and before the anchor plus the window. With the "opened" anchor, only a delivery that
    was opened can convert (the rate stays over every profile reached, whatever the anchor); the
    holdout's anchor is always the time its row was settled.

    With ``scope`` (the report these dispatches make up), once retention deleted rows of one of
    them, the profiles it kept for the report count too (``delivery.kept``): those it kept reached
    and converted under this same goal. Otherwise the rows alone are counted, as without it.
    """
    from django.db import connection

    from delivery.kept import NO_PAIRS, counted_with_kept, decoded, goal_names
    from delivery.reports import grouped_count, kept_until_counted, profiles_by, sends_read

    sends = sends_read(dispatch_ids)  # read once for both figures
    if not sends.count:
        return {}  # never sent: nobody reached
    of = sends.of
    if not sends.cleared:
        scope = None  # nothing kept to count: the rows alone
    reached_name, converted_name = goal_names(goal, group_key)
    grown = scope is None and sends.first_sent is not None and connection.vendor == "postgresql"
    reached_counts = profiles_by(
        name=f"conversions_{REACHED_ROWS}:{group_key}",
        dispatch_ids=sends,
        rows=reached_rows,
        group=group,
        scope=scope,
        kept_name=reached_name,
    )
    if not reached_counts:
        return {}
    until = _last_window_end(of, goal, dt.timedelta(hours=goal.window_hours))
    if grown:
        converted = _converted_grown(
            sends, goal=goal, group=group, group_key=group_key, first_sent=sends.first_sent, until=until
        )
        return _reached_and_converted(reached_counts, converted)

    def count_converted() -> dict:
        select = converted_select(of, goal=goal, group=group, first_sent=sends.first_sent, until=until)
        if scope is not None:
            sql, params = select or (NO_PAIRS, [])
            return decoded(grouped_count(*counted_with_kept(sql, params, scope=scope, name=converted_name)), scope)
        if select:
            return grouped_count(f"SELECT grp, count(*) FROM ({select[0]}) c GROUP BY grp", select[1])  # noqa: S608 (the ORM's SQL)
        return {}

    # Kept until the rows' outcomes (their opens too, with the "opened" anchor) or the goal's
    # events that the count reads move: the events are fingerprinted from their index alone.
    converted_counts = (
        kept_until_counted(
            name=f"conversions_converted:{REACHED_ROWS}:{group_key}",
            dispatch_ids=of,
            compute=count_converted,
            extra=json.dumps(
                [
                    goal.as_dict(),
                    converted_name if scope is not None else None,
                    _events_stamp(goal, since=sends.first_sent, until=until),
                ],
                default=str,
            ),
            opens_matter=goal.anchor == ConversionGoal.Anchor.OPENED,
        )
        if sends.first_sent or scope is not None
        else {}
    )
    return _reached_and_converted(reached_counts, converted_counts)


def _reached_and_converted(reached: dict, converted: dict) -> dict:
    return {grp: {"reached": n, "converted": converted.get(grp, 0)} for grp, n in reached.items()}


# What the goal's events between two times are (``_events_stamp``), in one statement's snapshot:
# how many, their profiles' sum, the first and the last (seconds), from the (name, occurred_at)
# INCLUDE (profile_id) index alone; ``{newer}`` narrows it to the events past an id (the primary key's index).
_STAMP_SQL = (
    "SELECT json_build_array(count(*), coalesce(sum(profile_id), 0), extract(epoch FROM min(occurred_at)), "
    "extract(epoch FROM max(occurred_at))) FROM {table} WHERE name = %s AND occurred_at >= %s AND occurred_at < %s{newer}"
)


def _converted_grown(
    sends: Sends,
    *,
    goal: Goal,
    group: str | F,
    group_key: str,
    first_sent: dt.datetime,
    until: dt.datetime,
) -> dict:
    """PostgreSQL: the profiles that converted per group among dispatches ``sends`` (as
    ``delivery.reports.sends_read`` read them: which are settled, which not).

    Those the settled dispatches' rows convert (final, nothing queued or in flight; all of them
    while none is) are kept in the cache with the dispatches they cover (those up to an id, and
    the fingerprint of their counters: ``delivery.reports.stamps``), the goal's
    events they were counted from (their stamp over the span counted, and the highest event id
    then) and, with the "opened" anchor, their opens (how many, and the latest). While those
    dispatches' counters but opens stay, a view counts only what changed instead of joining every
    settled row with every event again: the pairs that the events since that id convert, that the
    rows opened since the latest convert, and that the events past the span convert (a later open's
    window reaches there), none of which an earlier event and open did; and the pairs the dispatches
    settled since convert that none of the kept ones does. The figure is grown only when the stamp
    now is the kept one joined with the newer events' (none deleted, moved to another profile, or
    committed late below that id), the opens now are the kept ones and those since the latest
    (none committed late below it), and the dispatches up to the kept id are those kept, with the
    same counters but for opens (a dispatch below it that settled since, out of order, changes
    them); otherwise it is counted whole. The dispatches not settled (a
    stream calls append to, a send under way) add, on each view, the pairs their rows convert that
    no settled row does.

    Each view's figures come from one statement (one snapshot): the settled figure's stamps, its
    growth or whole count, and what the others add.
    """
    from django.core.cache import cache
    from django.db import connection, transaction
    from django.db.models import Max, Sum
    from django.db.models.functions import Coalesce

    from audiences.models import Event
    from config.db import count_session
    from delivery.models import Delivery, Dispatch
    from delivery.reports import CACHE_SECONDS, COUNTER_FIELDS, stamp_of, stamps, summed

    window = dt.timedelta(hours=goal.window_hours)
    if sends.settled_count:
        base, open_ = sends.settled, (sends.open if sends.open_ids else None)
    else:
        base, open_ = sends.of, None  # none settled: all of them, kept until their counters move
    base_until = _last_window_end(base, goal, window) if open_ is not None else until
    opens = goal.anchor == ConversionGoal.Anchor.OPENED
    opened_sum = {"opens_seen": Coalesce(Sum("opened"), 0)} if opens else {}
    read_base = stamps(base, stamped={"counters": (COUNTER_FIELDS, None)}, first=Min("pk"), top=Max("pk"), **opened_sum)
    # One figure per goal and first send, over the settled sends up to an id: grown as they grow.
    key = (
        f"delivery:conversions_grown:{REACHED_ROWS}:{group_key}:"
        f"{stamp_of([goal.as_dict(), first_sent, read_base['first']])}"
    )
    kept = cache.get(key)
    if kept is not None and "sends_upto" not in kept:
        kept = None  # kept by a version that listed its sends
    kept_base = None  # the kept sends as they are now: their counters' fingerprint, their opens
    if kept is not None:
        if kept["sends_upto"] == read_base["top"]:
            kept_base = {"counters": read_base["counters"], "opens_seen": read_base.get("opens_seen")}
        else:
            below = Q(pk__lte=kept["sends_upto"])
            kept_base = stamps(
                base,
                stamped={"counters": (COUNTER_FIELDS, below)},
                **({"opens_seen": Coalesce(Sum("opened", filter=below), 0)} if opens else {}),
            )
    table = connection.ops.quote_name(Event._meta.db_table)
    rows, dispatches = (connection.ops.quote_name(m._meta.db_table) for m in (Delivery, Dispatch))
    top = (f"SELECT coalesce(max(id), 0) FROM {table}", [])  # noqa: S608 (the model's own table)

    def stamp(end: dt.datetime, *, since=first_sent, newer_than: int | None = None) -> tuple[str, list]:
        if newer_than is None:
            return _STAMP_SQL.format(table=table, newer=""), [goal.event, since, end]
        return _STAMP_SQL.format(table=table, newer=" AND id > %s"), [goal.event, since, end, newer_than]

    def ids_of(of) -> tuple[str, list]:
        """The ids of dispatches ``of`` (a query of them), as an array the statement reads once."""
        sql, params = of.order_by().values("pk").query.sql_with_params()
        return f"ARRAY({sql})", list(params)

    def opens_of(of) -> tuple[str, list]:
        """How many opens dispatches ``of`` hold (their counters)."""
        ids, params = ids_of(of)
        return f"SELECT coalesce(sum(opened), 0) FROM {dispatches} WHERE id = ANY({ids})", params  # noqa: S608 (the model's own table)

    def latest_open(of) -> tuple[str, list]:
        """The latest open of dispatches ``of``: the latest of each, read from the opens by send (not
        a walk back through other sends' opens)."""
        ids, params = ids_of(of)
        return (
            f"SELECT max(x.opened_at) FROM unnest({ids}) d(id), LATERAL (SELECT opened_at FROM {rows} "  # noqa: S608 (the model's own table)
            "WHERE dispatch_id = d.id AND opened_at IS NOT NULL ORDER BY opened_at DESC LIMIT 1) x",
            params,
        )

    def parts(of, *, since=first_sent, end=base_until, events_where=None, rows_where=None):
        return _converted_parts(
            of, goal=goal, group=group, first_sent=since, until=end, events_where=events_where, rows_where=rows_where
        )

    # What the dispatches not settled add beyond the settled ones, read beside every figure.
    columns: dict[str, tuple[str, list]] = {}
    if open_ is not None:
        since = open_.aggregate(first=Min("created_at"))["first"]
        columns["beyond"] = _as_json(*_converted_beyond([parts(open_, since=since, end=until)], parts(base)))

    def read(**more: tuple[str, list]) -> dict:
        """The columns asked, and those of every view, from one statement: {name: value}."""
        asked = {**more, **columns}
        cursor.execute(
            "SELECT " + ", ".join(f"({sql})" for sql, _ in asked.values()),
            [param for _, params in asked.values() for param in params],
        )
        return dict(zip(asked, cursor.fetchone(), strict=True))

    def with_beyond(figures: dict, got: dict) -> dict:
        return summed(figures, dict(got["beyond"])) if "beyond" in got else figures

    def keep(figures: dict, got: dict, **entry) -> None:
        opened = [got["opens"], got["latest"]] if opens else None
        cache.set(
            key,
            {
                "sends_upto": read_base["top"],
                "counters": read_base["counters"],
                "figures": figures,
                "opened": opened,
                **entry,
            },
            CACHE_SECONDS,
        )

    with transaction.atomic(), connection.cursor() as cursor:
        count_session(cursor)
        if (
            kept is not None
            and (not opens or kept.get("opened") is not None)
            and kept_base["counters"] == kept["counters"]
        ):
            # The kept figure's sends are among these and unchanged but for opens: grown by the
            # events and opens since and the sends settled since. Its span (its rows' windows ended
            # in it) reaches as far as the latest window now (a later open's).
            end = kept["until"]
            old = base.filter(pk__lte=kept["sends_upto"])
            new = base.filter(pk__gt=kept["sends_upto"]) if read_base["top"] > kept["sends_upto"] else None
            # How far the kept sends' windows reach now: an open since may reach past the span.
            bound = max(end, base_until) if opens else end
            until_now = max(bound, base_until) if new is not None else bound
            # Every window of the rows counted ended in the span (an open committed as the figure
            # was counted may reach past it).
            covered = not opens or kept["opened"][1] is None or kept["opened"][1] + window <= end
            opens_moved = opens and kept_base["opens_seen"] != kept["opened"][0]
            if new is None and (covered or bound == end) and not opens_moved:
                got = read(stamp=stamp(end), **({"old_opens": opens_of(old)} if opens else {}))
                if got["stamp"] == kept["stamp"] and (not opens or got["old_opens"] == kept["opened"][0]):
                    return with_beyond(kept["figures"], got)
            upto = kept["upto"]
            news = [parts(old, end=end, events_where=Q(pk__gt=upto))]
            rows_before = None
            asked = {}
            if opens:  # the rows opened since the latest open then, with every event
                latest = kept["opened"][1]
                since_latest = Q(opened_at__gt=latest) if latest is not None else Q(opened_at__isnull=False)
                news.append(parts(old, end=end, rows_where=since_latest))
                rows_before = ~since_latest
                fresh_sql, fresh_params = (
                    Delivery.objects.filter(among("dispatch_id", old), since_latest)
                    .values("pk")
                    .query.sql_with_params()
                )
                asked = {
                    "old_opens": opens_of(old),
                    "fresh": (f"SELECT count(*) FROM ({fresh_sql}) f", fresh_params),  # noqa: S608 (the ORM's SQL)
                    "opens": opens_of(base),
                    "latest": latest_open(base),
                }
            if bound > end:  # events past the span: only the windows of rows opened late enough reach them
                news.append(parts(old, since=end, end=bound, rows_where=Q(opened_at__gt=end - window)))
            added = _converted_beyond(news, parts(old, end=end, events_where=Q(pk__lte=upto), rows_where=rows_before))
            if new is not None:  # what the sends settled since convert beyond the kept ones
                asked["settled_since"] = _as_json(
                    *_converted_beyond([parts(new, end=until_now)], parts(old, end=bound))
                )
            if until_now != end:  # the events past the span, whose stamp joined with the span's is the new one's
                asked["past_span"] = stamp(until_now, since=end)
            got = read(stamp=stamp(end), newer=stamp(end, newer_than=upto), top=top, added=_as_json(*added), **asked)
            opens_add_up = not opens or kept["opened"][0] + got["fresh"] == got["old_opens"]
            if _joined(kept["stamp"], got["newer"]) == got["stamp"] and opens_add_up:
                figures = summed(kept["figures"], dict(got["added"]))
                if new is not None:
                    figures = summed(figures, dict(got["settled_since"]))
                now = _joined(got["stamp"], got["past_span"]) if until_now != end else got["stamp"]
                keep(figures, got, until=until_now, upto=got["top"], stamp=now)
                return with_beyond(figures, got)
        whole_sql, whole_params = converted_select(
            base, goal=goal, group=group, first_sent=first_sent, until=base_until
        )
        whole = (f"SELECT grp, count(*) FROM ({whole_sql}) c GROUP BY grp", whole_params)  # noqa: S608 (the ORM's SQL)
        got = read(
            stamp=stamp(base_until),
            top=top,
            figures=_as_json(*whole),
            **({"opens": opens_of(base), "latest": latest_open(base)} if opens else {}),
        )
    figures = dict(got["figures"])
    keep(figures, got, until=base_until, upto=got["top"], stamp=got["stamp"])
    return with_beyond(figures, got)


def _converted_beyond(news: list[tuple], old: tuple) -> tuple[str, list]:
    """The SQL counting per group the pairs that the rows and events of any of ``news`` convert and
    that no row of ``old`` is converted by one of its events (each a ``_converted_parts``): a probe
    by profile into ``old`` for each pair ``news`` convert."""
    joins, params = [], []
    for (rows_sql, rows_params), (events_sql, events_params) in news:
        joins.append(
            f"SELECT r.grp, r.profile_id FROM ({rows_sql}) r JOIN ({events_sql}) e ON e.profile_id = r.profile_id "  # noqa: S608 (the ORM's SQL)
            "WHERE e.occurred_at >= r.anchor AND e.occurred_at < r.window_end"
        )
        params += [*rows_params, *events_params]
    (old_rows_sql, old_rows_params), (old_events_sql, old_events_params) = old
    return (
        f"""
        SELECT grp, count(*) FROM (SELECT DISTINCT grp, profile_id FROM ({" UNION ALL ".join(joins)}) u) n
        WHERE NOT EXISTS (
            SELECT 1 FROM ({old_rows_sql}) o JOIN ({old_events_sql}) oe ON oe.profile_id = o.profile_id
            WHERE o.profile_id = n.profile_id AND o.grp IS NOT DISTINCT FROM n.grp
            AND oe.occurred_at >= o.anchor AND oe.occurred_at < o.window_end
        )
        GROUP BY grp
        """,  # noqa: S608 (the parts are the ORM's SQL, their values parameters)
        [*params, *old_rows_params, *old_events_params],
    )


def _as_json(sql: str, params: list) -> tuple[str, list]:
    """A grouped count (grp, n) as one JSON array of [grp, n] pairs, to read beside other columns."""
    return f"SELECT coalesce(json_agg(json_build_array(grp, n)), '[]'::json) FROM ({sql}) f(grp, n)", params  # noqa: S608 (the ORM's SQL)


def _joined(kept: list, newer: list) -> list:
    """The stamp of two sets of events together (see ``_STAMP_SQL``)."""
    firsts = [at for at in (kept[2], newer[2]) if at is not None]
    lasts = [at for at in (kept[3], newer[3]) if at is not None]
    return [kept[0] + newer[0], kept[1] + newer[1], min(firsts, default=None), max(lasts, default=None)]


def _events_stamp(goal: Goal, *, since: dt.datetime | None, until: dt.datetime) -> list:
    """What the goal's events between ``since`` and ``until`` are, read from the events' (name,
    occurred_at) INCLUDE (profile_id) index alone (no row's properties): how many, the sum of their
    profiles, the first and the last. An event posted late, deleted or moved to another profile
    (a merge) changes it; a conversion count is kept only while it holds."""
    from django.db.models import Count, Max, Sum

    from audiences.models import Event

    if since is None:
        return []
    read = Event.objects.filter(name=goal.event, occurred_at__gte=since, occurred_at__lt=until).aggregate(
        n=Count("*"), profiles=Sum("profile_id"), first=Min("occurred_at"), last=Max("occurred_at")
    )
    return [read["n"], read["profiles"], read["first"], read["last"]]


def _last_window_end(dispatches, goal: Goal, window: dt.timedelta) -> dt.datetime:
    """No event at or after this moment can convert: the end of the latest anchor's window.

    The anchors are the reached rows' times (accepted or settled: the holdout's) or, with the
    "opened" anchor, their opens and the holdout's rows. The rollup knows the last quarter hour
    each of those outcomes happened in (a few rows read), so a campaign viewed weeks after it was
    sent reads the events of its windows only, not every event since. Without a rollup row, now
    plus the window (no anchor is later than now).
    """
    from django.db.models import Max
    from django.utils import timezone

    from delivery.models import DeliveryRollup
    from delivery.services.rollups import PERIOD_MINUTES

    bound = timezone.now() + window
    anchors = ("opened", "skipped") if goal.anchor == ConversionGoal.Anchor.OPENED else ("accepted", "skipped")
    last = DeliveryRollup.objects.filter(among("dispatch_id", dispatches), outcome__in=anchors).aggregate(
        last=Max("period")
    )["last"]
    if last is None:
        return bound
    return min(bound, last + dt.timedelta(minutes=PERIOD_MINUTES) + window)


def wilson_interval(successes: int, trials: int, *, z: float = Z_95) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion (95% by default); None without trials.

    Unlike p ± z·√(p(1−p)/n), it stays within [0, 1] and holds for small counts and rates near 0.
    """
    if trials <= 0:
        return None
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def difference_interval(a: tuple[int, int], b: tuple[int, int], *, z: float = Z_95) -> tuple[float, float] | None:
    """Newcombe's interval (method 10) for rate(a) − rate(b), each given as (successes, trials)."""
    wa, wb = wilson_interval(*a, z=z), wilson_interval(*b, z=z)
    if wa is None or wb is None:
        return None
    pa, pb = a[0] / a[1], b[0] / b[1]
    d = pa - pb
    low = d - math.sqrt((pa - wa[0]) ** 2 + (wb[1] - pb) ** 2)
    high = d + math.sqrt((wa[1] - pa) ** 2 + (pb - wb[0]) ** 2)
    return low, high


def rate_figures(converted: int, reached: int) -> dict:
    """Conversions, rate and its 95% Wilson interval, rounded for reports."""
    interval = wilson_interval(converted, reached)
    return {
        "reached": reached,
        "conversions": converted,
        "conversion_rate": round(converted / reached, 4) if reached else None,
        "rate_low": round(interval[0], 4) if interval else None,
        "rate_high": round(interval[1], 4) if interval else None,
    }


def uplift_figures(variant: tuple[int, int], holdout: tuple[int, int]) -> dict:
    """A variant against the holdout: the difference of rates (points) with its 95% interval, and the
    relative uplift (difference over the holdout's rate; None when the holdout converted nobody)."""
    interval = difference_interval(variant, holdout)
    if interval is None:
        return {"uplift": None, "difference": None, "difference_low": None, "difference_high": None}
    pv, ph = variant[0] / variant[1], holdout[0] / holdout[1]
    return {
        "uplift": round((pv - ph) / ph, 4) if ph else None,
        "difference": round(pv - ph, 4),
        "difference_low": round(interval[0], 4),
        "difference_high": round(interval[1], 4),
    }


def conversion_goal_write(
    owner: ConversionGoal,
    *,
    by,
    action: str | Callable[[ConversionGoal], str],
    event: str,
    where: list,
    window_hours: int,
    anchor: str,
) -> bool:
    """Check a goal and save it on ``owner`` (a campaign or journey locked by the caller's service),
    with an audit line of ``action`` (or of what ``action`` answers for the saved owner: whether the
    change made a revision); False when nothing changed. Raises ValidationError naming the field."""
    from accounts.services import audit

    event = (event or "").strip()
    where = list(where or [])
    conversion_check(event=event, where=where, window_hours=window_hours, anchor=anchor)
    values = {
        "conversion_event": event,
        "conversion_where": where if event else [],
        "conversion_window_hours": window_hours,
        "conversion_anchor": anchor,
    }
    if all(getattr(owner, name) == value for name, value in values.items()):
        return False
    for name, value in values.items():
        setattr(owner, name, value)
    owner.save(update_fields=list(values))
    if callable(action):
        action = action(owner)
    audit(actor=by, action=action, obj=owner, summary=Goal.of(owner).as_dict() if event else {"event": None})
    return True
