"""A journey version keeps the name it was approved with, which its pushes give their content
(``context.journey.name``): they read the journey's, so a rename reworded an approved version's
pushes. Versions approved before keep the name the journey has now, the one their last pushes gave.
"""

from django.db import migrations, models
from django.db.models import OuterRef, Subquery


def forwards(apps, schema_editor):
    Journey = apps.get_model("journeys", "Journey")
    JourneyVersion = apps.get_model("journeys", "JourneyVersion")
    name = Journey.objects.filter(pk=OuterRef("journey_id")).values("name")[:1]
    JourneyVersion.objects.exclude(approved_fingerprint="").filter(approved_name="").update(
        approved_name=Subquery(name)
    )


class Migration(migrations.Migration):
    dependencies = [
        ("journeys", "0010_journey_pauses"),
    ]

    operations = [
        migrations.AddField(
            model_name="journeyversion",
            name="approved_name",
            field=models.CharField(
                blank=True,
                editable=False,
                help_text="The journey's name as approved: what its pushes give their content (context.journey.name).",
                max_length=200,
            ),
        ),
        migrations.RunPython(forwards, migrations.RunPython.noop),
    ]
