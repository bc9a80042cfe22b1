"""An open, as the benchmarks of reports record one: what the open service writes, without its caller."""


def record_open(dispatch) -> int:
    """One accepted, unopened row of ``dispatch`` opened now, the dispatch's opened counter and the
    rollup moved in the same transaction, as the open service records it; the row's id."""
    from django.db import transaction
    from django.db.models import F
    from django.utils import timezone

    from delivery.models import Delivery, Dispatch
    from delivery.services.rollups import rollup_add_opened

    with transaction.atomic():
        row = (
            Delivery.objects.filter(dispatch_id=dispatch.pk, status="accepted", opened_at__isnull=True)
            .values_list("pk", flat=True)
            .first()
        )
        Delivery.objects.filter(pk=row).update(opened_at=timezone.now())
        Dispatch.objects.filter(pk=dispatch.pk).update(opened=F("opened") + 1)
        rollup_add_opened(ids=[row])
    return row
