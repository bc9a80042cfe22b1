"""django-q2's ``qinfo``, with ``--config`` masking the secret key and the passwords in service URLs,
one line instead of a traceback while Redis does not answer, and, when its output is not a terminal
(a pipe, a file, a script), ``status --queue``'s lines instead of columns that run together."""

from django_q import VERSION
from django_q.conf import Conf
from django_q.management.commands.qinfo import Command as QinfoCommand

from config.reporting import SettingsReportFilter
from operations.database import database_errors_said, redis_errors_said
from operations.status import queue_figures, queue_figures_lines

_STATE_NAMES = {"conf", "IDLE", "STOPPING", "STARTING", "WORKING", "SIGNAL_NAMES", "STOPPED"}


class Command(QinfoCommand):
    help = (
        "The task queue's figures (the queue PUSHDESK_QUEUE_NAME names): the clusters reporting to it, their "
        "workers and restarts, the tasks queued, the successes and failures, the schedules and the tasks a day. "
        "--config prints the queue's settings, the secret key and the passwords in service URLs masked. While "
        "Redis does not answer, it says so in one line and exits with status 1. Not to a terminal (a pipe, a "
        "file), the figures one a line, as manage.py status --queue prints them (--json there for a script). For a "
        "health check: manage.py status --check."
    )

    def handle(self, *args, **options):
        if options.get("ids"):
            with redis_errors_said():
                return super().handle(*args, **options)
        if not options.get("config"):
            if self.stdout.isatty():
                with redis_errors_said():
                    return super().handle(*args, **options)
            with database_errors_said(), redis_errors_said():
                figures = queue_figures()
            for line in queue_figures_lines(figures):
                self.stdout.write(line)
            return
        cleanse = SettingsReportFilter().cleanse_setting
        self.stdout.write(f"VERSION: {'.'.join(str(v) for v in VERSION)}")
        for name in sorted(a for a in dir(Conf) if not a.startswith("__") and a not in _STATE_NAMES):
            value = getattr(Conf, name)
            if value is not None:
                self.stdout.write(f"{name}: {cleanse(name, value)}")
