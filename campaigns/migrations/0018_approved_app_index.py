"""The campaigns whose approved version sends to an app (a change of its delivery rules refreshes
them) are found through an index on the app their frozen version names, not by a scan."""

from django.db import migrations, models
from django.db.models.fields.json import KT
from django.db.models.functions import Cast


class Migration(migrations.Migration):
    dependencies = [
        ("campaigns", "0017_occurrence_send_started_labels"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="campaign",
            index=models.Index(
                Cast(KT("approved_version__fields__app_id"), models.BigIntegerField()),
                name="campaign_approved_app_idx",
            ),
        ),
    ]
