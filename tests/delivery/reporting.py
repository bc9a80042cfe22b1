"""A send with known outcomes at known times, for the report charts' tests."""

import datetime as dt

from delivery.models import Delivery, Dispatch
from delivery.services.rollups import rollup_rebuild
from tests.factories import DeviceFactory, ProfileFactory

T0 = dt.datetime(2026, 11, 28, 10, 15, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)


def sent_dispatch(app, *, kind="campaign", source_id=None, context=None) -> Dispatch:
    """Seven rows: three iOS, three Android, one profile without a device.

    iOS: accepted at T0 and opened an hour later; accepted at T0 + 10 min; skipped (frequency_cap).
    Android: accepted at T0 + 1 h and opened at T0 + 2 h; failed (Unregistered); skipped (not_opted_in).
    No device: skipped (no_device). So: targeted 7, reachable 5, accepted 3, opened 2.
    """
    dispatch = Dispatch.objects.create(
        app=app,
        kind=kind,
        source_id=source_id,
        context=context or {},
        content_spec={"title": "Hi", "body": "Hello"},
        status="done",
        total=7,
        accepted=3,
        failed=1,
        skipped=3,
        opened=2,
        label="Report send",
    )
    rows = [
        ("ios", "accepted", "", T0, T0 + HOUR),
        ("ios", "accepted", "", T0 + dt.timedelta(minutes=10), None),
        ("ios", "skipped", "frequency_cap", T0, None),
        ("android", "accepted", "", T0 + HOUR, T0 + 2 * HOUR),
        ("android", "failed", "Unregistered", T0 + HOUR, None),
        ("android", "skipped", "not_opted_in", T0, None),
        (None, "skipped", "no_device", T0, None),
    ]
    for platform, status, reason, finished, opened in rows:
        device = DeviceFactory(app=app, platform=platform) if platform else None
        profile = device.profile if device else ProfileFactory()
        Delivery.objects.create(
            dispatch=dispatch,
            device=device,
            profile=profile,
            status=status,
            reason=reason,
            finished_at=finished,
            opened_at=opened,
        )
    rollup_rebuild(dispatch_ids=[dispatch.pk])  # as the send pipeline would have counted them
    return dispatch
