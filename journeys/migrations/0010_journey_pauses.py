import datetime as dt

import django.db.models.deletion
from django.db import migrations, models


def pauses_known(apps, schema_editor):
    """The pauses known before they were kept: each resume's audit event (it names when its pause
    began), and each journey paused now."""
    AuditEvent = apps.get_model("accounts", "AuditEvent")
    ContentType = apps.get_model("contenttypes", "ContentType")
    Journey = apps.get_model("journeys", "Journey")
    JourneyPause = apps.get_model("journeys", "JourneyPause")
    pauses = []
    kind = ContentType.objects.filter(app_label="journeys", model="journey").first()
    if kind is not None:
        journeys = set(Journey.objects.values_list("pk", flat=True))
        resumes = AuditEvent.objects.filter(action="journey_resumed", object_type=kind).values_list(
            "object_id", "created_at", "summary"
        )
        for object_id, created_at, summary in resumes.iterator():
            paused_at = (summary or {}).get("paused_at")
            if not paused_at or not object_id.isdigit() or int(object_id) not in journeys:
                continue
            pauses.append(
                JourneyPause(
                    journey_id=int(object_id), paused_at=dt.datetime.fromisoformat(paused_at), ended_at=created_at
                )
            )
    for journey_id, paused_at in Journey.objects.filter(status="paused").values_list("pk", "paused_at"):
        if paused_at is not None:
            pauses.append(JourneyPause(journey_id=journey_id, paused_at=paused_at))
    JourneyPause.objects.bulk_create(pauses, batch_size=1000)


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0004_versionstamp"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("journeys", "0009_version_approved_segments"),
    ]

    operations = [
        migrations.CreateModel(
            name="JourneyPause",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("paused_at", models.DateTimeField()),
                (
                    "ended_at",
                    models.DateTimeField(blank=True, help_text="Its resume or stop; empty while paused.", null=True),
                ),
                (
                    "journey",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE, related_name="pauses", to="journeys.journey"
                    ),
                ),
            ],
            options={
                "ordering": ["journey", "paused_at"],
            },
        ),
        migrations.RunPython(pauses_known, migrations.RunPython.noop),
    ]
