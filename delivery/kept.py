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


def with_kept(sql: str, params: list, *, scope: Scope, name: str) -> tuple[str, list]:
    """The union of ``sql``'s (grp, profile_id) pairs, as kept text, and the profiles kept for the
    scope's figure ``name``: each pair once."""
    return (
        f"{as_text(sql)} UNION SELECT grp, profile_id FROM delivery_keptprofile WHERE scope = %s AND name = %s",  # noqa: S608 (the ORM's SQL)
        [*params, scope.key, name],
    )


def decoded(counts: dict, scope: Scope) -> dict:
    return {scope.decode(grp): n for grp, n in counts.items()}


def figures_of(kind: str, source_id: int | None) -> tuple[Scope, list[tuple[str, Callable[[list[int]], tuple]]]] | None:
    """The report a dispatch of this kind and source counts in, and its per-profile figures: each
    figure's name with the function that selects its (grp, profile_id) pairs among given dispatches'
    rows (the conversions' under the goal its campaign or journey names now). None for a dispatch no
    report counts per profile (a test send)."""
    from delivery.conversions import Goal, converted_select, reached_rows
    from delivery.models import Dispatch

    def pairs(rows, group):
        def select(of: list[int]) -> tuple:
            from django.db.models import F

            counted = rows(of).annotate(grp=F(group) if isinstance(group, str) else group)
            return counted.values("grp", "profile_id").order_by().query.sql_with_params()

        return select

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


def keep_profiles(*, dispatch_id: int, kind: str, source_id: int | None) -> int:
    """Keep the profiles the dispatch's rows count in its report's per-profile figures, before
    retention deletes them (in its transaction). Returns how many kept rows were added."""
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
            insert = (
                "INSERT INTO delivery_keptprofile (scope, name, grp, profile_id) "
                "SELECT DISTINCT %s, %s, k.grp, k.profile_id FROM ({}) k WHERE k.profile_id IS NOT NULL "
                "ON CONFLICT DO NOTHING"
            )
            cursor.execute(insert.format(as_text(sql)), [scope.key, name, *params])  # noqa: S608 (the ORM's SQL)
            added += max(cursor.rowcount, 0)
    return added
