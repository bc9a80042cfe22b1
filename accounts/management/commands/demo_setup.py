"""Create the demo data of the embedded mode. Safe to run again: it adds only what is missing.

Each app may hold a ``demo.py`` with ``populate(*, stdout) -> None``; they run in dependency order.
"""

import importlib
import importlib.util
import logging

from django.core.management.base import BaseCommand

APPS_IN_ORDER = ("accounts", "audiences", "delivery", "campaigns", "journeys")


class Command(BaseCommand):
    help = "Create demo users (one per role, passwords printed once) and each app's demo data."

    def handle(self, *args, **options):
        # The queue's own line for each task the demo queues is noise among what the demo says.
        logging.getLogger("django-q").setLevel(logging.WARNING)
        for app in APPS_IN_ORDER:
            if importlib.util.find_spec(f"{app}.demo") is None:
                continue
            importlib.import_module(f"{app}.demo").populate(stdout=self.stdout)
