"""Delete deliveries, events, failed tasks and audit events past their retention (PUSHDESK_RETENTION_*_DAYS)."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from operations.database import database_errors_said
from operations.services import RetentionRefused, retention_apply


def _counted(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _kept(days: int, what: str) -> str:
    return f"{what} more than {_counted(days, 'day', 'days')} ago" if days else "kept forever"


class Command(BaseCommand):
    help = (
        "Delete the deliveries of dispatches finished more than PUSHDESK_RETENTION_DELIVERY_DAYS ago, "
        "profiles' events older than PUSHDESK_RETENTION_EVENT_DAYS (if set), failed tasks older than "
        "PUSHDESK_RETENTION_TASK_DAYS, trigger and events calls' Idempotency-Key records older than "
        "PUSHDESK_RETENTION_IDEMPOTENCY_DAYS, deleted phones' tokens no winner test waiting for its rest needs, "
        "the admin forms' one-time tokens past their day, and audit events older than PUSHDESK_RETENTION_AUDIT_DAYS "
        "(if set; 365 at least). Run daily."
    )

    def handle(self, *args, **options):
        try:
            with database_errors_said():
                result = retention_apply()
        except RetentionRefused as refused:
            raise CommandError("\n".join(refused.problems)) from None
        except ValueError as exc:  # audit events asked to go before their year
            raise CommandError(f"{exc} Set PUSHDESK_RETENTION_AUDIT_DAYS to 365 or more, or 0.") from None
        audit_days = settings.PUSHDESK_RETENTION_AUDIT_DAYS
        deliveries = _kept(settings.PUSHDESK_RETENTION_DELIVERY_DAYS, "dispatches finished")
        events = _kept(settings.PUSHDESK_RETENTION_EVENT_DAYS, "occurred")
        tasks = _kept(settings.PUSHDESK_RETENTION_TASK_DAYS, "stopped")
        requests = _kept(settings.PUSHDESK_RETENTION_IDEMPOTENCY_DAYS, "claimed")
        tombstones = _counted(
            result["device_tombstones"], "deleted phone's token digest", "deleted phones' token digests"
        )
        audit_events = f"older than {_counted(audit_days, 'day', 'days')}" if audit_days else "kept forever"
        self.stdout.write(
            f"Deleted {_counted(result['deliveries'], 'delivery', 'deliveries')} ({deliveries}), "
            f"{_counted(result['events'], 'event', 'events')} ({events}), "
            f"{_counted(result['failed_tasks'], 'failed task', 'failed tasks')} ({tasks}), "
            f"Idempotency-Key records of {_counted(result['trigger_requests'], 'trigger call', 'trigger calls')} "
            f"and {_counted(result['event_requests'], 'events call', 'events calls')} ({requests}), "
            f"{tombstones} (needed by no winner test waiting for its rest), "
            f"{_counted(result['form_tokens'], 'used form token', 'used form tokens')} (past their day) "
            f"and {_counted(result['audit_events'], 'audit event', 'audit events')} ({audit_events})."
        )
