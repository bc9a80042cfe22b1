"""Make the database this instance's, voiding the work that was queued before."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from operations.instance import instance_problem
from operations.services import instance_claim


class Command(BaseCommand):
    help = (
        "Record PUSHDESK_INSTANCE as the instance this database belongs to, so this copy may send. "
        "Stops unfinished dispatches, skips due campaign occurrences and due journey steps, drops queued tasks."
    )

    def add_arguments(self, parser):
        parser.add_argument("--yes", action="store_true", help="Do not ask for confirmation.")

    def handle(self, *args, yes: bool, **options):
        name = settings.PUSHDESK_INSTANCE
        problem = instance_problem()
        if problem is None:
            self.stdout.write(f"The database already belongs to instance {name!r}: nothing to do.")
            return
        self.stdout.write(f"Now: {problem}.")
        if not yes:
            try:
                answer = input(f"Claim the database for instance {name!r} and void what was queued before? [y/N] ")
            except EOFError:  # no terminal (a script, a unit): no one to answer
                raise CommandError("Nothing changed: no answer to confirm with; run it with --yes to claim.") from None
            if answer.strip().lower() not in {"y", "yes"}:
                self.stdout.write("Nothing changed.")
                return
        result = instance_claim(name=name)
        self.stdout.write(
            f"Instance {name!r} claimed the database (it was {result['previous']!r}). Voided: "
            f"{result['dispatches']} dispatches ({result['deliveries_skipped']} queued rows skipped, "
            f"{result['deliveries_unknown']} in-flight rows unknown), {result['occurrences']} due campaign "
            f"occurrences, {result['enrollments']} due journey steps, {result.get('tasks', 0)} queued tasks."
        )
