"""An occurrence keeps whether it stood for a time of day at each profile's local time, as the
version that fired it said: its row read it from the campaign's approved version of the moment (or,
for a campaign approved before versions were kept, from its row), so a revision turning the local
time on or off reworded the occurrences fired before it (09:00 at each profile's local time read as
the moment UTC+14 got there, 20:00 the day before in Paris).

The rows recorded before say what is known best: one that made a dispatch, whether the dispatch
sent so; one that did not (skipped, refused), what the approved version says now (the campaign's
row for one approved before versions were kept), as its row reads today. Going back drops the field.
"""

from django.db import migrations, models

BATCH = 1000


def _local(campaign_id: int, versions: dict) -> bool:
    approved, row_local, row_kind = versions[campaign_id]
    fields = (approved or {}).get("fields")
    if fields:
        return bool(fields.get("at_local_time")) and fields.get("schedule_kind") != "now"
    return bool(row_local) and row_kind != "now"


def forwards(apps, schema_editor):
    Campaign = apps.get_model("campaigns", "Campaign")
    Occurrence = apps.get_model("campaigns", "Occurrence")
    rows = list(
        Occurrence.objects.filter(at_local_time__isnull=True)
        .values_list("pk", "campaign_id", "dispatch_id", "dispatch__local_time")
        .order_by("pk")
    )  # one per due send of a campaign: few
    campaign_ids = {campaign_id for _, campaign_id, _, _ in rows}
    versions = {
        pk: (approved, local, kind)
        for pk, approved, local, kind in Campaign.objects.filter(pk__in=campaign_ids).values_list(
            "pk", "approved_version", "at_local_time", "schedule_kind"
        )
    }
    changed = []
    for pk, campaign_id, dispatch_id, dispatch_local_time in rows:
        local = bool(dispatch_local_time) if dispatch_id is not None else _local(campaign_id, versions)
        changed.append(Occurrence(pk=pk, at_local_time=local))
        if len(changed) >= BATCH:
            Occurrence.objects.bulk_update(changed, ["at_local_time"])
            changed = []
    Occurrence.objects.bulk_update(changed, ["at_local_time"])


class Migration(migrations.Migration):
    dependencies = [
        ("campaigns", "0012_dispatch_labels_as_entered"),
    ]

    operations = [
        migrations.AddField(
            model_name="occurrence",
            name="at_local_time",
            field=models.BooleanField(
                blank=True,
                help_text="Whether it stood for a time of day at each profile's local time, as the version that "
                "fired it said (empty: not known, recorded before this was kept).",
                null=True,
            ),
        ),
        migrations.RunPython(forwards, migrations.RunPython.noop),
    ]
