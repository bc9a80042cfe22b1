"""A campaign's approved version keeps the name its sends give the content (``context.campaign.name``):
versions approved before read the row's, so a rename reworded their sends. They keep the name the
campaign has now, the one their last sends gave. Going back leaves it: it is read only when present.
"""

from django.db import migrations


def forwards(apps, schema_editor):
    Campaign = apps.get_model("campaigns", "Campaign")
    versions = Campaign.objects.exclude(approved_version={}).values_list("pk", "name", "approved_version")
    for pk, name, version in versions.iterator():
        if version and "name" not in version:
            Campaign.objects.filter(pk=pk).update(approved_version={**version, "name": name})


class Migration(migrations.Migration):
    dependencies = [
        ("campaigns", "0018_approved_app_index"),
    ]

    operations = [
        migrations.RunPython(forwards, migrations.RunPython.noop),
    ]
