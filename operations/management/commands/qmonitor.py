"""django-q2's ``qmonitor``, with one line instead of a traceback while Redis does not answer."""

from django.core.management.base import CommandError
from django_q.management.commands.qmonitor import Command as QmonitorCommand
from redis.exceptions import RedisError


class Command(QmonitorCommand):
    def handle(self, *args, **options):
        try:
            return super().handle(*args, **options)
        except RedisError as exc:
            raise CommandError(f"Redis does not answer ({exc.__class__.__name__}: {exc}); check REDIS_URL.") from None
