"""Print what an operator watches: the queue, the sends in progress, failed tasks, the beat."""

import sys

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError, connection

from accounts.selectors import superuser_keys_made_by_others
from delivery.services.apps import app_secret_problems
from operations.database import database_error_said, database_errors_said
from operations.status import snapshot


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"


class Command(BaseCommand):
    help = (
        "The instance and whether it may send, whether every app's stored credentials decrypt, the live API keys "
        "of a superuser that someone else made, the queue depth and the oldest task's age, dispatches sending and "
        "their rates, the last hour's failed tasks, event batches waiting to run again, stalled imports and those "
        "no worker takes up, what stops retention, and when each schedule of the beat last ran."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--check",
            action="store_true",
            help=(
                "Exit with status 2 when a line needs an operator (sending is off, credentials cannot be "
                "decrypted, retention refuses to run, a schedule of the beat is missing, an import stalled "
                "for more than twice PUSHDESK_IMPORT_STALL_SECONDS, which the imports watchdog has not taken "
                "up, or a queued import no worker has taken up for as long): for a monitoring script or a "
                "restore drill. Status 1 still means the queue could not be read."
            ),
        )

    def handle(self, *args, **options):
        try:
            with database_errors_said():
                connection.ensure_connection()
                s = snapshot()
                unreadable = app_secret_problems()
                foreign_keys = list(superuser_keys_made_by_others())
        except DatabaseError as exc:  # it answers, but something in it cannot be read (--traceback shows it)
            raise CommandError(database_error_said(exc)) from exc
        write = self.stdout.write
        if s.instance_problem:
            write(f"instance   {s.instance}: SENDING IS OFF: {s.instance_problem}")
        else:
            write(f"instance   {s.instance}: claimed, sending allowed")
        if unreadable:
            write("secrets    CANNOT BE DECRYPTED (nothing can be sent with them):")
            for problems in unreadable.values():
                for problem in problems:
                    write(f"  {problem}")
        else:
            write("secrets    every app's stored credentials decrypt with PUSHDESK_ENCRYPTION_KEY")
        if foreign_keys:
            # Made before only a superuser could make a superuser's key: each acts as its owner.
            write(f"api keys   {len(foreign_keys)} of a superuser made by someone else: revoke those not meant to be:")
            for key in foreign_keys:
                maker = key.created_by.get_username() if key.created_by else "a deleted user"
                write(f"  {key.prefix}… '{key.name}' of {key.user.get_username()}, made by {maker}")
        oldest = "" if s.oldest_task_age_seconds is None else f", oldest waiting {int(s.oldest_task_age_seconds)} s"
        if s.queue_problem:
            write(f"queue      cannot be read: {s.queue_problem}")
        else:
            write(f"queue      {s.queue_depth} tasks waiting{oldest}")
        write(f"sending    {len(s.dispatches)} dispatches")
        for d in s.dispatches:
            write(
                f"  #{d.id} {d.label[:60]}: {d.status}, {d.done}/{d.total} done "
                f"({d.accepted} accepted, {d.failed} failed, {d.unknown} unknown), {d.per_second}/s"
                + (" in the last minute" if d.standing else "")
            )
        total_failures = sum(s.failures_last_hour.values())
        write(f"failures   {total_failures} failed tasks in the last hour")
        for func, n in s.failures_last_hour.items():
            write(f"  {n} × {func}")
        oldest = s.oldest_event_replay_age_seconds
        waited = "" if oldest is None else f", the oldest stored {_age(oldest)}"
        write(f"replays    {s.event_replays} batches of events wait to enter or end journeys again{waited}")
        if s.stalled_imports:
            write(
                f"imports    {len(s.stalled_imports)} stalled (their worker stopped: no batch written for more than "
                f"PUSHDESK_IMPORT_STALL_SECONDS, {settings.PUSHDESK_IMPORT_STALL_SECONDS} s); the imports watchdog "
                "takes each up again, or ends it failed, within a minute"
            )
            for record in s.stalled_imports:
                waiting = f", {record.waiting} import{'s' if record.waiting != 1 else ''} of its segment waiting"
                # Past twice the bound, the watchdog that takes it up within a minute is not running.
                overdue = (
                    ", NOT TAKEN UP by the imports watchdog (is the beat running? see its line below)"
                    if record.overdue
                    else ""
                )
                write(
                    f"  #{record.id} {record.name[:60]}: no batch written for {record.minutes} min"
                    + overdue
                    + (waiting if record.waiting else "")
                )
        for record in s.imports_run_again:
            write(
                f"imports    #{record.id} {record.name[:60]}: taken up again after its worker stopped before writing "
                "a batch; a second such run in a row ends it failed"
            )
        for record in s.imports_failed_stalling:
            write(
                f"imports    #{record.id} {record.name[:60]}: ended failed, its worker stopped before writing a batch "
                "in two runs in a row (its file may be what stops the worker); restart it once that is ruled out"
            )
        for record in s.imports_not_taken_up:
            write(
                f"imports    #{record.id} {record.name[:60]}: waiting for a worker for {record.minutes} min (since "
                f"{record.since:%Y-%m-%d %H:%M} UTC, when it was queued or wrote its last batch), NOT TAKEN UP: "
                "is a worker running, and reading this queue? (see the queue line)"
            )
        if s.retention_problems:
            write("retention  REFUSES TO RUN (nothing is deleted) until these change:")
            for problem in s.retention_problems:
                write(f"  {problem}")
        write("beat")
        for name, run in s.beat.items():
            if run.get("missing"):
                write(f"  {name}: MISSING (deleted?); `manage.py migrate` makes it again")
                continue
            upcoming = f"{run['next_run']:%Y-%m-%d %H:%M:%S} UTC" if run["next_run"] else "not scheduled"
            write(f"  {name}: last ran {_age(run['age_seconds'])}, next {upcoming}")
        if s.queue_problem:
            sys.exit(1)
        # What --check reports: a line in capitals.
        missing = any(run.get("missing") for run in s.beat.values())
        imports_not_taken_up = any(record.overdue for record in s.stalled_imports) or s.imports_not_taken_up
        if options["check"] and (
            s.instance_problem or unreadable or s.retention_problems or missing or imports_not_taken_up
        ):
            sys.exit(2)
