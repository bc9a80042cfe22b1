"""django-q2's ``qmonitor``, with one line instead of a traceback while Redis does not answer."""

from django_q.management.commands.qmonitor import Command as QmonitorCommand

from operations.database import redis_errors_said


class Command(QmonitorCommand):
    help = (
        "Watch the task queue (the queue PUSHDESK_QUEUE_NAME names) in a terminal: each cluster reporting to it, "
        "its workers and their state, the tasks queued, the successes and failures, refreshed until q is pressed "
        "(--run-once: once). While Redis does not answer, it says so in one line and exits with status 1. For a "
        "health check: manage.py status --check."
    )

    def handle(self, *args, **options):
        with redis_errors_said():
            return super().handle(*args, **options)
