"""The deliveries' index on ``finished_at`` alone (``delivery_finished_idx``) goes: it served the
home page's last day of outcomes and the last hour's provider health, which sum the rollup now,
and nothing else reads rows by that time without their send or profile (whose own indexes serve
it). Every outcome written added an entry to it.

On PostgreSQL the index is dropped CONCURRENTLY, so sends go on meanwhile.
"""

from django.db import migrations

from config.db import RemoveIndexConcurrentlyOnPostgres


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("delivery", "0026_delivery_dispatch_opened_index")]

    operations = [RemoveIndexConcurrentlyOnPostgres(model_name="delivery", name="delivery_finished_idx")]
