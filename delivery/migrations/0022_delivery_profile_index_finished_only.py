from django.db import migrations, models

from config.db import AddIndexConcurrentlyOnPostgres

# The profile index held every row, so each row a resolve wrote (a million at once) and each row
# a trigger appended cost an entry in it before any push was sent. Its readers want finished rows
# (the frequency cap's window, a device's history); rows still on their way are read through
# their running dispatch. A bare insert of a million rows: 2.5–2.8 s against 3.4–3.6 s with it.
# The deliveries are the biggest table: on PostgreSQL the new index is built CONCURRENTLY (sends
# go on meanwhile), then the old one is dropped.


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("delivery", "0021_delivery_device_kept_unindexed"),
    ]

    operations = [
        AddIndexConcurrentlyOnPostgres(
            model_name="delivery",
            index=models.Index(
                condition=models.Q(("finished_at__isnull", False)),
                fields=["profile", "finished_at"],
                name="delivery_profile_finished_idx",
            ),
        ),
        migrations.RemoveIndex(model_name="delivery", name="delivery_profile_recent_idx"),
    ]
