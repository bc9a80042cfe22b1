"""Opens: a tap on a notification, reported once per delivery."""

from __future__ import annotations

from datetime import datetime

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from accounts.models import User
from delivery.models import Delivery, Dispatch, Platform
from delivery.services.rollups import rollup_add_opened


class AlreadyOpened(ValidationError):
    """An open was already reported for this delivery."""


class NotAccepted(ValidationError):
    """The delivery was never accepted by the provider: no notification reached the phone to be tapped."""


def delivery_open_report(
    *, delivery_id: int, app_id: int, by: User, token: str | None = None, when: datetime | None = None
) -> Delivery:
    """Record that the user tapped the notification: sets ``opened_at`` once. ``token`` (the API's
    caller always gives it): the push token of the phone reporting it, which the delivery must have
    been sent to; a key an app ships is public, and the ids of deliveries count upwards, so without it
    anyone could mark others' pushes opened (and sway a winner picked by its open rate).

    Raises PermissionDenied when ``by``'s role may not write profiles (an open is engagement data
    about a profile), Delivery.DoesNotExist when the delivery is not one of ``app_id``'s (or not
    visible to ``by``), NotAccepted when the delivery is not ``accepted``, AlreadyOpened when an
    open was already reported.
    """
    from accounts.selectors import in_scope

    if by is None or not by.is_active or not by.has_perm("audiences.change_profile"):
        raise PermissionDenied("Your role may not report opens (it needs to write profiles).")
    with transaction.atomic():
        deliveries = Delivery.objects.select_for_update(of=("self",)).filter(
            pk=delivery_id,
            dispatch__app_id=app_id,
            dispatch__in=in_scope(by, Dispatch.objects.all()).values("pk"),  # a write: the app's scope
        )
        if token is not None:
            # An APNs token is kept in lowercase (the phone may give it in either case); FCM's as given.
            deliveries = deliveries.filter(
                Q(device__token=token) | Q(device__token=token.lower(), device__platform=Platform.IOS)
            )
        delivery = deliveries.get()
        if delivery.status != Delivery.Status.ACCEPTED:
            raise NotAccepted(
                {"delivery": f"This delivery was not accepted (it is {delivery.status}): it cannot have been opened."},
                code="not_accepted",
            )
        if delivery.opened_at is not None:
            raise AlreadyOpened({"delivery": "An open was already reported for this delivery."}, code="already_opened")
        delivery.opened_at = when or timezone.now()
        delivery.save(update_fields=["opened_at"])
        Dispatch.objects.filter(pk=delivery.dispatch_id).update(opened=F("opened") + 1)
        rollup_add_opened(ids=[delivery.pk])
    return delivery
