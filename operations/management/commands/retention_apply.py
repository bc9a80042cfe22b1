"""Delete deliveries and audit events past their retention (PUSHDESK_RETENTION_*_DAYS)."""

from django.conf import settings
from django.core.management.base import BaseCommand

from operations.services import retention_apply


class Command(BaseCommand):
    help = (
        "Delete the deliveries of dispatches finished more than PUSHDESK_RETENTION_DELIVERY_DAYS ago, "
        "and audit events older than PUSHDESK_RETENTION_AUDIT_DAYS (if set; 365 at least). Run daily."
    )

    def handle(self, *args, **options):
        result = retention_apply()
        delivery_days, audit_days = settings.PUSHDESK_RETENTION_DELIVERY_DAYS, settings.PUSHDESK_RETENTION_AUDIT_DAYS
        deliveries = f"dispatches finished more than {delivery_days} days ago" if delivery_days else "kept forever"
        audit_events = f"older than {audit_days} days" if audit_days else "kept forever"
        self.stdout.write(
            f"Deleted {result['deliveries']} deliveries ({deliveries}) "
            f"and {result['audit_events']} audit events ({audit_events})."
        )
