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
        self.stdout.write(
            f"Deleted {result['deliveries']} deliveries (dispatches finished more than "
            f"{settings.PUSHDESK_RETENTION_DELIVERY_DAYS} days ago) and {result['audit_events']} audit events "
            f"({'kept forever' if not settings.PUSHDESK_RETENTION_AUDIT_DAYS else f'older than {settings.PUSHDESK_RETENTION_AUDIT_DAYS} days'})."
        )
