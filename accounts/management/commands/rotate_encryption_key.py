"""Re-encrypt every stored secret under the first key of PUSHDESK_ENCRYPTION_KEY."""

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError
from django.template.defaultfilters import pluralize

from accounts.services import encryption_key_rotate
from operations.database import database_errors_said


class Command(BaseCommand):
    help = (
        "Re-encrypt app credentials (every encrypted field) under the first key of PUSHDESK_ENCRYPTION_KEY. "
        "Put the new key first and keep the old ones after it until this has run."
    )

    def handle(self, *args, **options):
        try:
            with database_errors_said():
                done = encryption_key_rotate()
        except ImproperlyConfigured as exc:  # a secret no key decrypts: say so, without a traceback
            raise CommandError(str(exc)) from None
        for label, count in done.items():
            self.stdout.write(f"{label}: {count} secret{pluralize(count)} re-encrypted")
        self.stdout.write(self.style.SUCCESS("Done: the keys after the first may now be removed."))
