"""A campaign's missed-send window is at most 10,080 minutes (7 days): the scheduler sends an
occurrence missed during downtime at most a week late, and looks back that far for a send at each
profile's local time. Windows saved longer before are lowered to it, on the campaign and on its
approved version (no approval covers the window, so the version that sends takes it at once, as an
edit of the window does). Going back leaves them at a week.
"""

from django.db import migrations

MAX_MISSED_WINDOW_MINUTES = 7 * 24 * 60  # campaigns.schedule.MAX_MISSED_WINDOW_MINUTES, as of this migration


def forwards(apps, schema_editor):
    Campaign = apps.get_model("campaigns", "Campaign")
    Campaign.objects.filter(missed_window_minutes__gt=MAX_MISSED_WINDOW_MINUTES).update(
        missed_window_minutes=MAX_MISSED_WINDOW_MINUTES
    )
    versions = Campaign.objects.values_list("pk", "approved_version")
    for pk, version in versions.iterator():
        fields = (version or {}).get("fields") or {}
        window = fields.get("missed_window_minutes")
        if isinstance(window, int) and window > MAX_MISSED_WINDOW_MINUTES:
            fields = {**fields, "missed_window_minutes": MAX_MISSED_WINDOW_MINUTES}
            Campaign.objects.filter(pk=pk).update(approved_version={**version, "fields": fields})


class Migration(migrations.Migration):
    dependencies = [
        ("campaigns", "0015_occurrence_sent_at_approval"),
    ]

    operations = [
        migrations.RunPython(forwards, migrations.RunPython.noop),
    ]
