from django.db import migrations, models
from django.db.models import Max, Min, Q


def bounds_of_existing(apps, schema_editor):
    """Each dispatch with rows gets the ids they lie between, read in one pass over the deliveries:
    the lower bound for every one (later rows take larger ids), the upper one for those no row can
    be added to (finished, or a bulk run whose audience is resolved)."""
    Dispatch = apps.get_model("delivery", "Dispatch")
    Delivery = apps.get_model("delivery", "Delivery")
    closed = set(
        Dispatch.objects.filter(
            Q(status__in=("done", "stopped", "failed")) | Q(standing=False, status="sending")
        ).values_list("pk", flat=True)
    )
    changed = []
    for row in Delivery.objects.order_by().values("dispatch_id").annotate(low=Min("id"), high=Max("id")):
        dispatch = Dispatch(pk=row["dispatch_id"], rows_after_id=row["low"] - 1)
        dispatch.rows_until_id = row["high"] if row["dispatch_id"] in closed else None
        changed.append(dispatch)
    Dispatch.objects.bulk_update(changed, ["rows_after_id", "rows_until_id"], batch_size=1000)


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
