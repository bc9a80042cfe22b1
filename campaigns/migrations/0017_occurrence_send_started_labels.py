"""An occurrence's sent outcomes read "Send started": they say that its dispatch was made, not that
it delivered (the dispatch may yet fail, be stopped or skip every row). The stored values stay.
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("campaigns", "0016_missed_window_at_most_a_week"),
    ]

    operations = [
        migrations.AlterField(
            model_name="occurrence",
            name="outcome",
            field=models.CharField(
                choices=[
                    ("sent", "Send started"),
                    ("sent_late", "Send started late (missed during downtime)"),
                    ("sent_at_approval", "Send started at approval, after its scheduled time"),
                    ("skipped_missed", "Skipped (missed for longer than the window)"),
                    ("refused", "Refused by the gate"),
                ],
                max_length=20,
            ),
        ),
    ]
