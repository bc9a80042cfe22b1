from django.db import migrations, models

# The dispatches no row can be added to: finished, or a bulk run whose audience is resolved.
BOUNDS = """
UPDATE delivery_dispatch
SET rows_after_id = bounds.low - 1,
    rows_until_id = CASE
        WHEN delivery_dispatch.status IN ('done', 'stopped', 'failed')
          OR (NOT delivery_dispatch.standing AND delivery_dispatch.status = 'sending')
        THEN bounds.high
    END
FROM (
    SELECT dispatch_id, MIN(id) AS low, MAX(id) AS high FROM delivery_delivery GROUP BY dispatch_id
) AS bounds
WHERE delivery_dispatch.id = bounds.dispatch_id
"""


def bounds_of_existing(apps, schema_editor):
    """Each dispatch with rows gets the ids they lie between, read in one pass over the deliveries
    and written by the database itself, in one statement: the lower bound for every one (later rows
    take larger ids), the upper one for those no row can be added to. Read into Python and written
    back a thousand at a time, 300,000 dispatches took four minutes and 1.4 GB, the dispatches'
    table locked meanwhile."""
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(BOUNDS)


class Migration(migrations.Migration):
    dependencies = [
        ("delivery", "0030_dispatch_campaign_sends_index"),
    ]

    operations = [
        migrations.AddField(
            model_name="dispatch",
            name="rows_after_id",
            field=models.BigIntegerField(
                blank=True,
                editable=False,
                help_text="Every delivery of it has a larger id (set when it is made).",
                null=True,
            ),
        ),
        migrations.AddField(
            model_name="dispatch",
            name="rows_until_id",
            field=models.BigIntegerField(
                blank=True,
                editable=False,
                help_text="Every delivery of it has an id at most this (set once no row can be added to it).",
                null=True,
            ),
        ),
        migrations.RunPython(bounds_of_existing, migrations.RunPython.noop, elidable=True),
    ]
