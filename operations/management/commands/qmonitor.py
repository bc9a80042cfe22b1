"""django-q2's ``qmonitor``, with one line instead of a traceback while Redis does not answer."""

from django_q.management.commands.qmonitor import Command as QmonitorCommand

from operations.database import redis_errors_said


class Command(QmonitorCommand):
    def handle(self, *args, **options):
        with redis_errors_said():
            return super().handle(*args, **options)
