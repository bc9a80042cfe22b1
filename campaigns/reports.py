"""Campaign reports: targeted, accepted, failed and skipped by reason, opened, open rate; the charts' figures."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from campaigns.models import Campaign, variant_label
from config.db import among
from config.zones import zone

if TYPE_CHECKING:
    from delivery.reports import Sends

VARIANT_PROFILES = "variant_profiles"  # the profiles per variant (``delivery.reports.profiles_by``)


def variant_rows(of: list[int]):
    """The rows the profiles per variant count: those of dispatches ``of`` that sent a variant."""
    from delivery.models import Delivery

    return Delivery.objects.filter(Delivery.of_dispatches(of), variant__isnull=False)


def _dispatches(campaign: Campaign):
    """The campaign's sends (its runs, its API triggers' streams; not its test sends), unordered: a
    query the report's sums join (``dispatch_campaign_sends_idx``), never read whole into Python."""
    from delivery.models import Dispatch

    return Dispatch.objects.filter(
        source_id=campaign.pk, kind__in=(Dispatch.Kind.CAMPAIGN, Dispatch.Kind.API_TRIGGER)
    ).order_by()


def campaign_report(campaign: Campaign) -> dict:
    """Figures over every dispatch of the campaign (test sends excluded), summed from their rollup
    (``delivery.reports.rollup_rows``) joined to the campaign's dispatches in the database: a
    campaign sending hourly for a year (8,760 sends) is summed in one grouped query, its sends never
    listed. The profiles per variant, which a rollup cannot sum (one profile may have several
    devices and several occurrences), are counted once and kept on each settled dispatch
    (``delivery.reports.profiles_by``); the conversions, which events make, are kept until the
    counters or the goal's events move (``delivery.conversions``): those two read which sends are
    settled (``delivery.reports.sends_read``: two queries, their ids never listed), only for a
    campaign that sent variants or has a conversion goal. So the statements and their number are
    the same whatever the number of sends. What each send made: ``campaign_report_sends``."""
    from delivery.reports import rows_deleted, sends_read

    sends = _dispatches(campaign)
    read: list = []

    def settled() -> Sends:
        if not read:
            read.append(sends_read(sends))
        return read[0]

    report = _report(sends, settled, campaign_id=campaign.pk)
    report["conversions"] = campaign_conversions(campaign, dispatch_ids=read[0] if read else None)  # read above
    # Sends whose per-device rows retention deleted: their totals stay (the rollup), and so do the
    # figures counted per profile (the profiles kept for them: ``delivery.kept``), but for
    # conversions of a goal set after the rows went.
    report["rows_deleted"] = rows_deleted(sends)
    return report


def _report(sends, settled: Callable[[], Sends], *, campaign_id: int) -> dict:
    from delivery.reasons import handed_over
    from delivery.reports import rollup_rows

    rows = rollup_rows(sends, by=("variant", "outcome", "reason"))
    totals = {"accepted": 0, "failed": 0, "skipped": 0, "unknown": 0}
    failed_by_reason: dict[str, int] = {}
    skipped_by_reason: dict[str, int] = {}
    per_variant: dict[int, dict] = {}
    targeted = opened = 0
    for row in rows:
        outcome, reason, n = row["outcome"], row["reason"] or "unspecified", row["n"]
        variant = per_variant.setdefault(row["variant"], {"sent": 0, "accepted": 0, "opened": 0})
        if outcome in variant:
            variant[outcome] += n
        if outcome in ("accepted", "unknown") or (outcome == "failed" and handed_over(row["reason"] or "")):
            variant["sent"] += n
        if outcome == "targeted":
            targeted += n
        elif outcome == "opened":
            opened += n
        else:
            totals[outcome] += n
        if outcome == "failed":
            failed_by_reason[reason] = failed_by_reason.get(reason, 0) + n
        elif outcome == "skipped":
            skipped_by_reason[reason] = skipped_by_reason.get(reason, 0) + n
    variants, holdout = _by_variant(per_variant, settled, campaign_id=campaign_id)
    return {
        "targeted": targeted,
        **totals,
        "pending": targeted - sum(totals.values()),
        "opened": opened,
        "open_rate": round(opened / totals["accepted"], 4) if totals["accepted"] else None,
        "failed_by_reason": dict(sorted(failed_by_reason.items(), key=lambda kv: -kv[1])),
        "skipped_by_reason": dict(sorted(skipped_by_reason.items(), key=lambda kv: -kv[1])),
        "variants": variants,
        "holdout": holdout,
    }


def campaign_sends(campaign: Campaign):
    """The campaign's sends (test sends excluded), the newest first: a query, for a page of them."""
    return _dispatches(campaign).order_by("-id")


def sends_counted(sends) -> list[dict]:
    """What each of these sends (a page of dispatches) made, as ``campaign_report_sends`` lines:
    their rollup summed per send in one query."""
    from django.db.models import Sum

    from delivery.models import DeliveryRollup

    sends = list(sends)
    made: dict[int, dict] = {send.pk: dict.fromkeys(LINE_OUTCOMES, 0) for send in sends}
    rows = (
        DeliveryRollup.objects.filter(among("dispatch_id", made), outcome__in=LINE_OUTCOMES)
        .values_list("dispatch_id", "outcome")
        .annotate(n=Sum("rows"))
        .order_by()
    )
    for dispatch_id, outcome, n in rows:
        made[dispatch_id][outcome] = n
    return [
        {
            "id": send.pk,
            "label": send.label,
            "status": send.status,
            "created_at": send.created_at,
            "finished_at": send.finished_at,
            **made[send.pk],
        }
        for send in sends
    ]


def campaign_report_sends(campaign: Campaign) -> Iterator[dict]:
    """What each send of the campaign (test sends excluded) made, the newest first: its id, label,
    status, when it was created and finished, and its rollup's targeted, accepted and opened. Two
    queries read as they go (the sends, and their rollup summed per send, both the newest first), so
    a campaign of thousands of sends is written out (the CSV) without all of them held at once. A
    page of them: ``sends_counted``."""
    from django.db.models import Sum

    from delivery.models import DeliveryRollup
    from delivery.reports import rollup_of

    sends = _dispatches(campaign)
    made = (
        DeliveryRollup.objects.filter(rollup_of(sends), outcome__in=LINE_OUTCOMES)
        .values_list("dispatch_id", "outcome")
        .annotate(n=Sum("rows"))
        .order_by("-dispatch_id")
        .iterator(chunk_size=SENDS_AT_ONCE)
    )
    pending = next(made, None)
    lines = sends.order_by("-id").values("id", "label", "status", "created_at", "finished_at")
    for line in lines.iterator(chunk_size=SENDS_AT_ONCE):
        counts = dict.fromkeys(LINE_OUTCOMES, 0)
        while pending is not None and pending[0] >= line["id"]:
            if pending[0] == line["id"]:
                counts[pending[1]] = pending[2]
            pending = next(made, None)
        yield line | counts


SENDS_AT_ONCE = 2000  # the rows ``campaign_report_sends`` fetches at a time


LINE_OUTCOMES = ("targeted", "accepted", "opened")


def _frozen_variants(dispatches, numbers: set[int]) -> dict[int, dict]:
    """What each variant of ``numbers`` sent, as the newest of these dispatches (a query of them)
    that froze it: read a few dispatches at a time, the newest first, until each is found, most
    often in the newest alone. A winner test's rest froze the winner with the share of everyone but
    the holdout: its share is the one approved, as the sample froze it (the rest's only when no
    other has it)."""
    contents: dict[int, dict] = {}
    rest: dict[int, dict] = {}
    newest = dispatches.order_by("-id")
    before = None
    while not numbers <= contents.keys():
        chunk = list(
            (newest if before is None else newest.filter(pk__lt=before)).values_list("pk", "variants", "sample")[
                :FROZEN_AT_ONCE
            ]
        )
        for _, variants, sample in chunk:
            found = rest if (sample or {}).get("part") == "rest" else contents
            for variant in variants or []:
                found.setdefault(variant["number"], variant)
        if len(chunk) < FROZEN_AT_ONCE:
            break
        before = chunk[-1][0]
    return {**rest, **contents}


FROZEN_AT_ONCE = 20


def _by_variant(
    per_variant: dict[int, dict], settled: Callable[[], Sends], *, campaign_id: int
) -> tuple[list[dict], dict | None]:
    """Per variant: profiles, sent (to a provider), accepted, opened, open rate; and the holdout's
    size. Sent, accepted and opened come from the rollup; the profiles from one grouped query, kept
    on a settled dispatch (``delivery.reports.profiles_by``). ([], None) for a campaign that never
    sent variants; ``settled()``: the campaign's sends as ``delivery.reports.sends_read`` reads them,
    read only then."""
    from delivery.kept import Scope
    from delivery.models import DeliveryRollup
    from delivery.reports import profiles_by

    counts = {number: row for number, row in per_variant.items() if number != DeliveryRollup.NO_VARIANT}
    if not counts:
        return [], None
    sends = settled()
    profiles = profiles_by(
        name=VARIANT_PROFILES,
        dispatch_ids=sends,
        rows=variant_rows,
        group="variant",
        scope=Scope.campaign(campaign_id),
    )
    counts.pop(0, None)
    # What each variant sent, by the newest dispatch that froze it.
    contents = _frozen_variants(sends.of, set(counts))
    variants = [
        {
            "variant": variant_label(number),
            "content": str(contents.get(number, {}).get("content", "")),
            "content_id": contents.get(number, {}).get("content_id"),  # read out by ``report_named``
            "share": contents.get(number, {}).get("share"),
            "profiles": profiles.get(number, 0),
            "sent": row["sent"],
            "accepted": row["accepted"],
            "opened": row["opened"],
            "open_rate": round(row["opened"] / row["accepted"], 4) if row["accepted"] else None,
        }
        for number, row in sorted(counts.items())
    ]
    return variants, {"profiles": profiles.get(0, 0)}


def campaign_conversions(campaign: Campaign, *, dispatch_ids: list[int] | Sends | None = None) -> dict | None:
    """The campaign's conversions (``delivery.conversions``): overall, per variant with the uplift
    against the holdout, and the holdout's rate. One grouped query; None without a conversion goal.
    ``dispatch_ids``: the sends to count (ids), or the campaign's as the caller read them
    (``delivery.reports.sends_read``); by default every send of the campaign, its test sends
    excluded."""
    from delivery.conversions import Goal, conversions_by, rate_figures, uplift_figures
    from delivery.kept import Scope

    goal = Goal.of(campaign)
    if goal is None:
        return None
    counts = conversions_by(
        dispatch_ids=_dispatches(campaign) if dispatch_ids is None else dispatch_ids,
        goal=goal,
        group="variant",
        group_key="variant",
        scope=Scope.campaign(campaign.pk),
    )
    held = counts.pop(0, None)
    sent = list(counts.values())
    overall = rate_figures(sum(r["converted"] for r in sent), sum(r["reached"] for r in sent))
    holdout = rate_figures(held["converted"], held["reached"]) if held else None
    control = (held["converted"], held["reached"]) if held else (0, 0)  # no holdout: no uplift
    variants = [
        {
            "variant": variant_label(number),
            **rate_figures(row["converted"], row["reached"]),
            **uplift_figures((row["converted"], row["reached"]), control),
        }
        for number, row in sorted(counts.items())
        if number is not None
    ]
    return {"goal": goal.as_dict(), "overall": overall, "variants": variants, "holdout": holdout}


def campaign_charts(campaign: Campaign) -> dict:
    """The report charts' figures over every dispatch of the campaign (test sends excluded), the
    timeline in the approved schedule's zone (``Campaign.schedule_zone``), as its occurrences and its
    sends: their rollup joined to the campaign's dispatches, however many."""
    from delivery.reports import report_charts

    return report_charts(dispatch_ids=_dispatches(campaign), tz=zone(campaign.schedule_zone()))


def _cell(value) -> str:
    """A CSV cell a spreadsheet will not run as a formula."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def report_named(report: dict, *, reader) -> dict:
    """``campaign_report``'s figures as ``reader`` may be told them: each variant's content by the
    name it sent with when they may see that content, "content #7" otherwise (one query)."""
    from campaigns.review import ReaderNames

    variants = report.get("variants") or []
    names = ReaderNames.of(reader, contents={v.get("content_id") for v in variants})
    named = []
    for variant in variants:
        variant = dict(variant)
        content_id = variant.pop("content_id", None)
        if content_id is not None:
            variant["content"] = names.content(content_id, variant["content"])
        named.append(variant)
    return {**report, "variants": named}


def campaign_report_csv(campaign: Campaign, *, reader) -> str:
    """The report as CSV: one summary block, then one line per dispatch, the newest first, its time
    in the approved schedule's zone (ISO 8601, with its offset), as the page shows it, written as read
    (``campaign_report_sends``); what it names, as ``reader`` may be told it (``report_named``)."""
    report = report_named(campaign_report(campaign), reader=reader)
    tz = zone(campaign.schedule_zone())
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        ["campaign", "targeted", "accepted", "failed", "skipped", "unknown", "pending", "opened", "open_rate"]
    )
    writer.writerow(
        [_cell(campaign.name)]
        + [report[k] for k in ("targeted", "accepted", "failed", "skipped", "unknown", "pending", "opened")]
        + [report["open_rate"] if report["open_rate"] is not None else ""]
    )
    writer.writerow([])
    writer.writerow(["outcome", "reason", "count"])
    for reason, n in report["failed_by_reason"].items():
        writer.writerow(["failed", _cell(reason), n])
    for reason, n in report["skipped_by_reason"].items():
        writer.writerow(["skipped", _cell(reason), n])
    if report["variants"]:
        writer.writerow([])
        writer.writerow(["variant", "content", "share", "profiles", "sent", "accepted", "opened", "open_rate"])
        for v in report["variants"]:
            writer.writerow(
                [v["variant"], _cell(v["content"]), v["share"], v["profiles"], v["sent"], v["accepted"], v["opened"]]
                + [v["open_rate"] if v["open_rate"] is not None else ""]
            )
        writer.writerow(["holdout", "", "", report["holdout"]["profiles"], 0, 0, 0, ""])
    if report["conversions"]:
        _conversions_csv(writer, report["conversions"])
    writer.writerow([])
    writer.writerow(["dispatch", "label", "status", "created_at", "targeted", "accepted", "opened"])
    for d in campaign_report_sends(campaign):
        writer.writerow(
            [
                d["id"],
                _cell(d["label"]),
                d["status"],
                d["created_at"].astimezone(tz).isoformat(),  # as the page shows it, the offset kept
                d["targeted"],
                d["accepted"],
                d["opened"],
            ]
        )
    return out.getvalue()


CONVERSION_COLUMNS = ("reached", "conversions", "conversion_rate", "rate_low", "rate_high")
UPLIFT_COLUMNS = ("uplift", "difference", "difference_low", "difference_high")


def _conversions_csv(writer, conversions: dict) -> None:
    """The conversions block: the goal, then one line per group (all, each variant, the holdout)."""
    goal = conversions["goal"]
    writer.writerow([])
    writer.writerow(["conversion_event", "window_hours", "anchor", "conditions"])
    writer.writerow([_cell(goal["event"]), goal["window_hours"], goal["anchor"], len(goal["where"])])
    writer.writerow(["group", *CONVERSION_COLUMNS, *UPLIFT_COLUMNS])
    lines = [("all", conversions["overall"])]
    lines += [(v["variant"], v) for v in conversions["variants"]]
    if conversions["holdout"]:
        lines.append(("holdout", conversions["holdout"]))
    for label, figures in lines:
        writer.writerow(
            [label] + ["" if figures.get(k) is None else figures[k] for k in CONVERSION_COLUMNS + UPLIFT_COLUMNS]
        )
