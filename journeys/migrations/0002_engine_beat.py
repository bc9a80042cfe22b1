from django.db import migrations


def create_beat(apps, schema_editor):
    """The journeys' beat: every minute, segment entries that are due, then the engine."""
    Schedule = apps.get_model("django_q", "Schedule")
    Schedule.objects.update_or_create(
        name="journeys tick",
        defaults={"func": "journeys.tasks.journeys_tick_task", "schedule_type": "I", "minutes": 1, "repeats": -1},
    )


def remove_beat(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name="journeys tick").delete()


class Migration(migrations.Migration):
    dependencies = [
        ("journeys", "0001_initial"),
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
    ]

    operations = [migrations.RunPython(create_beat, remove_beat)]
