"""The imports' admin: what a failed import shows, and its restart button pressed by each role."""

import csv
import datetime as dt
import io
import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connections
from django.utils import timezone

from accounts.models import AuditEvent
from accounts.services import access_grant, access_revoke
from audiences.models import Import, Profile, Segment, SegmentMember
from audiences.services.imports import import_create, import_process, imports_watch
from audiences.services.segments import segment_create
from tests.pages import listed_rows

pytestmark = pytest.mark.django_db

LANDED = b"external_id,n\nu1,1\n,2\n"  # the first batch (two rows), written
SECOND = LANDED + b"boom,3\n,4\n"  # the second stops the import: the database refuses 'boom'
CONTENT = SECOND + b"u1,5\nu6,6\n"


@pytest.fixture
def failed_import(manager_alice, media, settings, database_refuses_profile, django_capture_on_commit_callbacks):
    """manager_alice's import into her static segment, stopped by the database in its second batch.

    Returns the import; ``failed_import.lift()`` lets the database write again."""
    settings.PUSHDESK_IMPORT_BATCH_ROWS = 2
    segment = segment_create(name="VIP", kind=Segment.Kind.STATIC, by=manager_alice)
    lift = database_refuses_profile("boom")
    upload = SimpleUploadedFile("people.csv", CONTENT, content_type="text/csv")
    with django_capture_on_commit_callbacks(execute=True):
        record = import_create(upload=upload, by=manager_alice, target="add_to_segment", segment_id=segment.pk)
    record.refresh_from_db()
    assert record.status == Import.Status.FAILED
    record.lift = lift
    return record


def downloaded_errors(client, record) -> list[tuple[str, str]]:
    response = client.get(f"/admin/audiences/import/{record.pk}/errors/")
    assert response.status_code == 200
    text = b"".join(response.streaming_content).decode("utf-8-sig")
    return [(row[0], row[1]) for row in list(csv.reader(io.StringIO(text)))[1:]]


def state(record) -> tuple:
    """What a press that is refused must leave as it is."""
    row = Import.objects.filter(pk=record.pk).values().get()
    with open(Import.objects.get(pk=record.pk).error_file.path, "rb") as fh:
        errors = fh.read()
    return (
        row,
        errors,
        sorted(Profile.objects.values_list("external_id", "attributes")),
        sorted(SegmentMember.objects.values_list("segment_id", "profile__external_id")),
        AuditEvent.objects.filter(action="import_restarted").count(),
    )


def test_a_failed_import_shows_in_the_admin_and_the_api_what_landed(login, manager_alice, failed_import, api_key_for):
    """The percentage was the file's read position: 100 % for a small file, whatever landed."""
    landed = round(100 * len(LANDED) / len(CONTENT), 1)
    client = login(manager_alice)
    status = client.get(f"/admin/audiences/import/{failed_import.pk}/status/").json()
    assert (status["status"], status["percent"], status["rows_done"], status["rows_failed"]) == ("failed", landed, 2, 1)
    assert "first 2 rows (to line 3)" in status["error"]
    assert f'value="{landed}"' in client.get("/admin/audiences/import/").content.decode()
    assert downloaded_errors(client, failed_import) == [("3", "")]
    detail = api_key_for(manager_alice, scopes=["read"]).get(f"/api/v1/imports/{failed_import.pk}/").json()
    assert (detail["status"], detail["percent"], detail["rows_done"], detail["rows_failed"]) == ("failed", landed, 2, 1)


def test_an_error_file_missing_from_storage_is_said_so_in_the_admin_and_the_api(
    login, manager_alice, failed_import, api_key_for
):
    """Written by a worker whose storage the web server does not share: the download was a server error."""
    import os

    os.remove(failed_import.error_file.path)
    client = login(manager_alice)
    response = client.get(f"/admin/audiences/import/{failed_import.pk}/errors/", follow=True)
    assert response.redirect_chain == [(f"/admin/audiences/import/{failed_import.pk}/change/", 302)]
    assert "The error file is missing from this server&#x27;s storage" in response.content.decode()
    answer = api_key_for(manager_alice, scopes=["read"]).get(f"/api/v1/imports/{failed_import.pk}/errors/")
    assert answer.status_code == 404
    assert "MEDIA_ROOT must be shared" in answer.json()["detail"]
    assert Import.objects.get(pk=failed_import.pk).status == Import.Status.FAILED  # the import itself as it was


def _restart_run_killed_in_its_first_batch(record, *, by, media) -> None:
    """Restart the import in a worker process of its own, and kill that process while its run writes
    its first batch: after the batch's failed rows went to the error file, before the batch committed.

    The batch's save of the import sleeps (a trigger), the process is killed, and its session, which
    the database ends once it sees its client gone, is ended at once: the batch is rolled back."""
    import os
    import signal
    import subprocess
    import sys

    from django.conf import settings
    from django.db import connection

    from tests.fakes.workers import database_url
    from tests.locks import eventually

    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION pushdesk_test_sleep() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN PERFORM pg_sleep(60); RETURN NEW; END $$"
        )
        cursor.execute(
            "CREATE TRIGGER pushdesk_test_sleep BEFORE UPDATE ON audiences_import FOR EACH ROW "
            "WHEN (NEW.rows_done > OLD.rows_done) EXECUTE FUNCTION pushdesk_test_sleep()"
        )
    env = {k: v for k, v in os.environ.items() if k != "PUSHDESK_TASKS_SYNC"}
    env.update(
        DATABASE_URL=database_url(),
        REDIS_URL=settings.REDIS_URL,
        MEDIA_ROOT=str(media),
        PUSHDESK_IMPORT_BATCH_ROWS="2",
        PUSHDESK_TASKS_SYNC="1",  # the restart's task runs in the same process, as a worker runs it
    )
    restart = (
        "from accounts.models import User; from audiences.services.imports import import_restart; "
        f"import_restart(import_id={record.pk}, by=User.objects.get(pk={by.pk}))"
    )
    worker = subprocess.Popen(
        [sys.executable, "manage.py", "shell", "-c", restart],
        cwd=settings.BASE_DIR,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def sleeping() -> list[int]:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event = 'PgSleep'"
            )
            return [pid for (pid,) in cursor.fetchall()]

    try:
        assert eventually(sleeping, timeout=60, step=0.1), "the worker's batch never came to its commit"
        pids = sleeping()
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", [pids])
        assert eventually(lambda: not sleeping(), step=0.05)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(10)
        with connection.cursor() as cursor:
            cursor.execute("DROP TRIGGER IF EXISTS pushdesk_test_sleep ON audiences_import")
            cursor.execute("DROP FUNCTION IF EXISTS pushdesk_test_sleep()")


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connections["default"].vendor != "postgresql", reason="a worker process on the test database")
def test_a_restarted_import_whose_worker_died_in_a_batch_lists_only_the_failed_rows_of_its_committed_batches(
    login, manager_alice, failed_import, api_key_for, media, settings
):
    """Its worker wrote the batch's failed rows to the error file before the batch committed, and its
    death rolled the batch back: the page and both downloads listed them beside the committed ones
    until the import resumed, a row of a batch not written said failed."""
    failed_import.lift()
    _restart_run_killed_in_its_first_batch(failed_import, by=manager_alice, media=media)
    record = Import.objects.get(pk=failed_import.pk)
    assert (record.status, record.rows_done, record.rows_failed) == (Import.Status.RUNNING, 2, 1)
    assert record.error_file.size > record.error_bytes  # line 5, of the batch rolled back
    client = login(manager_alice)
    reader = api_key_for(manager_alice, scopes=["read"])

    def api_errors() -> list[tuple[str, str]]:
        answer = reader.get(f"/api/v1/imports/{record.pk}/errors/")
        assert answer.status_code == 200
        text = b"".join(answer.streaming_content).decode("utf-8-sig")
        return [(row[0], row[1]) for row in list(csv.reader(io.StringIO(text)))[1:]]

    page = client.get(f"/admin/audiences/import/{record.pk}/change/").content.decode()
    assert failed_rows_shown(page) == [("3", "—", "external_id is empty")]
    assert downloaded_errors(client, record) == api_errors() == [("3", "")]

    # The watchdog takes it up again: it resumes after its committed batch, the batch killed written anew.
    settings.PUSHDESK_IMPORT_BATCH_ROWS = 2
    Import.objects.filter(pk=record.pk).update(heartbeat_at=timezone.now() - dt.timedelta(hours=1))
    assert imports_watch()["resumed"] == [record.pk]
    record.refresh_from_db()
    assert (record.status, record.rows_done, record.rows_failed, record.rows_duplicate) == (Import.Status.DONE, 6, 2, 1)
    page = client.get(f"/admin/audiences/import/{record.pk}/change/").content.decode()
    assert [row[:2] for row in failed_rows_shown(page)] == [("3", "—"), ("5", "—"), ("6", "u1")]
    assert downloaded_errors(client, record) == api_errors() == [("3", ""), ("5", ""), ("6", "u1")]


@pytest.mark.presses("audiences.import:restart_imports")
def test_a_restarted_import_shows_the_time_left_at_its_own_runs_pace_in_the_admin_and_the_api(
    login, manager_alice, failed_import, api_key_for, django_capture_on_commit_callbacks
):
    """Failed two days ago and restarted, the estimate counted from the first start: about 15 hours."""
    two_days_ago = timezone.now() - dt.timedelta(days=2)
    Import.objects.filter(pk=failed_import.pk).update(started_at=two_days_ago, run_started_at=two_days_ago)
    failed_import.lift()
    client = login(manager_alice)
    press = {"action": "restart_imports", "_selected_action": [failed_import.pk]}
    with django_capture_on_commit_callbacks(execute=False):  # queued: a worker takes it up later
        assert client.post("/admin/audiences/import/", press).status_code == 302
    assert import_process(import_id=failed_import.pk, seconds=0) is True  # a batch, then hands over
    # The next task is running it, 10 s into the run, which wrote the second batch and has one to go.
    set_at = timezone.now()
    Import.objects.filter(pk=failed_import.pk).update(
        status=Import.Status.RUNNING,
        heartbeat_at=set_at,
        run_started_at=set_at - dt.timedelta(seconds=10),
    )
    record = Import.objects.get(pk=failed_import.pk)
    assert (record.started_at, record.run_bytes_from, record.bytes_done) == (two_days_ago, len(LANDED), len(SECOND))
    pace = (len(CONTENT) - len(SECOND)) / (len(SECOND) - len(LANDED))  # 10 bytes done, 10 to go: one to one
    expected = 10 * pace

    def within(low, high=None):
        """The run's time grows while the test reads: 10 s, plus what has passed since it was set.

        True when the span [low, high] (one value when high is None) meets that range."""
        late = (timezone.now() - set_at).total_seconds() * pace
        return low <= expected + late + 0.1 and (low if high is None else high) >= expected - 0.1

    status = client.get(f"/admin/audiences/import/{record.pk}/status/").json()
    assert within(status["seconds_left"]), status
    shown = re.search(r"about (\d+) s left", status["text"])
    assert shown and within(int(shown[1]), int(shown[1]) + 0.99), status["text"]  # whole seconds, rounded down
    page = client.get(f"/admin/audiences/import/{record.pk}/change/").content.decode()
    shown = re.search(r"about (\d+) s left", page)
    assert shown and within(int(shown[1]), int(shown[1]) + 0.99) and "Current run started at" in page
    detail = api_key_for(manager_alice, scopes=["read"]).get(f"/api/v1/imports/{record.pk}/").json()
    assert within(detail["seconds_left"]), detail


@pytest.mark.presses("audiences.import:restart_imports")
def test_restart_finishes_a_failed_import_with_each_row_once(
    login, manager_alice, failed_import, django_capture_on_commit_callbacks
):
    failed_import.lift()
    client = login(manager_alice)
    press = {"action": "restart_imports", "_selected_action": [failed_import.pk]}
    with django_capture_on_commit_callbacks(execute=True):
        pressed = client.post("/admin/audiences/import/", press)
    assert pressed.status_code == 302
    assert "1 import queued again." in [m.message for m in pressed.wsgi_request._messages]
    record = Import.objects.get(pk=failed_import.pk)
    assert (record.status, record.error) == (Import.Status.DONE, "")
    assert (record.rows_done, record.rows_imported, record.rows_failed, record.rows_duplicate) == (6, 3, 2, 1)
    profiles = dict(Profile.objects.values_list("external_id", "attributes"))
    assert profiles == {"u1": {"n": 5}, "boom": {"n": 3}, "u6": {"n": 6}}
    members = list(SegmentMember.objects.filter(segment=record.segment).values_list("profile__external_id", flat=True))
    assert sorted(members) == ["boom", "u1", "u6"]
    assert downloaded_errors(client, record) == [("3", ""), ("5", ""), ("6", "u1")]
    assert client.get(f"/admin/audiences/import/{record.pk}/status/").json()["percent"] == 100.0
    assert AuditEvent.objects.filter(action="import_restarted", actor=manager_alice).count() == 1


@pytest.mark.presses("audiences.import:restart_imports")
def test_restart_changes_nothing_for_a_viewer_a_manager_without_the_segment_or_one_who_lost_it(
    login, manager_alice, manager_mallory, viewer_carol, admin_erin, failed_import, django_capture_on_commit_callbacks
):
    failed_import.lift()  # a restart would now finish the import
    access_grant(obj=failed_import.segment, to=viewer_carol, by=admin_erin)
    press = {"action": "restart_imports", "_selected_action": [failed_import.pk]}
    before = state(failed_import)

    viewer = login(viewer_carol)
    assert f"Import #{failed_import.pk}" in viewer.get("/admin/audiences/import/").content.decode()  # she sees it
    with django_capture_on_commit_callbacks(execute=True):
        assert viewer.post("/admin/audiences/import/", press).status_code in (200, 302, 403)
    assert state(failed_import) == before

    outsider = login(manager_mallory)
    assert f"Import #{failed_import.pk}" not in outsider.get("/admin/audiences/import/").content.decode()
    with django_capture_on_commit_callbacks(execute=True):
        outsider.post("/admin/audiences/import/", press)
    assert state(failed_import) == before

    # Its creator, whose access to the segment was taken back since, still lists it.
    access_revoke(obj=failed_import.segment, to=manager_alice, by=admin_erin)
    creator = login(manager_alice)
    with django_capture_on_commit_callbacks(execute=True):
        response = creator.post("/admin/audiences/import/", press, follow=True)
    assert state(failed_import) == before
    assert "you may not change its segment" in response.content.decode()


def test_a_replace_import_with_no_good_row_says_on_its_page_that_it_removed_nobody(
    login, manager_alice, media, django_capture_on_commit_callbacks
):
    segment = segment_create(name="VIP", kind=Segment.Kind.STATIC, by=manager_alice)
    segment.members.create(profile=Profile.objects.create(external_id="a"))
    upload = SimpleUploadedFile("people.csv", b"external_id,age\nb,x\n", content_type="text/csv")
    with django_capture_on_commit_callbacks(execute=True):
        record = import_create(
            upload=upload,
            by=manager_alice,
            target="replace_segment",
            segment_id=segment.pk,
            columns={"age": {"type": "number"}},
        )
    page = login(manager_alice).get(f"/admin/audiences/import/{record.pk}/change/").content.decode()
    assert "Members removed" in page
    assert "No row of the file was imported, so no member of the segment was removed" in page
    assert list(segment.members.values_list("profile__external_id", flat=True)) == ["a"]


def test_an_imports_page_and_api_status_say_which_separator_its_file_was_read_with(
    login, manager_alice, media, api_key_for, django_capture_on_commit_callbacks
):
    upload = SimpleUploadedFile("people.csv", b"sep=;\r\nexternal_id;plan\r\nu1;pro\r\n", content_type="text/csv")
    with django_capture_on_commit_callbacks(execute=True):
        record = import_create(upload=upload, by=manager_alice)
    page = login(manager_alice).get(f"/admin/audiences/import/{record.pk}/change/").content.decode()
    assert "Separator" in page and "semicolon (;)" in page
    detail = api_key_for(manager_alice, scopes=["read"]).get(f"/api/v1/imports/{record.pk}/").json()
    assert (detail["status"], detail["separator"], detail["rows_imported"]) == ("done", "semicolon", 1)
    assert Profile.objects.get(external_id="u1").attributes == {"plan": "pro"}


@pytest.mark.parametrize("who", ["manager_alice", "viewer_carol"])
def test_the_imports_list_filters_and_shows_statuses_in_words_not_codes(client, manager_alice, who, request, media):
    upload = SimpleUploadedFile("people.csv", b"external_id\na\n", content_type="text/csv")
    record = import_create(upload=upload, by=manager_alice, target="profiles")
    assert record.status == "queued"
    reader = request.getfixturevalue(who)
    Import.objects.filter(pk=record.pk).update(created_by=reader)  # one the reader sees, viewer or not
    client.force_login(reader)
    page = client.get("/admin/audiences/import/").content.decode()
    choices = dict(re.findall(r'<a href="\?status__exact=([^"&]+)"[^>]*>([^<]+)</a>', page))
    assert choices == {"queued": "Queued", "running": "Running", "done": "Done", "failed": "Failed"}
    assert '<td class="field-status">Queued</td>' in page
    status = client.get(f"/admin/audiences/import/{record.pk}/status/").json()
    assert (status["status"], status["status_display"]) == ("queued", "Queued")


def test_an_import_names_its_segment_only_to_a_reader_who_may_see_it(
    login, manager_alice, admin_erin, media, django_capture_on_commit_callbacks
):
    """manager_alice reads her own imports, and among them one into a segment she no longer sees
    (its grant revoked): its list and its page say "segment #12", not its name."""
    segment = segment_create(name="Secret VIPs", kind=Segment.Kind.STATIC, by=manager_alice)
    upload = SimpleUploadedFile("people.csv", b"external_id\nu1\n", content_type="text/csv")
    with django_capture_on_commit_callbacks(execute=True):
        record = import_create(upload=upload, by=manager_alice, target="add_to_segment", segment_id=segment.pk)
    client = login(manager_alice)
    pages = ("/admin/audiences/import/", f"/admin/audiences/import/{record.pk}/change/")
    for url in pages:
        assert "Secret VIPs" in client.get(url).content.decode(), url
    access_revoke(obj=segment, to=manager_alice, by=admin_erin)
    for url in pages:
        page = client.get(url).content.decode()
        assert "Secret VIPs" not in page and f"segment #{segment.pk}" in page, url


@pytest.mark.parametrize("lookup", ["segment_name__icontains", "segment_name__startswith"])
def test_an_imports_list_asked_by_the_new_segments_name_does_not_spell_out_one_its_reader_may_not_see(
    login, manager_alice, admin_erin, media, django_capture_on_commit_callbacks, lookup
):
    """The list takes a lookup on any of its fields in its address, as Django's lists do: asked
    whether the name typed for an import's new segment starts with a letter, then the next, it spelt
    out the name of a segment it says by number. That lookup is refused to whoever does not see
    every object; an Administrator still asks it."""
    upload = SimpleUploadedFile("people.csv", b"external_id\nu1\n", content_type="text/csv")
    with django_capture_on_commit_callbacks(execute=True):
        record = import_create(upload=upload, by=manager_alice, target="new_segment", segment_name="Secret VIPs")
    record.refresh_from_db()
    access_revoke(obj=record.segment, to=manager_alice, by=admin_erin)
    client = login(manager_alice)
    assert f"segment #{record.segment_id}" in client.get("/admin/audiences/import/").content.decode()
    answer = client.get("/admin/audiences/import/", {lookup: "Secret V"})
    assert answer.status_code == 400
    assert f"segment #{record.segment_id}" not in answer.content.decode()
    answer = login(admin_erin).get("/admin/audiences/import/", {lookup: "Secret V"})
    assert answer.status_code == 200
    assert [row.pk for row in answer.context["cl"].result_list] == [record.pk]


def test_an_imports_list_sorted_by_segment_does_not_place_one_its_reader_may_not_see_by_its_name(
    login, manager_alice, admin_erin, media, django_capture_on_commit_callbacks
):
    """Sorted by its segment column (?o=), the list placed an import into a segment it names by
    number among the reader's others by the name it withholds: between "Secret a" and "Secret z",
    segments of their own named letter by letter narrowed it down. That column is not sortable to
    whoever does not see every object; an Administrator still sorts by it."""
    records = {}
    for name in ("Secret m", "Secret a", "Secret z"):
        segment = segment_create(name=name, kind=Segment.Kind.STATIC, by=manager_alice)
        upload = SimpleUploadedFile("people.csv", b"external_id\nu1\n", content_type="text/csv")
        with django_capture_on_commit_callbacks(execute=True):
            records[name] = import_create(
                upload=upload, by=manager_alice, target="add_to_segment", segment_id=segment.pk
            )
    access_revoke(obj=records["Secret m"].segment, to=manager_alice, by=admin_erin)

    def order(user, sort: bool) -> list[int]:
        client = login(user)
        return [
            row.pk
            for row in listed_rows(client, "/admin/audiences/import/", sorted_by="segment_shown" if sort else None)
        ]

    unsorted = order(manager_alice, sort=False)
    assert order(manager_alice, sort=True) == unsorted
    assert order(admin_erin, sort=True) == [records[name].pk for name in ("Secret a", "Secret m", "Secret z")]


def test_an_imports_page_gives_the_files_size_with_its_unit(
    login, manager_alice, media, django_capture_on_commit_callbacks
):
    """The page said "Size: 116": a bare number, neither bytes nor rows said."""
    upload = SimpleUploadedFile("people.csv", b"external_id,plan\n" + b"u1,pro\n" * 300, content_type="text/csv")
    with django_capture_on_commit_callbacks(execute=True):
        record = import_create(upload=upload, by=manager_alice)
    assert record.size == 2_117
    page = login(manager_alice).get(f"/admin/audiences/import/{record.pk}/change/").content.decode()
    size = re.search(r'<div class="form-row field-size_shown">.*?<div class="readonly">(.*?)</div>', page, re.S)
    assert size is not None and size.group(1) == "2.1\xa0KB (2,117 bytes)"


def failed_rows_shown(page: str) -> list[tuple[str, str, str]]:
    """The rows of the page's "Rows that failed" table, their cells as the HTML has them."""
    field = re.search(r'<div class="form-row field-failed_rows">.*?<div class="readonly">(.*?)</div>', page, re.S)
    assert field is not None, "no Rows that failed field"
    return re.findall(r"<tr><td>(.*?)</td><td>(.*?)</td><td>(.*?)</td></tr>", field.group(1))


def failed_rows_field(page: str) -> str:
    field = re.search(r'<div class="form-row field-failed_rows">.*?<div class="readonly">(.*?)</div>', page, re.S)
    assert field is not None, "no Rows that failed field"
    return field.group(1)


def test_an_imports_page_lists_the_rows_that_failed_with_their_line_and_reason(
    login, manager_alice, viewer_carol, admin_erin, run_import
):
    """The page said "Rows failed: 2" and offered the file: which rows, and why, took a download."""
    segment = segment_create(name="VIP", kind=Segment.Kind.STATIC, by=manager_alice)
    record = run_import(
        b"external_id,age\nu1,30\nu2,old\nu3,41\n,52\nu5,7\n",
        columns={"age": {"type": "number"}},
        target="add_to_segment",
        segment_id=segment.pk,
    )
    assert (record.status, record.rows_imported, record.rows_failed) == (Import.Status.DONE, 3, 2)
    access_grant(obj=segment, to=viewer_carol, by=admin_erin)
    for reader in (manager_alice, viewer_carol):  # whoever reads the import's page
        page = login(reader).get(f"/admin/audiences/import/{record.pk}/change/").content.decode()
        assert "Rows that failed" in page
        assert failed_rows_shown(page) == [
            ("3", "u2", "column &#x27;age&#x27;: &#x27;old&#x27; is not a number"),
            ("5", "—", "external_id is empty"),
        ]
        assert "more" not in failed_rows_field(page)


def test_an_imports_page_lists_the_first_20_rows_that_failed_and_links_to_the_rest(login, manager_alice, run_import):
    record = run_import(b"external_id,n\nu0,0\n" + b"".join(b",%d\n" % n for n in range(25)))
    assert record.rows_failed == 25
    page = login(manager_alice).get(f"/admin/audiences/import/{record.pk}/change/").content.decode()
    assert failed_rows_shown(page) == [(str(line), "—", "external_id is empty") for line in range(3, 23)]
    errors = f"/admin/audiences/import/{record.pk}/errors/"
    assert f'and 5 more: <a href="{errors}">download the whole file</a>' in failed_rows_field(page)


def test_an_imports_page_counts_the_repeated_ids_of_its_error_file_among_the_rows_not_shown(
    login, manager_alice, run_import
):
    """The error file lists the rows that repeat an id beside those that failed, and so does the page."""
    repeated = b"".join(b"u1,%d\n" % n for n in range(21))
    record = run_import(b"external_id,n\nu1,0\n" + repeated + b",x\n")
    assert (record.rows_failed, record.rows_duplicate) == (1, 21)
    page = login(manager_alice).get(f"/admin/audiences/import/{record.pk}/change/").content.decode()
    shown = failed_rows_shown(page)
    assert len(shown) == 20 and shown[0][:2] == ("3", "u1") and "external_id repeated" in shown[0][2]
    assert "and 2 more: <a href=" in failed_rows_field(page)


def test_an_imports_page_escapes_the_ids_and_reasons_of_the_rows_that_failed(login, manager_alice, run_import):
    record = run_import(
        b'external_id,age\n<script>alert(1)</script>,<b>x</b>\n"=1+1",old\n',
        columns={"age": {"type": "number"}},
    )
    assert record.rows_failed == 2
    page = login(manager_alice).get(f"/admin/audiences/import/{record.pk}/change/").content.decode()
    assert "<script>alert(1)" not in page and "<b>x</b>" not in page
    assert failed_rows_shown(page) == [
        (
            "2",
            "&lt;script&gt;alert(1)&lt;/script&gt;",
            "column &#x27;age&#x27;: &#x27;&lt;b&gt;x&lt;/b&gt;&#x27; is not a number",
        ),
        ("3", "=1+1", "column &#x27;age&#x27;: &#x27;old&#x27; is not a number"),  # as the file had it
    ]


def test_an_import_with_no_row_failed_shows_a_dash_for_the_rows_that_failed(login, manager_alice, run_import):
    record = run_import(b"external_id,n\nu1,1\nu2,2\n")
    assert (record.rows_failed, record.error_file.name) == (0, "")
    page = login(manager_alice).get(f"/admin/audiences/import/{record.pk}/change/").content.decode()
    assert failed_rows_field(page) == "—"


def test_an_imports_page_says_its_error_file_is_missing_from_storage_in_place_of_its_rows(
    login, manager_alice, run_import
):
    """Written by a worker whose storage the web server does not share: the page reads, the rows are said missing."""
    import os

    record = run_import(b"external_id,n\nu1,1\n,2\n")
    os.remove(record.error_file.path)
    response = login(manager_alice).get(f"/admin/audiences/import/{record.pk}/change/")
    assert response.status_code == 200
    assert "The error file is missing from this server&#x27;s storage" in failed_rows_field(response.content.decode())


@pytest.mark.parametrize("who", ["viewer_carol", "manager_mallory"])
def test_the_rows_that_failed_are_not_shown_to_a_reader_without_access_to_the_imports_segment(
    login, manager_alice, run_import, who, request
):
    segment = segment_create(name="VIP", kind=Segment.Kind.STATIC, by=manager_alice)
    record = run_import(b"external_id,n\nu1,1\nsecret-id,\x00\n", target="add_to_segment", segment_id=segment.pk)
    assert record.rows_failed == 1
    client = login(request.getfixturevalue(who))
    response = client.get(f"/admin/audiences/import/{record.pk}/change/")
    assert response.status_code == 404 and "secret-id" not in response.content.decode()


def test_a_small_files_size_and_counts_of_one_are_said_once_and_in_the_singular(
    login, manager_alice, media, django_capture_on_commit_callbacks
):
    """The page said "241 bytes (241 bytes)" and "1 rows read · 0 failed · 1 duplicates"."""
    upload = SimpleUploadedFile("people.csv", b"external_id,plan\nu1,pro\nu1,team\n", content_type="text/csv")
    with django_capture_on_commit_callbacks(execute=True):
        record = import_create(upload=upload, by=manager_alice)
    record.refresh_from_db()
    assert (record.size, record.rows_done, record.rows_duplicate) == (32, 2, 1)
    page = login(manager_alice).get(f"/admin/audiences/import/{record.pk}/change/").content.decode()
    size = re.search(r'<div class="form-row field-size_shown">.*?<div class="readonly">(.*?)</div>', page, re.S)
    assert size is not None and size.group(1) == "32\xa0bytes"
    progress = re.search(r'<span class="import-progress-text">(.*?)</span>', page, re.S)
    assert progress is not None and "2 rows read · 0 failed · 1 duplicate" in progress.group(1)
    assert "duplicates" not in progress.group(1)


def test_an_imports_page_says_its_columns_as_they_were_typed(
    login, manager_alice, media, django_capture_on_commit_callbacks
):
    """The page showed the stored JSON ({"age": {"type": "number"}}), under a help text in code."""
    upload = SimpleUploadedFile("people.csv", b"Customer ID,age,notes\nu1,31,hi\n", content_type="text/csv")
    columns = {"Customer ID": {"to": "external_id"}, "age": {"type": "number"}, "notes": {"type": "skip"}}
    with django_capture_on_commit_callbacks(execute=True):
        record = import_create(upload=upload, by=manager_alice, columns=columns)
    page = login(manager_alice).get(f"/admin/audiences/import/{record.pk}/change/").content.decode()
    field = re.search(r'<div class="form-row field-columns_shown">.*?<div class="readonly">(.*?)</div>', page, re.S)
    assert field is not None
    # The database keeps a mapping's keys in an order of its own (PostgreSQL's JSONB: shortest first).
    assert sorted(field.group(1).split("<br>")) == ["Customer ID -&gt; external_id", "age = number", "notes = skip"]
    assert "Per CSV column" not in page


def test_an_imports_page_names_the_repeated_rows_it_lists_beside_those_that_failed(login, manager_alice, run_import):
    """A row repeating an earlier row's id was listed under "Rows that failed", and downloaded as one,
    though it was applied (over the earlier one) and the page counted it apart, as a duplicate."""
    record = run_import(b"external_id,age\nu1,30\nu1,31\n,5\n")
    assert (record.rows_imported, record.rows_failed, record.rows_duplicate) == (1, 1, 1)
    page = login(manager_alice).get(f"/admin/audiences/import/{record.pk}/change/").content.decode()
    assert "<label>Rows that failed or repeated an id:</label>" in page
    assert "Download the rows that failed or repeated an id (CSV)</a>" in page
    assert [line for line, _, _ in failed_rows_shown(page)] == ["3", "4"]
    failed = run_import(b"external_id,age\n,5\n")
    page = login(manager_alice).get(f"/admin/audiences/import/{failed.pk}/change/").content.decode()
    assert "Download the rows that failed (CSV)</a>" in page
