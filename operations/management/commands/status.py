"""Print what an operator watches: the queue, the sends in progress, failed tasks, the beat."""

import datetime as dt
import json
import sys

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError, connection
from django.template.defaultfilters import pluralize
from django.utils import timezone

from accounts.selectors import superuser_keys_made_by_others
from delivery.services.apps import app_secret_problems
from operations.database import database_error_said, database_errors_said, redis_errors_said
from operations.status import SENDER_SILENT_SECONDS, late_seconds, queue_figures, queue_figures_lines, snapshot


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"


def _utc(moment: dt.datetime) -> dt.datetime:
    return moment.astimezone(dt.UTC)


class Command(BaseCommand):
    help = (
        "The instance and whether it may send, whether every app's stored credentials decrypt, the live API keys "
        "of a superuser that someone else made, the queue depth and the oldest task's age, the workers reporting to "
        "the queue, each stream sender slot's heartbeat, dispatches sending and their rates, the last hour's failed "
        "tasks, event batches waiting to run again, stalled imports and those no worker takes up, what stops "
        "retention, and when each schedule of the beat last ran. --queue: the task queue's figures alone, one a line "
        "(--json: as one JSON object)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--check",
            action="store_true",
            help=(
                "Exit with status 2 when a line needs an operator, after one line on stderr naming each and "
                "since when: sending is off, credentials cannot be decrypted, retention refuses to run, a "
                "schedule of the beat is missing or late (due for more than Q_CLUSTER's timeout, 300 s), no "
                "worker reports to the queue, the oldest task has waited longer than that timeout, a stream "
                "sender slot has had no heartbeat for 2 minutes, an import stalled for more than twice "
                "PUSHDESK_IMPORT_STALL_SECONDS, which the imports watchdog has not taken up, or a queued import "
                "no worker has taken up for as long: for a monitoring probe, a container's health check, a cron "
                "job or a restore drill. Status 1 still means the queue could not be read (or the database did "
                "not answer)."
            ),
        )
        parser.add_argument(
            "--queue",
            action="store_true",
            help=(
                "Print the task queue's figures alone, one a line, its name then its value (qinfo's, which run "
                "together when its output is not a terminal): the queue and its broker, the clusters reporting to "
                "it, their workers and restarts, the tasks queued and the oldest one's wait in seconds, the "
                "successes kept and the failures, the schedules, and the tasks of the last 24 hours with their "
                "average seconds. While Redis does not answer, it says so in one line and exits with status 1."
            ),
        )
        parser.add_argument(
            "--json", action="store_true", help="With --queue: the figures as one JSON object (null for no value)."
        )

    def handle(self, *args, **options):
        if options["json"] and not options["queue"]:
            raise CommandError("--json goes with --queue (the queue's figures); status prints its lines as text.")
        if options["queue"]:
            with database_errors_said(), redis_errors_said():
                figures = queue_figures()
            if options["json"]:
                self.stdout.write(json.dumps(figures))
            else:
                for line in queue_figures_lines(figures):
                    self.stdout.write(line)
            return
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
        now = timezone.now()
        # What --check fails on, each in a few words and since when: the last line on stderr.
        problems = []
        if s.instance_problem:
            problems.append("sending is off")
        if unreadable:
            problems.append("stored credentials cannot be decrypted")
        oldest = "" if s.oldest_task_age_seconds is None else f", oldest waiting {int(s.oldest_task_age_seconds)} s"
        if s.queue_problem:
            write(f"queue      cannot be read: {s.queue_problem}")
        elif s.oldest_task_age_seconds is not None and s.oldest_task_age_seconds > late_seconds():
            since = _utc(now - dt.timedelta(seconds=s.oldest_task_age_seconds))
            write(
                f"queue      {s.queue_depth} task{pluralize(s.queue_depth)} waiting{oldest}: WAITING TOO LONG (since {since:%Y-%m-%d %H:%M} UTC; "
                f"more than {late_seconds()} s): are the workers running, and enough?"
            )
            problems.append(f"the oldest task waits since {since:%Y-%m-%d %H:%M} UTC")
        else:
            write(f"queue      {s.queue_depth} task{pluralize(s.queue_depth)} waiting{oldest}")
        if s.workers:
            write(
                f"workers    {len(s.workers)} running: "
                + ", ".join(f"{w.host} (pid {w.pid}, {w.status})" for w in s.workers)
            )
        elif s.workers is not None:
            if s.last_task_ended:
                ended = f"the last task ended {_utc(s.last_task_ended):%Y-%m-%d %H:%M} UTC"
                ago = f" ({_age((now - s.last_task_ended).total_seconds())})"
            else:
                ended, ago = "no task has ended yet", ""
            write(
                f"workers    NONE SEEN: no qcluster reports to the queue '{settings.Q_CLUSTER['name']}'; {ended}{ago}"
            )
            problems.append(f"no worker seen, {ended}")
        for slot in s.senders or ():
            seen = _utc(dt.datetime.fromtimestamp(slot.seen_at, dt.UTC)) if slot.seen_at else None
            if slot.beating:
                kind = "a send_stream process" if slot.process else "a worker task"
                write(f"senders    slot {slot.slot}: {kind} (pid {slot.pid}), beating")
                continue
            silent = (now - seen).total_seconds() if seen else None
            since = f"since {seen:%Y-%m-%d %H:%M:%S} UTC ({_age(silent)})" if seen else "never seen"
            if silent is not None and silent <= SENDER_SILENT_SECONDS:
                write(
                    f"senders    slot {slot.slot}: no heartbeat {since}; the delivery watchdog starts a sender "
                    "task for it within a minute"
                )
                continue
            write(
                f"senders    slot {slot.slot}: NO HEARTBEAT{',' if not seen else ''} {since}: is `send_stream --slot "
                f"{slot.slot}` running, or a worker (the delivery watchdog starts a sender task for a silent slot "
                "each minute)?"
            )
            problems.append(
                f"stream sender slot {slot.slot} silent "
                + (f"since {seen:%Y-%m-%d %H:%M:%S} UTC" if seen else "(never seen)")
            )
        write(f"sending    {len(s.dispatches)} dispatch{pluralize(len(s.dispatches), 'es')}")
        for d in s.dispatches:
            write(
                f"  #{d.id} {d.label[:60]}: {d.status}, {d.done}/{d.total} done "
                f"({d.accepted} accepted, {d.failed} failed, {d.unknown} unknown), {d.per_second}/s"
                + (" in the last minute" if d.standing else "")
            )
        total_failures = sum(s.failures_last_hour.values())
        write(f"failures   {total_failures} failed task{pluralize(total_failures)} in the last hour")
        for func, n in s.failures_last_hour.items():
            write(f"  {n} × {func}")
        oldest = s.oldest_event_replay_age_seconds
        waited = "" if oldest is None else f", the oldest stored {_age(oldest)}"
        batches = "1 batch of events waits" if s.event_replays == 1 else f"{s.event_replays} batches of events wait"
        write(f"replays    {batches} to enter or end journeys again{waited}")
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
        if s.retention_problems:
            problems.append("retention refuses to run")
        if any(record.overdue for record in s.stalled_imports) or s.imports_not_taken_up:
            problems.append("an import is not taken up")
        write("beat")
        for name, run in s.beat.items():
            if run.get("missing"):
                write(f"  {name}: MISSING (deleted?); `manage.py migrate` makes it again")
                problems.append(f"the beat's {name} is missing")
                continue
            upcoming = f"{_utc(run['next_run']):%Y-%m-%d %H:%M:%S} UTC" if run["next_run"] else "not scheduled"
            last = run["last_run"]
            ran = f"{_age(run['age_seconds'])} ({_utc(last):%Y-%m-%d %H:%M} UTC)" if last else "never"
            late = run.get("late_since")
            if late is None:
                write(f"  {name}: last ran {_age(run['age_seconds'])}, next {upcoming}")
                continue
            write(
                f"  {name}: last ran {ran}, LATE: due since {_utc(late):%Y-%m-%d %H:%M} UTC (more than "
                f"{late_seconds()} s): is a qcluster running? (see the workers line)"
            )
            problems.append(
                f"the beat's {name} is late, last ran " + (f"{_utc(last):%Y-%m-%d %H:%M} UTC" if last else "never")
            )
        if s.queue_problem:
            sys.exit(1)
        # What --check reports: a line in capitals, and on stderr one line naming each.
        if options["check"] and problems:
            self.stderr.write("status --check: " + "; ".join(problems))
            sys.exit(2)
