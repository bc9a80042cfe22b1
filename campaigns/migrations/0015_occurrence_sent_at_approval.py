"""An occurrence sent at its campaign's approval, which came after its time, is no longer labelled
"Sent late (missed during downtime)": it has its own outcome, ``sent_at_approval`` ("Sent at
approval, after its scheduled time"). Downtime keeps ``sent_late``.

The rows recorded before are relabelled when they were sent within the scheduler's five minutes
of an approval that came after their time: the campaign's first (``activated_at``) or its latest
(the approved version's ``approved_at``), the approvals kept on the campaign. Going back labels
them sent late again.
"""

import datetime as dt

from django.db import migrations, models

LATE_AFTER = dt.timedelta(minutes=5)  # campaigns.schedule.LATE_AFTER, as of this migration


def _approvals(activated_at, approved_version) -> list[dt.datetime]:
    times = [activated_at] if activated_at else []
    approved_at = (approved_version or {}).get("approved_at")
    if approved_at:
        times.append(dt.datetime.fromisoformat(approved_at))
    return times


def forwards(apps, schema_editor):
    Campaign = apps.get_model("campaigns", "Campaign")
    Occurrence = apps.get_model("campaigns", "Occurrence")
    rows = list(Occurrence.objects.filter(outcome="sent_late").values_list("pk", "campaign_id", "due_at", "fired_at"))
    approvals = {
        pk: _approvals(activated_at, approved_version)
        for pk, activated_at, approved_version in Campaign.objects.filter(
            pk__in={campaign_id for _, campaign_id, _, _ in rows}
        ).values_list("pk", "activated_at", "approved_version")
    }
    at_approval = [
        pk
        for pk, campaign_id, due_at, fired_at in rows
        if any(due_at < t <= fired_at <= t + LATE_AFTER for t in approvals.get(campaign_id, []))
    ]
    Occurrence.objects.filter(pk__in=at_approval).update(outcome="sent_at_approval")


def backwards(apps, schema_editor):
    apps.get_model("campaigns", "Occurrence").objects.filter(outcome="sent_at_approval").update(outcome="sent_late")


class Migration(migrations.Migration):
    dependencies = [
        ("campaigns", "0014_occurrence_due_index"),
    ]

    operations = [
        migrations.AlterField(
            model_name="occurrence",
            name="outcome",
            field=models.CharField(
                choices=[
                    ("sent", "Sent"),
                    ("sent_late", "Sent late (missed during downtime)"),
                    ("sent_at_approval", "Sent at approval, after its scheduled time"),
                    ("skipped_missed", "Skipped (missed for longer than the window)"),
                    ("refused", "Refused by the gate"),
                ],
                max_length=20,
            ),
        ),
        migrations.RunPython(forwards, backwards),
    ]
