"""``manage.py check``: Django's, with an app label no installed app has refused in one line (it
ended with LookupError's traceback, where ``migrate`` says it in a line)."""

from django.apps import apps
from django.core.management import CommandError
from django.core.management.commands.check import Command as DjangoCheck


class Command(DjangoCheck):
    def handle(self, *app_labels, **options):
        known = {config.label for config in apps.get_app_configs()}
        for label in app_labels:
            if label not in known:
                raise CommandError(f"No installed app with label {label!r}; the apps are {', '.join(sorted(known))}.")
        return super().handle(*app_labels, **options)
