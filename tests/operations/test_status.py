"""`manage.py status` and `qinfo`: what an operator reads in a terminal, with no secret in it."""

import datetime as dt
import io
import os
import re
import uuid

import pytest
from django.conf import settings
from django.core.management import call_command
from django.utils import timezone
from django_q.brokers import get_broker
from django_q.models import Schedule, Task
from django_q.signing import SignedPackage

from delivery.models import Dispatch
from operations.status import queue_depth_and_oldest_age
from tests.factories import AppFactory

# The queue is Redis, or the database (django-q2's ORM broker).
pytestmark = [pytest.mark.embedded, pytest.mark.usefixtures("stream_gates_open")]


@pytest.fixture
def queue():
    broker = get_broker()
    broker.purge_queue()
    yield broker
    broker.purge_queue()


def test_status_prints_queue_sends_failures_and_beat_without_secrets(db, queue, beat):
    now = timezone.now()
    for minutes in (7, 1):
        queue.enqueue(
            SignedPackage.dumps(
                {
                    "id": uuid.uuid4().hex,
                    "name": "t",
                    "func": "math.floor",
                    "args": (1,),
                    "kwargs": {},
                    "started": now - dt.timedelta(minutes=minutes),
                }
            )
        )
    app = AppFactory()
    Dispatch.objects.create(
        app=app,
        kind="campaign",
        label="Spring sale",
        content_spec={},
        status="sending",
        total=1000,
        accepted=590,
        failed=10,
        started_at=now - dt.timedelta(seconds=60),
    )
    Task.objects.create(
        id=uuid.uuid4().hex,
        name="n1",
        func="delivery.tasks.dispatch_send_task",
        started=now,
        stopped=now,
        success=False,
        result="boom",
    )
    beat = Schedule.objects.get(name="campaigns tick")
    last = Task.objects.create(
        id=uuid.uuid4().hex,
        name="n2",
        func=beat.func,
        started=now - dt.timedelta(seconds=40),
        stopped=now - dt.timedelta(seconds=40),
        success=True,
    )
    beat.task = last.pk
    beat.save()
    from audiences.models import EventReplay

    for minutes in (5, 2):
        EventReplay.objects.create(
            listener="journeys.services.entries.journeys_on_events",
            event_ids=[1, 2],
            created_at=now - dt.timedelta(minutes=minutes),
            next_attempt_at=now,
        )

    out = io.StringIO()
    call_command("status", stdout=out)
    text = out.getvalue()
    assert "replays    2 batches of events wait to enter or end journeys again, the oldest stored 5 min ago" in text
    assert re.search(r"queue      2 tasks waiting, oldest waiting 4[23]\d s", text), text
    assert "Spring sale: sending, 600/1000 done (590 accepted, 10 failed, 0 unknown)" in text
    assert "1 × delivery.tasks.dispatch_send_task" in text
    assert "campaigns tick: last ran 4" in text
    assert "claimed, sending allowed" in text
    assert settings.SECRET_KEY not in text and settings.PUSHDESK_ENCRYPTION_KEY not in text


def test_status_counts_one_of_each_in_the_singular(db, queue, beat):
    """One task, one dispatch, one failure, one batch: the lines do not read "1 tasks"."""
    from audiences.models import EventReplay

    now = timezone.now()
    queue.enqueue(
        SignedPackage.dumps(
            {"id": uuid.uuid4().hex, "name": "t", "func": "math.floor", "args": (1,), "kwargs": {}, "started": now}
        )
    )
    Dispatch.objects.create(
        app=AppFactory(),
        kind="campaign",
        label="Spring sale",
        content_spec={},
        status="sending",
        total=1,
        started_at=now,
    )
    Task.objects.create(
        id=uuid.uuid4().hex, name="n1", func="math.floor", started=now, stopped=now, success=False, result="boom"
    )
    EventReplay.objects.create(
        listener="journeys.services.entries.journeys_on_events", event_ids=[1], created_at=now, next_attempt_at=now
    )

    out = io.StringIO()
    call_command("status", stdout=out)
    text = out.getvalue()
    assert re.search(r"^queue      1 task waiting, oldest", text, re.M), text
    assert re.search(r"^sending    1 dispatch$", text, re.M), text
    assert re.search(r"^failures   1 failed task in the last hour$", text, re.M), text
    assert "replays    1 batch of events waits to enter or end journeys again" in text


def test_a_task_the_queue_cannot_read_is_counted_with_no_age(db, queue):
    queue.enqueue("not a package signed with this instance's key")
    assert queue_depth_and_oldest_age(now=timezone.now()) == (1, None)


def test_status_says_sending_is_off_on_a_copy(db, queue):
    from operations.models import Instance

    Instance.objects.filter(pk=1).update(name="production-eu")
    out = io.StringIO()
    call_command("status", stdout=out)
    assert "SENDING IS OFF" in out.getvalue() and "production-eu" in out.getvalue()


def test_qinfo_config_masks_the_secret_key(db):
    out = io.StringIO()
    call_command("qinfo", "--config", stdout=out)
    text = out.getvalue()
    assert "SECRET_KEY: ****" in text
    assert settings.SECRET_KEY not in text


@pytest.mark.parametrize("unbuffered", [True, False], ids=["unbuffered", "buffered"])
def test_a_command_whose_reader_went_away_stops_without_a_traceback(embedded_env, unbuffered):
    """`manage.py qinfo --config | head -1`, `status | head`: the pipe closes before all is written."""
    import subprocess
    import sys

    from tests.processes import ROOT

    env = {k: v for k, v in embedded_env.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:  # as under systemd's journal, or a Docker image's usual setting
        env["PYTHONUNBUFFERED"] = "1"
    process = subprocess.Popen(
        [sys.executable, "manage.py", "qinfo", "--config"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    process.stdout.close()  # the reader is gone before the first line
    stderr = process.stderr.read()
    assert process.wait(timeout=60) == 141, stderr
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr


def test_qinfo_runs_without_blessed_missing(db, capsys):
    call_command("qinfo")
    captured = capsys.readouterr()
    assert "Blessed is not installed" not in captured.out + captured.err


@pytest.mark.django_db(transaction=True)
def test_a_migrate_brings_back_a_deleted_beat_and_leaves_a_changed_one_as_set():
    Schedule.objects.filter(name="journeys tick").delete()
    Schedule.objects.filter(name="campaigns tick").update(minutes=5)
    call_command("migrate", verbosity=0)
    assert Schedule.objects.get(name="journeys tick").func == "journeys.tasks.journeys_tick_task"
    assert Schedule.objects.get(name="campaigns tick").minutes == 5
    replays = Schedule.objects.get(name="events replay")  # a beat no migration of its own writes
    assert (replays.func, replays.minutes, replays.repeats) == ("audiences.tasks.events_replay_task", 1, -1)


@pytest.mark.django_db(transaction=True)
def test_each_deleted_beat_is_reported_missing_and_a_migrate_brings_it_back():
    from operations.beats import BEATS

    assert set(BEATS) == {"campaigns tick", "journeys tick", "events replay", "delivery watchdog", "imports watchdog"}
    call_command("migrate", verbosity=0)  # a transactional test before this one may have emptied the table
    Schedule.objects.filter(name__in=BEATS).delete()
    out = io.StringIO()
    call_command("status", stdout=out)
    for name in BEATS:
        assert f"{name}: MISSING" in out.getvalue(), out.getvalue()

    call_command("migrate", verbosity=0)
    out = io.StringIO()
    call_command("status", stdout=out)
    for name, func in BEATS.items():
        assert Schedule.objects.get(name=name).func == func
        assert f"{name}: last ran" in out.getvalue()
    assert "MISSING" not in out.getvalue()


@pytest.fixture
def redis_down(monkeypatch):
    """The broker pointed at a port where no Redis answers, as during a Redis restart."""
    from django_q.conf import Conf

    from tests.processes import free_port

    if "redis" not in settings.Q_CLUSTER:
        pytest.skip("the queue is the database here")
    monkeypatch.setattr(Conf, "REDIS", f"redis://127.0.0.1:{free_port()}/0")


def test_status_says_the_queue_cannot_be_read_while_redis_is_down_and_prints_the_rest(db, redis_down, beat):
    out = io.StringIO()
    with pytest.raises(SystemExit) as stopped:
        call_command("status", stdout=out)
    text = out.getvalue()
    assert stopped.value.code == 1
    assert "queue      cannot be read: Redis does not answer (ConnectionError)" in text
    assert "claimed, sending allowed" in text and "campaigns tick: last ran never" in text


def test_status_says_in_one_line_that_the_database_does_not_answer(tmp_path):
    import os

    from tests.processes import free_port, manage

    env = {**os.environ, "DATABASE_URL": f"postgres://pushdesk:db-password@127.0.0.1:{free_port()}/pushdesk"}
    result = manage(["status"], env, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "db-password" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "the database does not answer" in lines[0], result.stderr


def test_status_gives_a_stream_the_rate_of_its_last_minute_not_its_days_average(db, queue):
    """A stream opened at midnight and sending 2/s now is not sending its day's average."""
    from delivery.models import Delivery
    from tests.factories import PushContentFactory, orders_stream

    now = timezone.now()
    stream = orders_stream(PushContentFactory(app=AppFactory()), source_id=1)
    Dispatch.objects.filter(pk=stream.pk).update(started_at=now - dt.timedelta(hours=10), total=36_000, accepted=36_000)
    Delivery.objects.bulk_create(
        Delivery(
            dispatch=stream,
            status="accepted",
            queued_at=now - dt.timedelta(seconds=i % 50 + 2),
            finished_at=now - dt.timedelta(seconds=i % 50 + 1),
        )
        for i in range(120)
    )
    out = io.StringIO()
    call_command("status", stdout=out)
    line = next(line for line in out.getvalue().splitlines() if f"#{stream.pk} " in line)
    assert line.endswith("2.0/s in the last minute"), line


def test_status_counts_an_open_stream_as_its_rows_are_now_not_its_rows_last_copy(db, queue):
    """An open stream's counters on its row are kept once a minute (calls append without touching
    it): ``status`` sums its rollup, as its page and the home page do."""
    from tests.test_home import make_sends

    now = timezone.now()
    stream = make_sends(
        AppFactory(),
        [("accepted", "", "ios")] * 3 + [("failed", "BadDeviceToken", "ios")],
        finished_at=now,
        label="Order shipped: API triggers",
        status="sending",
        kind="api_trigger",
    )
    Dispatch.objects.filter(pk=stream.pk).update(standing=True, total=1, accepted=1, failed=0)
    out = io.StringIO()
    call_command("status", stdout=out)
    line = next(line for line in out.getvalue().splitlines() if f"#{stream.pk} " in line)
    assert ": sending, 4/4 done (3 accepted, 1 failed, 0 unknown)" in line, line


def test_status_on_a_database_not_migrated_says_to_migrate_not_that_it_does_not_answer(db, queue):
    from django.core.management import CommandError
    from django.db import connection

    with connection.cursor() as cursor:  # rolled back with the test's transaction
        cursor.execute("ALTER TABLE operations_instance RENAME TO operations_instance_elsewhere")
    with pytest.raises(CommandError) as refused:
        call_command("status", stdout=io.StringIO())
    assert "does not answer" not in str(refused.value)
    assert "manage.py migrate" in str(refused.value), refused.value


@pytest.fixture
def reader_role(transactional_db):
    """A database user that may read django_migrations and nothing else (as a monitoring user
    whose grants predate a table), taken on by this connection; dropped after the test."""
    from django.db import DatabaseError, connection

    if connection.vendor != "postgresql":
        pytest.skip("SQLite has no users")
    role = f"pushdesk_reader_{uuid.uuid4().hex[:12]}"
    with connection.cursor() as cursor:
        try:
            cursor.execute(f"CREATE ROLE {role}")
        except DatabaseError:
            pytest.skip("the test database's user may not create roles")
        cursor.execute(f"GRANT SELECT ON django_migrations TO {role}")
        cursor.execute(f"SET ROLE {role}")
    yield role
    with connection.cursor() as cursor:
        cursor.execute("RESET ROLE")
        cursor.execute(f"REVOKE ALL ON django_migrations FROM {role}")
        cursor.execute(f"DROP ROLE {role}")


def test_status_refused_a_read_on_a_migrated_database_says_so_and_does_not_say_to_migrate(reader_role):
    from django.core.management import CommandError
    from django.db import connection

    with pytest.raises(CommandError) as refused:
        call_command("status", stdout=io.StringIO())
    said = str(refused.value)
    assert "migrate" not in said, said
    assert "permission denied" in said and "its migrations are all applied" in said, said
    assert "\n" not in said

    # The same refusal on a release not migrated yet: then `migrate` is said, with how many.
    with connection.cursor() as cursor:
        cursor.execute("RESET ROLE")
        cursor.execute("SELECT id, app, name, applied FROM django_migrations WHERE app = 'operations' ORDER BY id DESC")
        last = cursor.fetchone()
        cursor.execute("DELETE FROM django_migrations WHERE id = %s", [last[0]])
        cursor.execute(f"SET ROLE {reader_role}")
    try:
        with pytest.raises(CommandError) as refused:
            call_command("status", stdout=io.StringIO())
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET ROLE")
            cursor.execute("INSERT INTO django_migrations (id, app, name, applied) VALUES (%s, %s, %s, %s)", last)
    assert "1 migrations are not applied: run `manage.py migrate`" in str(refused.value), refused.value


@pytest.mark.parametrize("command", [["qinfo"], ["qmonitor", "--run-once"]], ids=lambda c: c[0])
def test_the_queue_s_commands_say_in_one_line_that_redis_does_not_answer(db, redis_down, caplog, command):
    """One line: the queue's own ("Can not connect to Redis server.") came before it, and
    qmonitor ended with a traceback."""
    import logging

    from django.core.management import CommandError

    with pytest.raises(
        CommandError, match=r"^Redis does not answer \(ConnectionError.*\): start it, or check REDIS_URL\.$"
    ):
        call_command(*command, stdout=io.StringIO())
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert logging.getLogger("django-q").level != logging.CRITICAL  # as it was, once the command ends


def test_status_lists_the_live_keys_of_a_superuser_that_someone_else_made(db, queue, admin_erin):
    """An Administrator could make a key owned by a superuser (and act as them through the API)
    until only a superuser could: status names those still live, by prefix, to be looked at."""
    from accounts.models import ApiKey, User
    from accounts.services import api_key_create

    root = User.objects.create_superuser("root", password="a-long-passphrase-for-root")
    own, _ = api_key_create(user=root, name="root's own", scopes=["read"], by=root)
    made = {}
    for name in ("by erin", "by a deleted user", "revoked", "expired"):
        made[name], _ = api_key_create(user=root, name=name, scopes=["read"], by=root)
    ApiKey.objects.filter(pk=made["by erin"].pk).update(created_by=admin_erin)  # as before the rule
    ApiKey.objects.filter(pk=made["by a deleted user"].pk).update(created_by=None)
    ApiKey.objects.filter(pk=made["revoked"].pk).update(created_by=admin_erin, revoked_at=timezone.now())
    expired = timezone.now() - dt.timedelta(days=1)
    ApiKey.objects.filter(pk=made["expired"].pk).update(created_by=admin_erin, expires_at=expired)

    out = io.StringIO()
    call_command("status", stdout=out)

    lines = out.getvalue().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("api keys"))
    assert lines[start].startswith("api keys   2 of a superuser made by someone else")
    assert lines[start + 1 : start + 3] == [
        f"  {made['by erin'].prefix}… 'by erin' of root, made by admin_erin",
        f"  {made['by a deleted user'].prefix}… 'by a deleted user' of root, made by a deleted user",
    ]
    assert own.prefix not in out.getvalue()


def test_status_says_nothing_of_keys_when_every_superuser_key_is_a_superusers_own(db, queue):
    from accounts.models import User
    from accounts.services import api_key_create

    root = User.objects.create_superuser("root", password="a-long-passphrase-for-root")
    api_key_create(user=root, name="root's own", scopes=["read"], by=root)
    out = io.StringIO()
    call_command("status", stdout=out)
    assert "api keys" not in out.getvalue()


def test_status_under_a_key_that_cannot_decrypt_still_names_a_cap_that_stops_retention(db, queue, settings):
    """A restore drill under the wrong key, on an app whose cap outlasts the deliveries kept: both
    are said, where reading the cap's app decrypted its credentials and the command failed."""
    from cryptography.fernet import Fernet

    from delivery.models import App, DeliveryRules

    app = AppFactory(name="Shop")
    App.objects.filter(pk=app.pk).update(fcm_service_account="a service account")
    DeliveryRules.objects.create(app=app, frequency_cap=1, frequency_window_hours=24 * 30)
    settings.PUSHDESK_RETENTION_DELIVERY_DAYS = 7
    settings.PUSHDESK_ENCRYPTION_KEY = Fernet.generate_key().decode()

    out = io.StringIO()
    call_command("status", stdout=out)
    text = out.getvalue()
    assert f"app 'Shop' (id {app.pk}): the FCM service account cannot be decrypted" in text
    assert "retention  REFUSES TO RUN" in text
    assert f"The app 'Shop' (id {app.pk}) caps marketing pushes at 1 per 720 hours" in text


def test_status_check_exits_0_while_nothing_needs_an_operator(db, queue, beat, workers_running):
    out = io.StringIO()
    call_command("status", "--check", stdout=out)  # no SystemExit: status 0
    assert "claimed, sending allowed" in out.getvalue()


@pytest.mark.parametrize("problem", ["sending_off", "secrets", "beat_missing"])
def test_status_check_exits_2_when_a_line_needs_an_operator_and_prints_every_line(
    db, queue, beat, workers_running, settings, problem
):
    """`status` exited 0 whatever it said: a monitoring script or a restore drill could not tell
    from its status that sending was off or the key opened nothing."""
    from cryptography.fernet import Fernet

    from delivery.models import App
    from operations.models import Instance

    if problem == "sending_off":
        Instance.objects.filter(pk=1).update(name="production-eu")
        said = "SENDING IS OFF"
    elif problem == "secrets":
        app = AppFactory(name="Shop")
        App.objects.filter(pk=app.pk).update(fcm_service_account="a service account")
        settings.PUSHDESK_ENCRYPTION_KEY = Fernet.generate_key().decode()
        said = "CANNOT BE DECRYPTED"
    else:
        Schedule.objects.filter(name="journeys tick").delete()
        said = "journeys tick: MISSING"
    plain = io.StringIO()
    call_command("status", stdout=plain)  # without --check: status 0, as before
    assert said in plain.getvalue()
    out = io.StringIO()
    with pytest.raises(SystemExit) as stopped:
        call_command("status", "--check", stdout=out)
    assert stopped.value.code == 2
    assert said in out.getvalue() and out.getvalue().rstrip().splitlines()[-1].startswith("  ")  # the beat, last


def test_status_help_names_every_part_it_prints():
    """`manage.py help status` is where an operator first reads what the command tells."""
    from operations.management.commands.status import Command

    described = Command().create_parser("manage.py", "status").format_help().lower()
    described = " ".join(described.split())
    for part in (
        "instance",
        "credentials",
        "api keys",
        "queue",
        "dispatches",
        "failed tasks",
        "event",
        "imports",
        "retention",
        "beat",
    ):
        assert part in described, part


def _late(name: str, *, minutes: int) -> None:
    """The beat's schedule ``name`` last ran ``minutes`` ago, and was due a minute after."""
    schedule = Schedule.objects.get(name=name)
    then = timezone.now() - dt.timedelta(minutes=minutes)
    last = Task.objects.create(
        id=uuid.uuid4().hex, name=f"late-{minutes}", func=schedule.func, started=then, stopped=then, success=True
    )
    Schedule.objects.filter(pk=schedule.pk).update(task=last.pk, next_run=then + dt.timedelta(minutes=1))


def _check(capsys) -> tuple[int, str, str]:
    """``status --check``: its exit status, what it printed and what it said on stderr."""
    out = io.StringIO()
    try:
        call_command("status", "--check", stdout=out)
    except SystemExit as stopped:
        code = stopped.code
    else:
        code = 0
    return code, out.getvalue(), capsys.readouterr().err


def test_status_check_exits_2_naming_a_beat_that_has_not_run_for_12_minutes_and_since_when(
    db, queue, beat, workers_running, capsys
):
    """The beat (campaigns tick, every minute) had last run 12 minutes ago, and `status --check`
    exited 0: a health check or a cron job read all well while no campaign was fired."""
    _late("campaigns tick", minutes=12)
    then = (timezone.now() - dt.timedelta(minutes=12)).astimezone(dt.UTC)
    code, out, err = _check(capsys)
    assert code == 2, out
    due = then + dt.timedelta(minutes=1)
    line = next(line for line in out.splitlines() if line.startswith("  campaigns tick:"))
    assert line.startswith(f"  campaigns tick: last ran 12 min ago ({then:%Y-%m-%d %H:%M} UTC)"), line
    assert f"LATE: due since {due:%Y-%m-%d %H:%M} UTC (more than 300 s): is a qcluster running?" in line, line
    [said] = err.strip().splitlines()
    assert said == f"status --check: the beat's campaigns tick is late, last ran {then:%Y-%m-%d %H:%M} UTC", said


def test_a_beat_that_ran_three_minutes_ago_is_not_late(db, queue, beat, workers_running, capsys):
    """A beat's task may wait behind others in the queue: the queue's line says when that is too long."""
    _late("journeys tick", minutes=3)
    code, out, err = _check(capsys)
    assert code == 0 and "LATE" not in out and err == "", out


def test_status_check_exits_2_when_no_worker_reports_to_the_queue(db, queue, beat, tasks_queued, capsys):
    """No qcluster running: nothing is sent, no beat fires, and the check said all was well."""
    from delivery.services.stream_senders import _beat

    for slot in range(settings.PUSHDESK_STREAM_SENDERS):
        _beat(slot, dedicated=True)
    for name in Schedule.objects.values_list("name", flat=True):
        _late(name, minutes=0)
    ended = timezone.now().astimezone(dt.UTC)
    code, out, err = _check(capsys)
    assert code == 2, out
    assert (
        f"workers    NONE SEEN: no qcluster reports to the queue '{settings.Q_CLUSTER['name']}'; "
        f"the last task ended {ended:%Y-%m-%d %H:%M} UTC" in out
    ), out
    assert err.strip() == f"status --check: no worker seen, the last task ended {ended:%Y-%m-%d %H:%M} UTC", err


def test_status_names_the_workers_it_sees(db, queue, beat, workers_running, capsys):
    code, out, _ = _check(capsys)
    assert code == 0
    assert f"workers    1 running: {workers_running.host} (pid 4321, Idle)" in out, out


@pytest.mark.parametrize(("minutes", "late"), [(6, True), (4, False)])
def test_status_check_exits_2_when_the_oldest_task_has_waited_longer_than_a_task_may_run(
    db, queue, beat, workers_running, capsys, minutes, late
):
    """Q_CLUSTER's timeout (300 s) is the longest a task holds a worker: one waiting longer means
    the workers are stuck, too few, or read another queue."""
    started = timezone.now() - dt.timedelta(minutes=minutes)
    package = {"id": uuid.uuid4().hex, "name": "t", "func": "math.floor", "args": (1,), "kwargs": {}}
    queue.enqueue(SignedPackage.dumps({**package, "started": started}))
    code, out, err = _check(capsys)
    if not late:
        assert code == 0 and "TOO LONG" not in out, out
        return
    assert code == 2, out
    assert re.search(
        rf"queue      1 task waiting, oldest waiting 3[6-9]\d s: WAITING TOO LONG \(since "
        rf"{started.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC; more than 300 s\): are the workers running, and enough\?",
        out,
    ), out
    assert err.strip() == f"status --check: the oldest task waits since {started.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC"


def test_status_check_exits_2_when_a_stream_sender_slot_has_not_beaten_for_two_minutes(
    db, queue, beat, workers_running, settings, capsys, monkeypatch
):
    """API triggers and event-entered journeys wait in their streams while no sender beats its slot."""
    import time

    from delivery.services import stream_senders

    settings.PUSHDESK_STREAM_SENDERS = 2
    stream_senders._beat(0, dedicated=True)
    code, out, _ = _check(capsys)
    assert code == 2 and "slot 1: NO HEARTBEAT, never seen" in out, out
    beaten = time.time() - 200
    with monkeypatch.context() as patched:
        patched.setattr(stream_senders.time, "time", lambda: beaten)
        stream_senders._beat(1, dedicated=False)
    from django.core.cache import cache

    cache.delete("pushdesk:stream-sender:1")  # its 15 s heartbeat ran out long since
    since = dt.datetime.fromtimestamp(beaten, dt.UTC)
    code, out, err = _check(capsys)
    assert code == 2, out
    assert f"senders    slot 0: a send_stream process (pid {os.getpid()}), beating" in out, out
    assert (
        f"senders    slot 1: NO HEARTBEAT since {since:%Y-%m-%d %H:%M:%S} UTC (3 min ago): is `send_stream --slot 1` "
        "running, or a worker (the delivery watchdog starts a sender task for a silent slot each minute)?" in out
    ), out
    assert err.strip() == f"status --check: stream sender slot 1 silent since {since:%Y-%m-%d %H:%M:%S} UTC"

    # Silent for a minute: the watchdog's to start a task for it, no operator's.
    beaten = time.time() - 60
    with monkeypatch.context() as patched:
        patched.setattr(stream_senders.time, "time", lambda: beaten)
        stream_senders._beat(1, dedicated=False)
    cache.delete("pushdesk:stream-sender:1")
    code, out, err = _check(capsys)
    assert code == 0 and "slot 1: no heartbeat since" in out and err == "", out


@pytest.fixture
def queue_with_figures(db, queue, beat):
    """Two tasks waiting (the oldest for 7 minutes), a cluster of two workers restarted once, a
    success of 2 s today, one of yesterday and a failure."""
    from django_q.status import Stat, Status

    now = timezone.now()
    for minutes in (7, 1):
        queue.enqueue(
            SignedPackage.dumps(
                {
                    "id": uuid.uuid4().hex,
                    "name": "t",
                    "func": "math.floor",
                    "args": (1,),
                    "kwargs": {},
                    "started": now - dt.timedelta(minutes=minutes),
                }
            )
        )
    for hours, seconds, success in ((1, 2, True), (30, 9, True), (2, 1, False)):
        stopped = now - dt.timedelta(hours=hours)
        Task.objects.create(
            id=uuid.uuid4().hex,
            name=f"t{hours}",
            func="math.floor",
            success=success,
            started=stopped - dt.timedelta(seconds=seconds),
            stopped=stopped,
        )
    cluster = Status(pid=4321, cluster_id=uuid.uuid4())
    cluster.workers, cluster.reincarnations = [4322, 4323], 1
    key = Stat.get_key(cluster.cluster_id)
    queue.set_stat(key, SignedPackage.dumps(cluster, True), 60)
    yield
    if "redis" in settings.Q_CLUSTER:
        queue.connection.delete(key)
    else:
        queue.cache.delete(key)


QUEUE_FIGURES = {
    "queue": settings.Q_CLUSTER["name"],
    "clusters": 1,
    "workers": 2,
    "restarts": 1,
    "queued": 2,
    "successes": 2,
    "failures": 1,
    "tasks_last_24h": 1,
    "average_task_seconds_last_24h": 2.0,
}


def _figures_said(text: str) -> dict:
    said = {}
    for line in text.splitlines():
        name, value = line.split(None, 1)
        said[name] = value
    return said


def test_status_queue_prints_the_queue_s_figures_one_a_line(queue_with_figures):
    """qinfo's figures run together when its output is not a terminal (``Clusters1Workers2…``):
    ``status --queue`` prints each on a line of its own, its name then its value."""
    out = io.StringIO()
    call_command("status", "--queue", stdout=out)
    said = _figures_said(out.getvalue())
    assert {name: said.get(name) for name in QUEUE_FIGURES} == {n: str(v) for n, v in QUEUE_FIGURES.items()}
    assert 420 <= float(said["oldest_task_age_seconds"]) < 430
    assert said["schedules"] == str(Schedule.objects.count())
    assert said["broker"].split()[0] in ("Redis", "ORM")
    assert "SECRET_KEY" not in out.getvalue() and "instance" not in said  # the queue's lines alone


def test_status_queue_json_prints_the_figures_as_one_object(queue_with_figures):
    import json

    out = io.StringIO()
    call_command("status", "--queue", "--json", stdout=out)
    figures = json.loads(out.getvalue())
    assert {name: figures.get(name) for name in QUEUE_FIGURES} == QUEUE_FIGURES
    assert 420 <= figures["oldest_task_age_seconds"] < 430
    assert figures["schedules"] == Schedule.objects.count()


def test_status_json_goes_with_queue(db):
    from django.core.management import CommandError

    with pytest.raises(CommandError, match="--json goes with --queue"):
        call_command("status", "--json", stdout=io.StringIO())


def test_qinfo_off_a_terminal_prints_the_figures_one_a_line(queue_with_figures, capsys):
    """Piped or in a script, qinfo's columns ran together; there it prints ``status --queue``'s lines."""
    out = io.StringIO()
    call_command("qinfo", stdout=out)
    text = out.getvalue() + capsys.readouterr().out
    assert "Clusters1Workers" not in text
    said = _figures_said(text)
    assert {name: said.get(name) for name in ("clusters", "workers", "queued")} == {
        "clusters": "1",
        "workers": "2",
        "queued": "2",
    }


def test_status_queue_says_in_one_line_that_redis_does_not_answer(db, redis_down):
    from django.core.management import CommandError

    with pytest.raises(
        CommandError, match=r"^Redis does not answer \(ConnectionError.*\): start it, or check REDIS_URL\.$"
    ):
        call_command("status", "--queue", stdout=io.StringIO())
