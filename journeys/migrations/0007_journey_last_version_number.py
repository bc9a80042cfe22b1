"""A journey keeps the highest version number it gave: the next version is numbered after it, a
discarded draft's number included (it was found in the audit log, which retention may empty)."""

from django.db import migrations, models
from django.db.models import Max


def numbers_given(apps, schema_editor):
    Journey = apps.get_model("journeys", "Journey")
    JourneyVersion = apps.get_model("journeys", "JourneyVersion")
    AuditEvent = apps.get_model("accounts", "AuditEvent")
    ContentType = apps.get_model("contenttypes", "ContentType")
    highest = dict(JourneyVersion.objects.values("journey_id").annotate(n=Max("number")).values_list("journey_id", "n"))
    kind = ContentType.objects.filter(app_label="journeys", model="journey").first()
    discards = (
        AuditEvent.objects.filter(object_type=kind, action="journey_draft_discarded").values_list(
            "object_id", "summary"
        )
        if kind is not None
        else []
    )
    for object_id, summary in discards:
        number = summary.get("version") if isinstance(summary, dict) else None
        if isinstance(number, int) and object_id.isdigit():
            highest[int(object_id)] = max(highest.get(int(object_id), 0), number)
    for journey_id, number in highest.items():
        if number > 1:
            Journey.objects.filter(pk=journey_id).update(last_version_number=number)


class Migration(migrations.Migration):
    dependencies = [
        ("journeys", "0006_step_stat_shards"),
        ("accounts", "0004_versionstamp"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.AddField(
            model_name="journey",
            name="last_version_number",
            field=models.PositiveIntegerField(
                default=1,
                editable=False,
                help_text="The highest version number given, a discarded draft's included: the next version's is after it.",
            ),
        ),
        migrations.RunPython(numbers_given, migrations.RunPython.noop),
    ]
