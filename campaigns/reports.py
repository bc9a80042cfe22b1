"""Campaign reports: targeted, accepted, failed and skipped by reason, opened, open rate; the charts' figures."""

from __future__ import annotations

import csv
import io

from django.db.models import Count, Q

from campaigns.models import Campaign


def _dispatches(campaign: Campaign):
    from delivery.models import Dispatch

    return Dispatch.objects.filter(
        source_id=campaign.pk, kind__in=(Dispatch.Kind.CAMPAIGN, Dispatch.Kind.API_TRIGGER)
    ).order_by("-id")


def campaign_report(campaign: Campaign) -> dict:
    """Counts over every dispatch of the campaign (test sends excluded), in two grouped queries."""
    from delivery.models import Delivery

    dispatches = list(_dispatches(campaign).values("id", "label", "status", "created_at", "finished_at"))
    ids = [d["id"] for d in dispatches]
    rows = Delivery.objects.filter(dispatch_id__in=ids)
    by_status_reason = rows.values("status", "reason").annotate(n=Count("id")).order_by()
    totals = {"accepted": 0, "failed": 0, "skipped": 0, "unknown": 0, "pending": 0}
    failed_by_reason: dict[str, int] = {}
    skipped_by_reason: dict[str, int] = {}
    for row in by_status_reason:
        status, reason, n = row["status"], row["reason"] or "unspecified", row["n"]
        if status in ("queued", "sending"):
            totals["pending"] += n
        else:
            totals[status] += n
        if status == "failed":
            failed_by_reason[reason] = failed_by_reason.get(reason, 0) + n
        elif status == "skipped":
            skipped_by_reason[reason] = skipped_by_reason.get(reason, 0) + n
    per_dispatch = {
        row["dispatch_id"]: row
        for row in rows.values("dispatch_id")
        .annotate(
            targeted=Count("id"),
            accepted=Count("id", filter=Q(status="accepted")),
            opened=Count("id", filter=Q(opened_at__isnull=False)),
        )
        .order_by()
    }
    opened = sum(r["opened"] for r in per_dispatch.values())
    targeted = sum(totals.values())
    return {
        "targeted": targeted,
        **totals,
        "opened": opened,
        "open_rate": round(opened / totals["accepted"], 4) if totals["accepted"] else None,
        "failed_by_reason": dict(sorted(failed_by_reason.items(), key=lambda kv: -kv[1])),
        "skipped_by_reason": dict(sorted(skipped_by_reason.items(), key=lambda kv: -kv[1])),
        "dispatches": [
            {
                "id": d["id"],
                "label": d["label"],
                "status": d["status"],
                "created_at": d["created_at"],
                "finished_at": d["finished_at"],
                "targeted": per_dispatch.get(d["id"], {}).get("targeted", 0),
                "accepted": per_dispatch.get(d["id"], {}).get("accepted", 0),
                "opened": per_dispatch.get(d["id"], {}).get("opened", 0),
            }
            for d in dispatches
        ],
    }


def campaign_charts(campaign: Campaign) -> dict:
    """The report charts' figures over every dispatch of the campaign (test sends excluded)."""
    from delivery.reports import report_charts

    return report_charts(dispatch_ids=_dispatches(campaign).values_list("id", flat=True))


def _cell(value) -> str:
    """A CSV cell a spreadsheet will not run as a formula."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def campaign_report_csv(campaign: Campaign) -> str:
    """The report as CSV: one summary block, then one line per dispatch."""
    report = campaign_report(campaign)
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
    writer.writerow([])
    writer.writerow(["dispatch", "label", "status", "created_at", "targeted", "accepted", "opened"])
    for d in report["dispatches"]:
        writer.writerow(
            [
                d["id"],
                _cell(d["label"]),
                d["status"],
                d["created_at"].isoformat(),
                d["targeted"],
                d["accepted"],
                d["opened"],
            ]
        )
    return out.getvalue()
