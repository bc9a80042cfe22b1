"""The sums of finished dispatches' figures that ``/metrics`` adds the running and recent ones to."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("operations", "0002_audit_retention")]

    operations = [
        migrations.CreateModel(
            name="SendTotals",
            fields=[
                ("id", models.PositiveSmallIntegerField(default=1, editable=False, primary_key=True, serialize=False)),
                ("through", models.DateTimeField(blank=True, help_text="None: nothing summed yet.", null=True)),
                ("sends", models.JSONField(default=dict, help_text="{app id: {outcome: count}}")),
                (
                    "platform_sends",
                    models.JSONField(default=dict, help_text="{app id: {platform: {outcome: count}}}"),
                ),
                ("retries", models.JSONField(default=dict, help_text="{reason: count}")),
            ],
            options={
                "verbose_name_plural": "send totals",
                "constraints": [
                    models.CheckConstraint(condition=models.Q(("id", 1)), name="operations_sendtotals_single_row")
                ],
            },
        ),
    ]
