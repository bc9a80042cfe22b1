"""Per-profile report figures that outlive retention.

A report's totals are summed from the rollup, which retention keeps; its per-profile figures
(profiles per variant, profiles reached, conversions) count distinct profiles over the deliveries,
which retention deletes. Before it deletes a dispatch's rows, retention keeps each profile those
figures count, once per report, figure and group (``KeptProfile``); the reports count the union of
the rows still there and the kept profiles, so a profile reached by an old send and a new one is
still counted once.

A report that reads kept profiles names its ``Scope``: the scope's key, and how a group's value
comes back from the text it is kept as.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

NO_GROUP = ""  # a group without a value (a campaign without variants) is kept as ""


@dataclass(frozen=True)
class Scope:
    """The report profiles are kept for: ``key`` (``campaign:<id>``, ``journey_version:<id>``) and
    ``decode``, the group's value from its kept text."""

    key: str
    decode: Callable[[str], Any]

    @classmethod
    def campaign(cls, campaign_id: int) -> Scope:
        return cls(f"campaign:{campaign_id}", _variant)

    @classmethod
    def journey_version(cls, version_id: int) -> Scope:
        return cls(f"journey_version:{version_id}", _step)


def _variant(text: str) -> int | None:
    return None if text == NO_GROUP else int(text)


def _step(text: str) -> str | None:
    return None if text == NO_GROUP else text


def goal_names(goal, group_key: str) -> tuple[str, str]:
    """The kept figures of a conversion goal (a ``delivery.conversions.Goal``) grouped by
    ``group_key``: the profiles reached, and those that converted. The goal's fingerprint is in both
    names: a goal changed after rows were deleted counts the rows still there only, its reached
    profiles and its conversions alike, never a rate over profiles another goal's rows reached."""
    fingerprint = hashlib.sha256(json.dumps(goal.as_dict(), sort_keys=True).encode()).hexdigest()[:16]
    return f"reached:{fingerprint}:{group_key}", f"converted:{fingerprint}:{group_key}"


def as_text(sql: str) -> str:
    """``sql`` (selecting ``grp`` and ``profile_id``) with its group as kept: text, "" for none."""
    return f"SELECT COALESCE(CAST(r.grp AS TEXT), '') AS grp, r.profile_id FROM ({sql}) r"  # noqa: S608 (the ORM's SQL)


# No (grp, profile_id) pair: what a set of dispatches none of which holds rows selects.
NO_PAIRS = "SELECT NULL AS grp, CAST(NULL AS BIGINT) AS profile_id WHERE 1 = 0"
# The profiles kept for the figure (scope, name): grp, profile_id.
KEPT = (
    "SELECT f.grp, k.profile_id FROM delivery_keptprofile k JOIN delivery_keptfigure f ON f.id = k.figure_id "
    "WHERE f.scope = %s AND f.name = %s"
)
# Not among them: a condition on a row's ``grp`` (as text) and ``profile`` expressions; its
# parameters are the scope and the name.
NOT_KEPT = (
    "NOT EXISTS (SELECT 1 FROM delivery_keptprofile k JOIN delivery_keptfigure f ON f.id = k.figure_id "
    "WHERE f.scope = %s AND f.name = %s AND f.grp = {grp} AND k.profile_id = {profile})"
)


def counted_with_kept(sql: str, params: list, *, scope: Scope, name: str) -> tuple[str, list]:
    """A grouped count (grp as text, profiles) of the union of ``sql``'s (grp, profile_id) pairs and
    the profiles kept for the scope's figure ``name``, each pair once: the kept ones counted through
    their key, the others only where not kept."""
    return (
        f"SELECT grp, sum(n) FROM (SELECT grp, count(*) AS n FROM ({KEPT}) kept GROUP BY grp UNION ALL "  # noqa: S608 (the ORM's SQL)
        f"SELECT p.grp, count(p.profile_id) FROM (SELECT DISTINCT grp, profile_id FROM ({as_text(sql)}) t) p "
        f"WHERE {NOT_KEPT.format(grp='p.grp', profile='p.profile_id')} GROUP BY p.grp) c GROUP BY grp",
        [scope.key, name, *params, scope.key, name],
    )


def decoded(counts: dict, scope: Scope) -> dict:
    return {scope.decode(grp): int(n) for grp, n in counts.items()}


def figures_of(kind: str, source_id: int | None) -> tuple[Scope, list[tuple[str, Callable[[list[int]], tuple]]]] | None:
    """The report a dispatch of this kind and source counts in, and its per-profile figures: each
    figure's name with the function that selects its (grp, profile_id) pairs among given dispatches'
    rows (the conversions' under the goal its campaign or journey names now). None for a dispatch no
    report counts per profile (a test send)."""
    from delivery.conversions import Goal, converted_select, reached_rows
    from delivery.models import Dispatch
    from delivery.reports import pairs_of as pairs

    if source_id is None:
        return None
    if kind in (Dispatch.Kind.CAMPAIGN, Dispatch.Kind.API_TRIGGER):
        from campaigns.models import Campaign
        from campaigns.reports import VARIANT_PROFILES, variant_rows

        campaign = Campaign.objects.filter(pk=source_id).first()
        if campaign is None:
            return None
        scope, group, group_key = Scope.campaign(source_id), "variant", "variant"
        figures = [(VARIANT_PROFILES, pairs(variant_rows, group))]
        goal = Goal.of(campaign)
    elif kind == Dispatch.Kind.JOURNEY:
        from journeys.models import JourneyVersion
        from journeys.selectors import JOURNEY_STEP, journey_step

        version = JourneyVersion.objects.filter(pk=source_id).select_related("journey").first()
        if version is None:
            return None
        scope, group, group_key = Scope.journey_version(source_id), journey_step(), JOURNEY_STEP
        figures = []
        goal = Goal.of(version.journey)
    else:
        return None
    if goal is not None:
        reached_name, converted_name = goal_names(goal, group_key)
        figures.append((reached_name, pairs(reached_rows, group)))
        figures.append((converted_name, lambda of: converted_select(of, goal=goal, group=group)))
    return scope, figures


# A send of more rows than this has its pairs selected once into a temporary table; a smaller one
# (a journey's batch) selects them twice rather than create a table (a catalog write) per send.
TEMPORARY_FROM_ROWS = 10_000


def keep_profiles(*, dispatch_id: int, kind: str, source_id: int | None, rows: int) -> int:
    """Keep the profiles the dispatch's ``rows`` rows count in its report's per-profile figures,
    before retention deletes them (in its transaction). Returns how many kept profiles were added.

    Each figure's groups, then its profiles, are added to what is kept, those kept already left as
    they are; in the key's order (each row then lands beside the last in the key's index: 30 % less
    time at 1,000,000 rows). ``bench/conversions.py --retention`` times it."""
    from django.db import connection

    found = figures_of(kind, source_id)
    if found is None:
        return 0
    scope, figures = found
    added = 0
    with connection.cursor() as cursor:
        for name, select in figures:
            selected = select([dispatch_id])
            if selected is None:
                continue
            sql, params = selected
            pairs = f"SELECT DISTINCT k.grp, k.profile_id FROM ({as_text(sql)}) k WHERE k.profile_id IS NOT NULL"  # noqa: S608 (the ORM's SQL)
            big = rows > TEMPORARY_FROM_ROWS
            if big:
                cursor.execute(f"CREATE TEMPORARY TABLE pushdesk_kept_pairs AS {pairs}", params)
                source, source_params = "pushdesk_kept_pairs", []
            else:
                source, source_params = f"({pairs})", params
            # "WHERE true": SQLite reads an ON CONFLICT after a bare FROM as a join's condition.
            figure_insert = (
                "INSERT INTO delivery_keptfigure (scope, name, grp) SELECT DISTINCT %s, %s, s.grp "
                "FROM {} s WHERE true ORDER BY 3 ON CONFLICT DO NOTHING"
            )
            cursor.execute(figure_insert.format(source), [scope.key, name, *source_params])  # noqa: S608 (the ORM's SQL)
            profile_insert = (
                "INSERT INTO delivery_keptprofile (figure_id, profile_id) SELECT f.id, p.profile_id "
                "FROM {} p JOIN delivery_keptfigure f ON f.scope = %s AND f.name = %s AND f.grp = p.grp "
                "WHERE true ORDER BY f.id, p.profile_id ON CONFLICT DO NOTHING"
            )
            cursor.execute(profile_insert.format(source), [*source_params, scope.key, name])  # noqa: S608 (the ORM's SQL)
            added += max(cursor.rowcount, 0)
            if big:  # a failure rolls back the caller's transaction, the table's creation with it
                cursor.execute("DROP TABLE pushdesk_kept_pairs")
    return added
