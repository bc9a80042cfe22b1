"""Create the demo data of the embedded mode. Safe to run again: it adds only what is missing.

Each app may hold a ``demo.py`` with ``populate(*, stdout) -> None``; they run in dependency order.
"""

import importlib
import importlib.util
import logging

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

APPS_IN_ORDER = ("accounts", "audiences", "delivery", "campaigns", "journeys")


class Command(BaseCommand):
    help = "Create demo users (one per role, passwords printed once) and each app's demo data."

    def add_arguments(self, parser):
        parser.add_argument(
            "--in-production",
            action="store_true",
            help="add the demo data though PUSHDESK_MODE is production (a staging copy); refused otherwise",
        )

    def handle(self, *args, in_production=False, **options):
        if settings.PRODUCTION and not in_production:
            raise CommandError(
                "PUSHDESK_MODE is production: the demo data (its users and their passwords, an app sending to the "
                "push simulator, made-up profiles, a live campaign) is not for this database; to add it anyway "
                "(a staging copy), run it with --in-production."
            )
        # The queue's own line for each task the demo queues is noise among what the demo says.
        logging.getLogger("django-q").setLevel(logging.WARNING)
        for app in APPS_IN_ORDER:
            if importlib.util.find_spec(f"{app}.demo") is None:
                continue
            importlib.import_module(f"{app}.demo").populate(stdout=self.stdout)
