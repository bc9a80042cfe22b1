"""APNs device tokens kept in lowercase, and the devices that then hold the same token merged.

An APNs token is the hexadecimal form of the token's bytes: its case says nothing. Registration
took it as given, so a phone whose app wrote its token in capitals once and in lowercase another
time (an app update, a second SDK) was two devices of the app, and received every send twice.
Registration now keeps it in lowercase; this migration brings the devices saved before to the same
form, and a check constraint keeps every iOS token in lowercase from now on, so that the unique
(app, token) holds for APNs tokens whatever their case, without a second index on a big table.
FCM tokens are case-sensitive: they are left as they are.

The devices of one app whose tokens are then the same are one phone, and become one device:

- The device kept is the one registered last (the newest row on a tie): the app's latest word on
  the phone, so it keeps that registration's profile. It takes the earliest ``created_at``.
- Opted out wins. The opt-in is reported apart from registrations, so which of the rows' reports
  is the newest is not known; a push to a phone whose owner turned notifications off breaks the
  owner's choice, where a phone wrongly left opted out is opted back in by the app's next report
  (apps send it at each launch).
- A test device stays one: an administrator marked that phone for test sends.
- A dead token stays dead unless a registration came after it: the token is the same, so a
  provider's "dead" answer (or the app's unregistering) on any of the rows holds for the phone,
  with its time and reason, when the kept registration is not later.
- The deliveries of the devices merged away move to the kept device, so that its history and the
  reports, which read a delivery's platform through its device, go on counting them. In a send
  that also has a row for the kept device (the duplicate push this ends), the merged device's row
  is left as it is, naming a device that no longer exists, as a deleted device's rows do: the
  send's totals still count it, and one not sent yet fails as ``device_deleted`` instead of
  reaching the phone a second time.
- Each merge is written to the audit log, on the kept device, with the ids of those merged into it.
"""

from django.db import migrations, models
from django.db.models import F
from django.db.models.functions import Lower

GROUPS_PER_BATCH = 500
IOS = "ios"


def _merged(rows: list) -> tuple[object, list, dict]:
    """The row kept among one phone's ``rows``, the others, and the kept row's new values."""
    rows = sorted(rows, key=lambda d: (d.last_registered_at, d.id))
    kept, others = rows[-1], rows[:-1]
    values = {
        "token": kept.token.lower(),
        "created_at": min(d.created_at for d in rows),
        "push_enabled": all(d.push_enabled for d in rows),
        "is_test": any(d.is_test for d in rows),
    }
    if kept.active:
        dead = [d for d in others if d.invalidated_at is not None and d.invalidated_at >= kept.last_registered_at]
        if dead:
            last = max(dead, key=lambda d: (d.invalidated_at, d.id))
            values.update(active=False, invalidated_at=last.invalidated_at, invalidated_reason=last.invalidated_reason)
    return kept, others, values


def _label(platform: str, token: str) -> str:
    return f"{'iOS' if platform == IOS else 'Android'} …{token[-8:]}"  # as Device.__str__ shows it


def _merge_batch(apps, groups: dict, merges: list, events: list, content_type_id) -> None:
    """Lowercase the tokens of ``groups`` ((app id, lowered token) -> ids of rows not in lowercase),
    merging each with the device that holds its lowercase form, if any, and with each other."""
    Device = apps.get_model("delivery", "Device")
    ids = [pk for group in groups.values() for pk in group]
    rows = list(Device.objects.filter(pk__in=ids))
    by_app: dict[int, list[str]] = {}
    for app_id, lowered in groups:
        by_app.setdefault(app_id, []).append(lowered)
    for app_id, tokens in by_app.items():  # the devices already holding the lowercase form
        rows += Device.objects.filter(app_id=app_id, token__in=tokens)
    phones: dict[tuple, list] = {}
    for device in rows:
        phones.setdefault((device.app_id, device.token.lower()), []).append(device)
    alone = [found[0].pk for found in phones.values() if len(found) == 1]
    Device.objects.filter(pk__in=alone).update(token=Lower("token"))
    for found in phones.values():
        if len(found) == 1:
            continue
        kept, others, values = _merged(found)
        Device.objects.filter(pk__in=[d.pk for d in others]).delete()  # frees the lowercase token
        Device.objects.filter(pk=kept.pk).update(**values)
        merges += [(d.pk, kept.pk) for d in others]
        events.append(
            {
                "action": "device_merged",
                "object_type_id": content_type_id,
                "object_id": str(kept.pk),
                "object_label": _label(kept.platform, values["token"]),
                "summary": {
                    "merged_devices": sorted(d.pk for d in others),
                    "why": "the same APNs token in another case",
                    "push_enabled": values["push_enabled"],
                    "active": values.get("active", kept.active),
                },
            }
        )


# The merged devices' deliveries that move to the kept device: all of a standing dispatch's, and of
# a bulk run's one per (run, kept device) (unique), none where the kept device has its own.
MOVED = """
INSERT INTO device_merged_delivery (id, kept_id)
SELECT r.id, r.kept_id FROM (
    SELECT d.id, d.dispatch_id, d.queued_at, m.kept_id,
           ROW_NUMBER() OVER (PARTITION BY d.dispatch_id, m.kept_id, d.queued_at IS NULL ORDER BY d.id) AS n
    FROM delivery_delivery d JOIN device_merged m ON m.old_id = d.device_id
) r
WHERE r.queued_at IS NOT NULL OR (
    r.n = 1 AND NOT EXISTS (
        SELECT 1 FROM delivery_delivery k
        WHERE k.dispatch_id = r.dispatch_id AND k.device_id = r.kept_id AND k.queued_at IS NULL
    )
)
"""
MOVE = """
UPDATE delivery_delivery
SET device_id = (SELECT v.kept_id FROM device_merged_delivery v WHERE v.id = delivery_delivery.id)
WHERE id IN (SELECT id FROM device_merged_delivery)
"""


def _deliveries_move(schema_editor, merges: list) -> None:
    """Point the merged devices' deliveries at the kept ones (``merges``: (merged id, kept id)),
    reading the big table once."""
    postgresql = schema_editor.connection.vendor == "postgresql"
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("CREATE TEMPORARY TABLE device_merged (old_id bigint PRIMARY KEY, kept_id bigint NOT NULL)")
        cursor.execute("CREATE TEMPORARY TABLE device_merged_delivery (id bigint PRIMARY KEY, kept_id bigint NOT NULL)")
        cursor.executemany("INSERT INTO device_merged (old_id, kept_id) VALUES (%s, %s)", merges)
        if postgresql:  # a temporary table is never analysed by itself: the plan would guess its size
            cursor.execute("ANALYZE device_merged")
        cursor.execute(MOVED)
        if postgresql:
            cursor.execute("ANALYZE device_merged_delivery")
        cursor.execute(MOVE)
        cursor.execute("DROP TABLE device_merged_delivery")
        cursor.execute("DROP TABLE device_merged")


def lowercase_ios_tokens(apps, schema_editor):
    """Lowercase every iOS token and merge the devices of an app that then hold the same one."""
    Device = apps.get_model("delivery", "Device")
    AuditEvent = apps.get_model("accounts", "AuditEvent")
    ContentType = apps.get_model("contenttypes", "ContentType")
    not_lower = (
        Device.objects.filter(platform=IOS)
        .annotate(lowered=Lower("token"))
        .exclude(token=F("lowered"))
        .order_by("app_id", "lowered", "id")
        .values_list("id", "app_id", "lowered")
    )
    # Read in order, a phone's rows together; SQLite does not isolate a read from the writes made
    # while it goes on, so there (a small embedded database) the rows are read first.
    found = not_lower.iterator(chunk_size=2000) if schema_editor.connection.vendor == "postgresql" else list(not_lower)
    merges: list[tuple[int, int]] = []
    events: list[dict] = []
    groups: dict[tuple[int, str], list[int]] = {}
    device_type: list[int] = []  # the content type of devices, looked up with the first batch

    def merge(groups):
        if not device_type:
            device_type.append(ContentType.objects.get_or_create(app_label="delivery", model="device")[0].pk)
        _merge_batch(apps, groups, merges, events, device_type[0])

    for pk, app_id, lowered in found:
        key = (app_id, lowered)
        if key not in groups and len(groups) >= GROUPS_PER_BATCH:
            merge(groups)
            groups = {}
        groups.setdefault(key, []).append(pk)
    if groups:
        merge(groups)
    if merges:
        _deliveries_move(schema_editor, merges)
        AuditEvent.objects.bulk_create([AuditEvent(actor_label="system", **event) for event in events], batch_size=1000)


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0001_initial"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("delivery", "0028_delivery_rules_bounds"),
    ]

    operations = [
        migrations.RunPython(lowercase_ios_tokens, migrations.RunPython.noop, elidable=True),
        migrations.AddConstraint(
            model_name="device",
            constraint=models.CheckConstraint(
                condition=~models.Q(platform="ios") | models.Q(token=Lower("token")),
                name="device_ios_token_lowercase",
            ),
        ),
    ]
