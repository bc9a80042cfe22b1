"""Make the database this instance's, voiding the work that was queued before."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from redis.exceptions import RedisError

from operations.database import database_errors_said, redis_problem
from operations.instance import instance_problem
from operations.services import instance_claim, instance_queue_purge


class Command(BaseCommand):
    help = (
        "Record PUSHDESK_INSTANCE as the instance this database belongs to, so this copy may send. "
        "Stops unfinished dispatches, skips due campaign occurrences and due journey steps, drops queued tasks."
    )

    def add_arguments(self, parser):
        parser.add_argument("--yes", action="store_true", help="Do not ask for confirmation.")
        parser.add_argument(
            "--purge-queue",
            action="store_true",
            help="On a database already claimed: drop the tasks waiting in this instance's queue in Redis "
            "(when Redis did not answer during the claim).",
        )

    def handle(self, *args, **options):
        with database_errors_said():
            self._handle(**options)

    def _handle(self, *, yes: bool, purge_queue: bool, **options):
        name = settings.PUSHDESK_INSTANCE
        problem = instance_problem()
        if problem is None:
            if purge_queue:
                self._purge_queue()
                return
            self.stdout.write(f"The database already belongs to instance {name!r}: nothing to do.")
            return
        self.stdout.write(f"Now: {problem}.")
        if not yes:
            try:
                answer = input(f"Claim the database for instance {name!r} and void what was queued before? [y/N] ")
            except EOFError:  # no terminal (a script, a unit): no one to answer
                raise CommandError("Nothing changed: no answer to confirm with; run it with --yes to claim.") from None
            if answer.strip().lower() not in {"y", "yes"}:
                # Non-zero, like the missing answer above: a script must not read a "no" as a claim.
                raise CommandError("Nothing changed.")
        result = instance_claim(name=name)
        self.stdout.write(
            f"Instance {name!r} claimed the database (it was {result['previous']!r}). Voided: "
            f"{result['dispatches']} dispatches ({result['deliveries_skipped']} queued rows skipped, "
            f"{result['deliveries_unknown']} in-flight rows unknown), {result['occurrences']} due campaign "
            f"occurrences, {result['enrollments']} due journey steps, {result.get('tasks', 0)} queued tasks."
        )
        if result["queue_purge_failed"]:
            raise CommandError(
                f"The claim is made, but the task queue in Redis was not purged: {result['queue_purge_failed']}; "
                "tasks queued before may still run. Once Redis answers, run "
                "`manage.py instance_claim --purge-queue`."
            )

    def _purge_queue(self):
        if "redis" not in settings.Q_CLUSTER:
            self.stdout.write("The task queue is in the database: the claim purged it.")
            return
        try:
            dropped = instance_queue_purge()
        except RedisError as exc:
            raise CommandError(
                f"The task queue was not purged: {redis_problem(exc)}. Run it again once Redis answers."
            ) from None
        self.stdout.write(f"Purged this instance's task queue: {dropped} tasks dropped.")
