"""A row the sender found past its TTL ends ``skipped`` / ``expired``, as a held now-or-never push
does; it ended ``failed`` / ``expired (TTL over before it could be sent)``. The rows written so,
their dispatches' rollups and counters follow, and a send that failed only for them is done."""

from collections import defaultdict

from django.db import migrations
from django.db.models import F

OLD = "expired (TTL over before it could be sent)"
NONE_ACCEPTED = "The provider accepted none of its pushes."
FINAL = ("accepted", "failed", "skipped", "unknown")


def expired_as_skipped(apps, schema_editor):
    Delivery = apps.get_model("delivery", "Delivery")
    DeliveryRollup = apps.get_model("delivery", "DeliveryRollup")
    Dispatch = apps.get_model("delivery", "Dispatch")
    # The rollup (a few rows a dispatch) names the dispatches concerned: their rows are found by
    # dispatch, through its index, not by a walk over every delivery for a reason.
    dispatch_ids = set()
    for old in DeliveryRollup.objects.filter(outcome="failed", reason=OLD):
        dispatch_ids.add(old.dispatch_id)
        key = {
            "dispatch_id": old.dispatch_id,
            "period": old.period,
            "platform": old.platform,
            "variant": old.variant,
            "shard": old.shard,
        }
        merged = DeliveryRollup.objects.filter(outcome="skipped", reason="expired", **key).update(
            rows=F("rows") + old.rows
        )
        if merged:
            old.delete()
        else:
            DeliveryRollup.objects.filter(pk=old.pk).update(outcome="skipped", reason="expired")
    ids = sorted(dispatch_ids)
    for start in range(0, len(ids), 1000):
        chunk = ids[start : start + 1000]
        Delivery.objects.filter(dispatch_id__in=chunk, status="failed", reason=OLD).update(
            status="skipped", reason="expired"
        )
        # Their counters from their rollup, as the code counts them when a dispatch finishes.
        counts = defaultdict(lambda: defaultdict(int))
        per_platform = defaultdict(lambda: defaultdict(dict))
        for dispatch_id, outcome, platform, rows in DeliveryRollup.objects.filter(
            dispatch_id__in=chunk, outcome__in=FINAL
        ).values_list("dispatch_id", "outcome", "platform", "rows"):
            counts[dispatch_id][outcome] += rows
            outcomes = per_platform[dispatch_id][platform or "none"]
            outcomes[outcome] = outcomes.get(outcome, 0) + rows
        for dispatch in Dispatch.objects.filter(pk__in=chunk):
            found = counts[dispatch.pk]
            dispatch.failed, dispatch.skipped = found["failed"], found["skipped"]
            dispatch.by_platform = {p: {o: n for o, n in c.items() if n} for p, c in per_platform[dispatch.pk].items()}
            # It failed for having none accepted among rows that failed: those that only expired
            # were never sent, and it is done, as a send whose rows all expired now ends.
            if (
                dispatch.status == "failed"
                and dispatch.error == NONE_ACCEPTED
                and not found["accepted"]
                and not found["failed"] + found["unknown"]
            ):
                dispatch.status, dispatch.error = "done", ""
            dispatch.save(update_fields=["failed", "skipped", "by_platform", "status", "error"])


class Migration(migrations.Migration):
    dependencies = [("delivery", "0032_delivery_held_idx")]

    operations = [migrations.RunPython(expired_as_skipped, migrations.RunPython.noop, elidable=True)]
