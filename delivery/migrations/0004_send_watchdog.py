from django.db import migrations


def create_watchdog(apps, schema_editor):
    """The send pipeline's watchdog: every minute, expire leases and restart dispatches whose tasks were lost."""
    Schedule = apps.get_model("django_q", "Schedule")
    Schedule.objects.update_or_create(
        name="delivery watchdog",
        defaults={"func": "delivery.tasks.dispatches_watch_task", "schedule_type": "I", "minutes": 1, "repeats": -1},
    )


def remove_watchdog(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name="delivery watchdog").delete()


class Migration(migrations.Migration):
    dependencies = [
        ("delivery", "0003_send_pipeline"),
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
    ]

    operations = [migrations.RunPython(create_watchdog, remove_watchdog)]
