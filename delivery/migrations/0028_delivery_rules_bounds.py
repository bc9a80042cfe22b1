"""Delivery rules saved before their bounds were checked, brought within them:

- a frequency window over 8,784 hours (a year) made every send of the app fail (the window's start
  fell before year 1): it becomes 8,784, the longest a window may be;
- a frequency cap of 0 was read as no cap: it becomes empty, which says so.
"""

from django.db import migrations

WINDOW_MAX_HOURS = 366 * 24  # delivery.rules.FREQUENCY_WINDOW_MAX_HOURS when this was written


def bounded(apps, schema_editor):
    rules = apps.get_model("delivery", "DeliveryRules")
    rules.objects.filter(frequency_window_hours__gt=WINDOW_MAX_HOURS).update(frequency_window_hours=WINDOW_MAX_HOURS)
    rules.objects.filter(frequency_cap=0).update(frequency_cap=None)


class Migration(migrations.Migration):
    dependencies = [("delivery", "0027_delivery_finished_index_dropped")]

    operations = [migrations.RunPython(bounded, migrations.RunPython.noop)]
