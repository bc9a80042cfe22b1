"""An import whose worker stopped mid-file (killed, its machine lost) is taken up again or ended,
so that the imports of its segment waiting for their turn are not held for ever."""

import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.db import models
from django.db.models import F
from django.utils import timezone

from audiences.models import Import, Segment
from audiences.services.imports import import_create, import_process, imports_watch
from audiences.services.segments import segment_create

pytestmark = [pytest.mark.django_db(transaction=False), pytest.mark.embedded]


@pytest.fixture
def segment(manager_alice):
    return segment_create(name="VIP", kind=Segment.Kind.STATIC, by=manager_alice)


@pytest.fixture
def upload(manager_alice, media, segment):
    def upload(content: bytes, target: str) -> Import:
        record = import_create(  # no commit here: its task is not run
            upload=SimpleUploadedFile(f"{target}.csv", content), by=manager_alice, target=target, segment_id=segment.pk
        )
        return record

    return upload


def _stop_its_worker(record: Import, *, minutes_ago: int) -> None:
    """Leave the import as a worker killed mid-import leaves it: running, its last heartbeat old."""
    then = timezone.now() - timezone.timedelta(minutes=minutes_ago)
    Import.objects.filter(pk=record.pk).update(status=Import.Status.RUNNING, heartbeat_at=then)


def _members(segment) -> list[str]:
    return sorted(segment.members.values_list("profile__external_id", flat=True))


def test_an_import_whose_worker_stopped_after_writing_resumes_and_the_one_waiting_runs_after_it(
    upload, segment, settings, django_capture_on_commit_callbacks
):
    settings.PUSHDESK_IMPORT_BATCH_ROWS = 2
    add = upload(b"external_id\na1\na2\na3\na4\n", "add_to_segment")
    assert import_process(import_id=add.pk, seconds=0) is True  # its first batch, then its worker stops
    _stop_its_worker(add, minutes_ago=30)
    replace = upload(b"external_id\na4\nr1\n", "replace_segment")
    assert import_process(import_id=replace.pk) is False
    assert Import.objects.get(pk=replace.pk).waiting_for_id == add.pk

    with django_capture_on_commit_callbacks(execute=True):
        report = imports_watch()
    assert report == {"resumed": [add.pk], "failed": []}
    add.refresh_from_db()
    replace.refresh_from_db()
    assert (add.status, add.rows_imported, add.error) == ("done", 4, "")
    assert (replace.status, replace.members_removed, replace.waiting_for_id) == ("done", 3, None)
    assert _members(segment) == ["a4", "r1"]


def _stop_its_run_before_a_batch(record: Import, *, minutes_ago: int) -> None:
    """Leave the import as a worker killed before its run's first batch leaves it (a deploy, an
    out-of-memory kill of another process): running, its run having written nothing."""
    Import.objects.filter(pk=record.pk).update(run_bytes_from=F("bytes_done"))
    _stop_its_worker(record, minutes_ago=minutes_ago)


def _an_import_stopped_before_a_batch_and_one_behind_it(upload, settings) -> tuple[Import, Import]:
    """An add import into the segment whose worker stopped before its run wrote a batch, and a
    replace import waiting for its turn behind it."""
    settings.PUSHDESK_IMPORT_BATCH_ROWS = 2
    add = upload(b"external_id\na1\na2\na3\n", "add_to_segment")
    assert import_process(import_id=add.pk, seconds=0) is True
    _stop_its_run_before_a_batch(add, minutes_ago=30)
    replace = upload(b"external_id\nr1\n", "replace_segment")
    assert import_process(import_id=replace.pk) is False
    return add, replace


def test_an_import_whose_run_wrote_nothing_before_its_worker_stopped_gets_one_more_run(
    upload, segment, settings, django_capture_on_commit_callbacks, manager_alice, login
):
    """A deploy or an out-of-memory kill elsewhere stops a worker before its first batch: the
    import is queued again once, rather than failed for someone to restart after every deploy."""
    add, replace = _an_import_stopped_before_a_batch_and_one_behind_it(upload, settings)

    assert imports_watch() == {"resumed": [add.pk], "failed": []}  # its task is not run: the worker is gone
    add.refresh_from_db()
    assert (add.status, add.stalled_runs, add.error) == ("queued", 1, "")
    text = login(manager_alice).get(f"/admin/audiences/import/{add.pk}/status/").json()["text"]
    assert "taken up again: its worker stopped before its run wrote a batch" in text, text
    assert "a second such run ends it failed" in text, text
    out = io.StringIO()
    call_command("status", stdout=out)
    assert f"#{add.pk} add_to_segment.csv: taken up again after its worker stopped before writing a batch" in (
        out.getvalue()
    ), out.getvalue()

    with django_capture_on_commit_callbacks(execute=True):
        assert import_process(import_id=add.pk) is False  # its second run ends the file
    add.refresh_from_db()
    replace.refresh_from_db()
    assert (add.status, add.rows_imported) == ("done", 3)
    assert (replace.status, replace.waiting_for_id) == ("done", None)
    assert _members(segment) == ["r1"]


def test_an_import_whose_second_run_in_a_row_wrote_nothing_fails_saying_why(
    upload, segment, settings, django_capture_on_commit_callbacks, manager_alice, login
):
    """Taken up again twice, a file that kills its worker would hold the segment for ever: it fails."""
    add, replace = _an_import_stopped_before_a_batch_and_one_behind_it(upload, settings)
    assert imports_watch() == {"resumed": [add.pk], "failed": []}
    _stop_its_worker(add, minutes_ago=30)  # taken by a worker killed again before its first batch

    with django_capture_on_commit_callbacks(execute=True):
        report = imports_watch()
    assert report == {"resumed": [], "failed": [add.pk]}
    add.refresh_from_db()
    replace.refresh_from_db()
    assert (add.status, add.stalled_runs) == ("failed", 2)
    assert "no batch written for 30 min" in add.error and "PUSHDESK_IMPORT_STALL_SECONDS" in add.error
    assert "two runs in a row" in add.error and "its file may be what stops the worker" in add.error
    assert "first 2 rows" in add.error and "Restart the import" in add.error
    text = login(manager_alice).get(f"/admin/audiences/import/{add.pk}/status/").json()["text"]
    assert text.startswith("Failed: its worker stopped before writing a batch in two runs in a row"), text
    out = io.StringIO()
    call_command("status", stdout=out)
    assert f"#{add.pk} add_to_segment.csv: ended failed, its worker stopped before writing a batch in two runs" in (
        out.getvalue()
    ), out.getvalue()
    assert (replace.status, replace.waiting_for_id) == ("done", None)
    assert _members(segment) == ["r1"]


def test_a_run_that_writes_a_batch_clears_an_earlier_stall_that_wrote_nothing(
    upload, settings, django_capture_on_commit_callbacks
):
    settings.PUSHDESK_IMPORT_BATCH_ROWS = 1
    add = upload(b"external_id\na1\na2\na3\na4\na5\n", "add_to_segment")
    assert import_process(import_id=add.pk, seconds=0) is True
    _stop_its_run_before_a_batch(add, minutes_ago=30)
    assert imports_watch()["resumed"] == [add.pk]
    assert import_process(import_id=add.pk, seconds=0) is True  # this run writes a batch, then stops
    _stop_its_worker(add, minutes_ago=30)
    assert imports_watch()["resumed"] == [add.pk]
    assert Import.objects.get(pk=add.pk).stalled_runs == 0
    assert import_process(import_id=add.pk, seconds=0) is True
    _stop_its_run_before_a_batch(add, minutes_ago=30)
    assert imports_watch() == {"resumed": [add.pk], "failed": []}  # a first stall in a row again


def test_an_import_whose_worker_wrote_within_the_bound_is_left_running(upload, settings):
    add = upload(b"external_id\na1\n", "add_to_segment")
    _stop_its_worker(add, minutes_ago=5)  # the default bound: the queue's timeout and a minute (6 min)
    assert imports_watch() == {"resumed": [], "failed": []}
    _stop_its_worker(add, minutes_ago=30)
    settings.PUSHDESK_IMPORT_STALL_SECONDS = 3600
    assert imports_watch() == {"resumed": [], "failed": []}
    assert Import.objects.get(pk=add.pk).status == "running"
    settings.PUSHDESK_IMPORT_STALL_SECONDS = 360
    assert imports_watch()["resumed"] == [add.pk]


def test_a_hand_over_task_lost_with_its_worker_is_queued_again(upload, settings, django_capture_on_commit_callbacks):
    """Handed over between two tasks, whose second never came: it is queued, not failed."""
    settings.PUSHDESK_IMPORT_BATCH_ROWS = 1
    add = upload(b"external_id\na1\na2\n", "add_to_segment")
    assert import_process(import_id=add.pk, seconds=0) is True
    then = timezone.now() - timezone.timedelta(hours=2)
    Import.objects.filter(pk=add.pk).update(heartbeat_at=then, run_bytes_from=F("bytes_done"))
    with django_capture_on_commit_callbacks(execute=True):
        assert imports_watch() == {"resumed": [add.pk], "failed": []}
    assert Import.objects.get(pk=add.pk).status == "done"


def test_the_operator_sees_a_stalled_import_and_the_imports_waiting_for_it(upload, manager_alice, login):
    add = upload(b"external_id\na1\n", "add_to_segment")
    _stop_its_worker(add, minutes_ago=30)
    replace = upload(b"external_id\nr1\n", "replace_segment")
    import_process(import_id=replace.pk)

    out = io.StringIO()
    call_command("status", stdout=out)
    text = out.getvalue()
    assert "imports    1 stalled" in text, text
    line = next(line for line in text.splitlines() if line.startswith(f"  #{add.pk} "))
    assert line.startswith(f"  #{add.pk} add_to_segment.csv: no batch written for 30 min, NOT TAKEN UP"), line
    assert line.endswith(", 1 import of its segment waiting"), line

    status = login(manager_alice).get(f"/admin/audiences/import/{add.pk}/status/").json()
    assert status["text"].startswith("Running, stalled: no batch written for 30 min"), status["text"]
    waiting = login(manager_alice).get(f"/admin/audiences/import/{replace.pk}/status/").json()
    assert f"waiting for import #{add.pk} into the same segment to finish (stalled" in waiting["text"], waiting["text"]


def test_status_check_flags_an_import_stalled_past_twice_the_bound_only(upload, settings):
    """A stalled import is the watchdog's to take up within a minute: no operator is needed for it.
    One still stalled past twice PUSHDESK_IMPORT_STALL_SECONDS says the watchdog is not running."""
    add = upload(b"external_id\na1\n", "add_to_segment")
    _stop_its_worker(add, minutes_ago=10)  # past the bound (6 min), under twice it
    out = io.StringIO()
    call_command("status", "--check", stdout=out)  # no SystemExit: status 0
    assert "imports    1 stalled" in out.getvalue() and "NOT TAKEN UP" not in out.getvalue(), out.getvalue()

    _stop_its_worker(add, minutes_ago=13)
    plain = io.StringIO()
    call_command("status", stdout=plain)  # without --check: status 0
    out = io.StringIO()
    with pytest.raises(SystemExit) as stopped:
        call_command("status", "--check", stdout=out)
    assert stopped.value.code == 2
    said = f"  #{add.pk} add_to_segment.csv: no batch written for 13 min, NOT TAKEN UP by the imports watchdog"
    assert said in out.getvalue() and said in plain.getvalue(), out.getvalue()

    settings.PUSHDESK_IMPORT_STALL_SECONDS = 600  # twice that is 20 min
    call_command("status", "--check", stdout=io.StringIO())


def _let_time_pass(record: Import, *, minutes: int) -> None:
    """Move every time the import holds back by ``minutes``, as though they had passed."""
    names = [field.name for field in Import._meta.concrete_fields if isinstance(field, models.DateTimeField)]
    then = timezone.timedelta(minutes=minutes)
    Import.objects.filter(pk=record.pk).update(**{name: F(name) - then for name in names})


def _status(*args: str) -> tuple[str, int]:
    out = io.StringIO()
    try:
        call_command("status", *args, stdout=out)
    except SystemExit as stopped:
        return out.getvalue(), stopped.code
    return out.getvalue(), 0


def test_an_import_the_watchdog_queues_again_that_no_worker_takes_is_not_taken_up_until_a_batch_is_written(
    upload, settings, manager_alice, login
):
    """No worker on its queue: the watchdog queues it again at each bound, which must not hide it."""
    settings.PUSHDESK_IMPORT_BATCH_ROWS = 1
    add = upload(b"external_id\na1\na2\na3\na4\n", "add_to_segment")
    before = timezone.now()
    assert import_process(import_id=add.pk, seconds=0) is True  # its first batch, handed over; no worker after
    after = timezone.now()
    for _ in range(4):  # 7 min each, past the bound (6 min): queued again each time, taken by no worker
        _let_time_pass(add, minutes=7)
        assert imports_watch() == {"resumed": [add.pk], "failed": []}

    text, code = _status("--check")
    assert code == 2, text
    line = next(line for line in text.splitlines() if line.startswith(f"imports    #{add.pk} "))
    assert line.startswith(f"imports    #{add.pk} add_to_segment.csv: waiting for a worker for 28 min"), line
    assert "NOT TAKEN UP" in line, line
    said = login(manager_alice).get(f"/admin/audiences/import/{add.pk}/status/").json()["text"]
    sinces = {f"{moment - timezone.timedelta(minutes=28):%Y-%m-%d %H:%M}" for moment in (before, after)}
    assert any(said.startswith(f"Queued, waiting for a worker since {since} UTC (28 min)") for since in sinces), said

    assert import_process(import_id=add.pk, seconds=0) is True  # a worker at last: a batch, handed over again
    text, code = _status("--check")
    assert code == 0 and "NOT TAKEN UP" not in text, text
    said = login(manager_alice).get(f"/admin/audiences/import/{add.pk}/status/").json()["text"]
    assert "waiting for a worker" not in said, said


def test_an_uploaded_import_no_worker_takes_is_not_taken_up_past_twice_the_bound(upload):
    add = upload(b"external_id\na1\n", "add_to_segment")
    _let_time_pass(add, minutes=10)  # past the bound (6 min), under twice it
    text, code = _status("--check")
    assert code == 0 and "NOT TAKEN UP" not in text, text
    _let_time_pass(add, minutes=3)
    text, code = _status("--check")
    assert code == 2, text
    assert f"imports    #{add.pk} add_to_segment.csv: waiting for a worker for 13 min" in text, text


def test_an_import_waiting_for_its_segments_turn_is_not_reported_as_not_taken_up(upload):
    """Its wait is the import ahead's: that one is reported when stalled, not this one."""
    add = upload(b"external_id\na1\n", "add_to_segment")
    _stop_its_worker(add, minutes_ago=0)  # running, its worker alive
    replace = upload(b"external_id\nr1\n", "replace_segment")
    assert import_process(import_id=replace.pk) is False
    assert Import.objects.get(pk=replace.pk).waiting_for_id == add.pk
    _let_time_pass(replace, minutes=30)
    text, code = _status("--check")
    assert code == 0 and "NOT TAKEN UP" not in text, text


METRICS_TOKEN = "metrics-token-for-the-import-tests-0123"


def _gauges(client, settings) -> dict[str, float]:
    """The metrics endpoint's unlabelled series, as Prometheus scrapes them."""
    from prometheus_client.parser import text_string_to_metric_families

    settings.PUSHDESK_METRICS_TOKEN = METRICS_TOKEN
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {METRICS_TOKEN}")
    assert response.status_code == 200, response.content
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
        if not sample.labels
    }


def test_an_import_no_worker_takes_up_is_in_the_metrics_until_a_batch_is_written(upload, settings, client):
    """No worker on its queue, the watchdog queuing it again at each bound: an alert rule sees it."""
    settings.PUSHDESK_IMPORT_BATCH_ROWS = 1
    add = upload(b"external_id\na1\na2\na3\na4\n", "add_to_segment")
    gauges = _gauges(client, settings)
    assert gauges["pushdesk_imports_not_taken_up"] == 0
    assert 0 <= gauges["pushdesk_import_oldest_wait_seconds"] < 60  # just queued
    assert import_process(import_id=add.pk, seconds=0) is True  # its first batch, handed over; no worker after
    for _ in range(4):  # 7 min each, past the bound (6 min): queued again each time, taken by no worker
        _let_time_pass(add, minutes=7)
        assert imports_watch() == {"resumed": [add.pk], "failed": []}

    gauges = _gauges(client, settings)
    assert gauges["pushdesk_imports_not_taken_up"] == 1
    assert 28 * 60 <= gauges["pushdesk_import_oldest_wait_seconds"] < 29 * 60
    assert gauges["pushdesk_imports_stalled"] == 0  # the watchdog took it up: what is missing is a worker

    assert import_process(import_id=add.pk, seconds=0) is True  # a worker at last: a batch, handed over again
    gauges = _gauges(client, settings)
    assert gauges["pushdesk_imports_not_taken_up"] == 0
    assert 0 <= gauges["pushdesk_import_oldest_wait_seconds"] < 60


def test_an_import_whose_worker_stopped_is_in_the_metrics_until_the_watchdog_takes_it_up(upload, settings, client):
    settings.PUSHDESK_IMPORT_BATCH_ROWS = 1
    add = upload(b"external_id\na1\na2\n", "add_to_segment")
    assert import_process(import_id=add.pk, seconds=0) is True
    gauges = _gauges(client, settings)
    assert (gauges["pushdesk_imports_stalled"], gauges["pushdesk_import_oldest_stall_seconds"]) == (0, 0)
    _stop_its_worker(add, minutes_ago=30)  # past twice the bound: the watchdog is not running
    gauges = _gauges(client, settings)
    assert gauges["pushdesk_imports_stalled"] == 1
    assert 30 * 60 <= gauges["pushdesk_import_oldest_stall_seconds"] < 31 * 60

    assert imports_watch() == {"resumed": [add.pk], "failed": []}
    gauges = _gauges(client, settings)
    assert (gauges["pushdesk_imports_stalled"], gauges["pushdesk_import_oldest_stall_seconds"]) == (0, 0)


def test_an_import_waiting_for_its_segments_turn_adds_no_wait_for_a_worker_to_the_metrics(upload, settings, client):
    add = upload(b"external_id\na1\n", "add_to_segment")
    _stop_its_worker(add, minutes_ago=0)  # running, its worker alive
    replace = upload(b"external_id\nr1\n", "replace_segment")
    assert import_process(import_id=replace.pk) is False
    _let_time_pass(replace, minutes=30)
    gauges = _gauges(client, settings)
    assert (gauges["pushdesk_imports_not_taken_up"], gauges["pushdesk_import_oldest_wait_seconds"]) == (0, 0)


def test_the_import_gauges_need_the_metrics_token(upload, settings, client):
    add = upload(b"external_id\na1\n", "add_to_segment")
    _let_time_pass(add, minutes=30)
    settings.PUSHDESK_METRICS_TOKEN = METRICS_TOKEN
    assert client.get("/metrics").status_code == 404
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong-token-wrong-token-wrong").status_code == 404
    assert b"pushdesk_imports" not in client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").content


def test_an_import_whose_turn_came_says_it_waits_for_a_worker_not_for_the_import_that_ended(
    upload, manager_alice, login
):
    """The import ahead ended and queued it: until a worker takes it up, its page names no wait for
    the ended import."""
    add = upload(b"external_id\na1\n", "add_to_segment")
    _stop_its_worker(add, minutes_ago=0)  # running, its worker alive
    replace = upload(b"external_id\nr1\n", "replace_segment")
    assert import_process(import_id=replace.pk) is False
    Import.objects.filter(pk=add.pk).update(status=Import.Status.QUEUED)  # its worker hands it over
    import_process(import_id=add.pk)
    assert Import.objects.get(pk=add.pk).status == Import.Status.DONE
    assert Import.objects.get(pk=replace.pk).status == Import.Status.QUEUED  # no worker has taken it up yet

    client = login(manager_alice)
    said = client.get(f"/admin/audiences/import/{replace.pk}/status/").json()["text"]
    assert "to finish" not in said, said
    assert said.startswith(f"Queued, its turn has come (import #{add.pk} into the same segment ended): "), said
    page = client.get(f"/admin/audiences/import/{replace.pk}/change/").content.decode()
    assert "this one runs once it has finished" not in page
