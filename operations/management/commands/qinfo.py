"""django-q2's ``qinfo``, with ``--config`` masking the secret key and the passwords in service URLs,
and one line instead of a traceback while Redis does not answer."""

from django_q import VERSION
from django_q.conf import Conf
from django_q.management.commands.qinfo import Command as QinfoCommand

from config.reporting import SettingsReportFilter
from operations.database import redis_errors_said

_STATE_NAMES = {"conf", "IDLE", "STOPPING", "STARTING", "WORKING", "SIGNAL_NAMES", "STOPPED"}


class Command(QinfoCommand):
    def handle(self, *args, **options):
        if not options.get("config") or options.get("ids"):
            with redis_errors_said():
                return super().handle(*args, **options)
        cleanse = SettingsReportFilter().cleanse_setting
        self.stdout.write(f"VERSION: {'.'.join(str(v) for v in VERSION)}")
        for name in sorted(a for a in dir(Conf) if not a.startswith("__") and a not in _STATE_NAMES):
            value = getattr(Conf, name)
            if value is not None:
                self.stdout.write(f"{name}: {cleanse(name, value)}")
