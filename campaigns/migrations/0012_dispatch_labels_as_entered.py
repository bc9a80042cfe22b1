"""A campaign's dispatches are labelled with when they send as the schedule was entered: in the
campaign's zone, named ("Sale v1 @ 2027-01-05 09:00 (Europe/Paris)"), or at each profile's local
time, the wall-clock time entered ("Sale v1 @ 2027-01-05 09:00 at each profile's local time").
They said the occurrence's moment in UTC ("Sale v1 @ 2027-01-05 08:00 UTC"; for a local-time
send, when UTC+14 got there). This rewrites the labels written so, one per occurrence that made a
dispatch: only a label ending in its own occurrence's due time in UTC, so a label written
otherwise is left as it is. Going back leaves the labels as they are now.
"""

import datetime as dt
import re
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.db import migrations

OLD_LABEL = re.compile(r"^(?P<head>.* v\d+) @ (?P<when>\d{4}-\d{2}-\d{2} \d{2}:\d{2}) UTC$", re.DOTALL)
BATCH = 1000


def _when(due: dt.datetime, time_zone: str, local_time: str) -> str | None:
    if local_time:
        return f"{dt.datetime.fromisoformat(local_time):%Y-%m-%d %H:%M} at each profile's local time"
    try:
        return f"{due.astimezone(ZoneInfo(time_zone)):%Y-%m-%d %H:%M} ({time_zone})"
    except (ZoneInfoNotFoundError, ValueError):
        return None


def forwards(apps, schema_editor):
    Occurrence = apps.get_model("campaigns", "Occurrence")
    Dispatch = apps.get_model("delivery", "Dispatch")
    rows = (
        Occurrence.objects.filter(dispatch__isnull=False, dispatch__label__endswith=" UTC")
        .values_list("dispatch_id", "due_at", "campaign__time_zone", "dispatch__label", "dispatch__local_time")
        .order_by("dispatch_id")
    )
    changed = []
    for dispatch_id, due, time_zone, label, local_time in list(rows):  # one per occurrence sent: few
        found = OLD_LABEL.match(label)
        if found is None or found["when"] != f"{due.astimezone(dt.UTC):%Y-%m-%d %H:%M}":
            continue
        when = _when(due, time_zone, local_time)
        if when is None:
            continue
        changed.append(Dispatch(pk=dispatch_id, label=f"{found['head']} @ {when}"[:300]))
        if len(changed) >= BATCH:
            Dispatch.objects.bulk_update(changed, ["label"])
            changed = []
    Dispatch.objects.bulk_update(changed, ["label"])


class Migration(migrations.Migration):
    dependencies = [
        ("campaigns", "0011_trigger_gate_lock"),
        ("delivery", "0016_dispatch_sample"),
    ]

    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
