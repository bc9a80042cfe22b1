"""An open, as the benchmarks of reports record one: through the open service, as the app's call does."""


def record_open(dispatch) -> int:
    """One accepted, unopened row of ``dispatch`` opened now by ``delivery_open_report`` (the row,
    the dispatch's opened counter and the rollup, in one transaction); the row's id."""
    from accounts.models import User
    from delivery.models import Delivery
    from delivery.services.opens import delivery_open_report

    opener, _ = User.objects.get_or_create(username="bench-opens", defaults={"is_superuser": True})
    row = (
        Delivery.objects.filter(dispatch_id=dispatch.pk, status="accepted", opened_at__isnull=True)
        .values_list("pk", flat=True)
        .first()
    )
    return delivery_open_report(delivery_id=row, app_id=dispatch.app_id, by=opener).pk
