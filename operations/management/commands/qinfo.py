"""django-q2's ``qinfo``, with ``--config`` masking the secret key and the passwords in service URLs,
and one line instead of a traceback while Redis does not answer."""

from django.core.management.base import CommandError
from django_q import VERSION
from django_q.conf import Conf
from django_q.management.commands.qinfo import Command as QinfoCommand
from redis.exceptions import RedisError

from config.reporting import SettingsReportFilter

_STATE_NAMES = {"conf", "IDLE", "STOPPING", "STARTING", "WORKING", "SIGNAL_NAMES", "STOPPED"}


class Command(QinfoCommand):
    def handle(self, *args, **options):
        if not options.get("config") or options.get("ids"):
            try:
                return super().handle(*args, **options)
            except RedisError as exc:
                raise CommandError(
                    f"Redis does not answer ({exc.__class__.__name__}: {exc}); check REDIS_URL."
                ) from None
        cleanse = SettingsReportFilter().cleanse_setting
        self.stdout.write(f"VERSION: {'.'.join(str(v) for v in VERSION)}")
        for name in sorted(a for a in dir(Conf) if not a.startswith("__") and a not in _STATE_NAMES):
            value = getattr(Conf, name)
            if value is not None:
                self.stdout.write(f"{name}: {cleanse(name, value)}")
