from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("campaigns", "0002_scheduler_beat")]

    operations = [
        migrations.AlterModelOptions(
            name="campaign",
            options={
                "ordering": ["-updated_at", "-id"],
                "permissions": [
                    ("submit_campaign", "Can submit a campaign for review"),
                    ("approve_campaign", "Can approve and activate a campaign"),
                    ("stop_campaign", "Can stop a campaign"),
                    ("archive_campaign", "Can archive a campaign"),
                    ("duplicate_campaign", "Can duplicate a campaign"),
                    ("trigger_campaign", "Can trigger an API-triggered campaign"),
                ],
            },
        ),
    ]
