"""CSV imports end to end (upload, worker, error file), every bad input, on PostgreSQL and SQLite."""

import csv
import io
import threading

import pytest
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection, transaction
from django.utils import timezone

from accounts.json_values import json_compact
from audiences.imports import SEGMENT_GONE, Batch, ErrorFile, ImportRefused, spreadsheet_safe, write_batch
from audiences.models import Import, Profile, Segment, SegmentMember
from audiences.services.imports import DUPLICATE, import_create, import_process, import_restart
from audiences.services.profiles import profiles_delete
from audiences.services.segments import segment_create, segment_delete
from tests.factories import ProfileFactory
from tests.locks import ProfileHeld, concurrently, wait_for_a_blocked_writer, wait_for_blocked_writers

pytestmark = [pytest.mark.django_db(transaction=False), pytest.mark.embedded]


def error_rows(record: Import) -> list[list[str]]:
    with record.error_file.open("rb") as fh:
        text = fh.read().decode("utf-8-sig")
    return list(csv.reader(io.StringIO(text)))[1:]


def attrs(external_id: str) -> dict:
    return Profile.objects.get(external_id=external_id).attributes


def test_good_rows_land_with_inferred_types(run_import):
    record = run_import(b"external_id,plan,age,vip,score,zip,signup\nu1,pro,34,true,7.5,01234,2026-06-01\n")
    assert record.status == Import.Status.DONE
    assert (record.rows_done, record.rows_imported, record.rows_failed) == (1, 1, 0)
    assert attrs("u1") == {"plan": "pro", "age": 34, "vip": True, "score": 7.5, "zip": "01234", "signup": "2026-06-01"}
    assert not record.error_file


def test_declared_types_are_checked_row_by_row(run_import):
    content = b"external_id,age,vip,signup,code\nu1,34,yes,2026-06-01,007\nu2,abc,no,2026-06-01,1\nu3,5,maybe,x,2\n"
    columns = {
        "age": {"type": "number"},
        "vip": {"type": "boolean"},
        "signup": {"type": "date"},
        "code": {"type": "string"},
    }
    record = run_import(content, columns=columns)
    assert (record.rows_imported, record.rows_failed) == (1, 2)
    assert attrs("u1") == {"age": 34, "vip": True, "signup": "2026-06-01", "code": "007"}
    rows = error_rows(record)
    assert rows[0] == ["3", "u2", "column 'age': 'abc' is not a number"]
    assert rows[1][0] == "4" and "vip" in rows[1][2]
    assert not Profile.objects.filter(external_id__in=["u2", "u3"]).exists()


def test_a_repeated_cell_is_typed_the_same_each_time_and_a_bad_one_fails_each_time(run_import):
    lines = [b"external_id,age,code,vip"]
    lines += [b"u%d,007,007,%s" % (n, b"maybe" if n % 3 == 0 else b"yes") for n in range(1, 10)]
    columns = {"age": {"type": "number"}, "code": {"type": "string"}, "vip": {"type": "boolean"}}
    record = run_import(b"\n".join(lines) + b"\n", columns=columns)
    assert (record.rows_imported, record.rows_failed) == (6, 3)
    assert {p.attributes["age"] for p in Profile.objects.all()} == {7}
    assert {p.attributes["code"] for p in Profile.objects.all()} == {"007"}
    assert [row[1] for row in error_rows(record)] == ["u3", "u6", "u9"]


def test_columns_can_be_renamed_skipped_and_mapped_to_external_id(run_import):
    content = b"Customer ID,E-mail,Internal note,First Name,locale\nc1,a@x.test,secret,Ann,fr-FR\n"
    columns = {"Customer ID": {"to": "external_id"}, "Internal note": {"type": "skip"}, "E-mail": {"to": "email"}}
    record = run_import(content, columns=columns)
    assert record.rows_imported == 1
    profile = Profile.objects.get(external_id="c1")
    assert profile.attributes == {"email": "a@x.test", "First_Name": "Ann"}
    assert profile.locale == "fr-FR"


def test_utf8_with_and_without_bom_and_declared_latin1(run_import):
    run_import("\ufeffexternal_id,city\nu1,Zürich\n".encode())
    run_import("external_id,city\nu2,Zürich\n".encode())
    run_import("external_id,city\nu3,São Paulo\n".encode("latin-1"), encoding="latin-1")
    assert attrs("u1") == {"city": "Zürich"}
    assert attrs("u2") == {"city": "Zürich"}
    assert attrs("u3") == {"city": "São Paulo"}


def test_latin1_bytes_declared_as_utf8_are_refused_with_a_hint(run_import):
    with pytest.raises(ImportRefused, match="Latin-1"):
        run_import("external_id,city\nu3,São Paulo\n".encode("latin-1"))
    assert not Import.objects.exists()


def test_quoted_fields_crlf_and_blank_lines(run_import):
    content = b'external_id,address,note\r\n\r\nu1,"1 rue X, Paris","two\r\nlines"\r\n\r\n\r\nu2,"say ""hi""",x\r\n'
    record = run_import(content)
    assert (record.rows_done, record.rows_imported, record.rows_failed) == (2, 2, 0)
    assert attrs("u1") == {"address": "1 rue X, Paris", "note": "two\r\nlines"}
    assert attrs("u2") == {"address": 'say "hi"', "note": "x"}


def test_repeated_ids_in_one_file_apply_in_file_order_and_the_later_rows_are_reported(run_import, settings):
    settings.PUSHDESK_IMPORT_BATCH_ROWS = 2  # the duplicates fall into different batches too
    content = b"external_id,plan\nu1,free\nu2,free\nu1,team\nu3,x\nu1,pro\n"
    record = run_import(content)
    assert (record.rows_done, record.rows_imported, record.rows_duplicate, record.rows_failed) == (5, 3, 2, 0)
    assert attrs("u1") == {"plan": "pro"}
    assert [(r[0], r[1]) for r in error_rows(record)] == [("4", "u1"), ("6", "u1")]
    assert "applies over it, in file order" in error_rows(record)[0][2]


@pytest.mark.parametrize("batch_rows", [2, 3, 20_000])
def test_a_repeated_id_merges_its_rows_in_file_order_whatever_the_batch_size(run_import, settings, batch_rows):
    """Within a batch only the last row counted ({plan: pro}); across two, the rows merged ({age: 30, plan: pro})."""
    settings.PUSHDESK_IMPORT_BATCH_ROWS = batch_rows
    content = b"external_id,plan,age,locale\nx0,a,1,\nu1,free,30,fr\nu1,pro,,\nu1,,31,\n"
    record = run_import(content)
    assert (record.rows_imported, record.rows_duplicate) == (2, 2)
    profile = Profile.objects.get(external_id="u1")
    assert (profile.attributes, profile.locale) == ({"plan": "pro", "age": 31}, "fr")
    assert [(r[0], r[1]) for r in error_rows(record)] == [("4", "u1"), ("5", "u1")]


def test_missing_external_id_column_is_refused_before_any_row_lands(run_import):
    with pytest.raises(ImportRefused, match="no external_id column"):
        run_import(b"id,plan\nu1,pro\n", target="new_segment", segment_name="x")
    assert not Profile.objects.exists() and not Import.objects.exists() and not Segment.objects.exists()


@pytest.mark.parametrize(
    ("content", "separator", "bad_line"),
    [
        (b'external_id;plan;score\r\nu1;pro;3\r\n\r\nu2;"a;b";4\r\nu3;free\r\n', "semicolon", 5),
        (b"external_id\tplan\tscore\nu1\tpro\t3\nu2\ta;b\t4\nu3\tfree\n", "tab", 4),
        (b'sep=;\r\nexternal_id;plan;score\r\nu1;pro;3\r\nu2;"a;b";4\r\nu3;free\r\n', "semicolon", 5),
        (b'\xef\xbb\xbfSEP=;\nexternal_id;plan;score\nu1;pro;3\nu2;"a;b";4\nu3;free\n', "semicolon", 5),
        (b"sep=,\r\nexternal_id,plan,score\r\nu1,pro,3\r\nu2,a;b,4\r\nu3,free\r\n", "comma", 5),
        (b"sep=\t\nexternal_id\tplan\tscore\nu1\tpro\t3\nu2\ta;b\t4\nu3\tfree\n", "tab", 5),
        (b"external_id,tier;level;rank,score\nu1,pro,3\nu2,a;b,4\nu3,free\n", "comma", 4),
    ],
    ids=[
        "semicolons",
        "tabs",
        "sep-semicolon",
        "bom-sep-semicolon",
        "sep-comma",
        "sep-tab",
        "comma-header-with-semicolon",
    ],
)
def test_a_spreadsheets_semicolon_and_tab_separated_csv_is_read(run_import, content, separator, bad_line):
    """Excel saves CSV with semicolons where the decimal separator is a comma (or tabs, as 'Text'),
    and may write a 'sep=' line first: such a file was refused. The separator is found in the header
    line (a 'sep=' line names it, and is skipped), shown on the import, and the failed row's line is
    the file's own."""
    record = run_import(content, columns={"tier;level;rank": {"to": "plan"}} if b"tier;" in content else None)
    assert (record.status, record.separator, record.rows_imported, record.rows_failed) == ("done", separator, 2, 1)
    assert attrs("u1") == {"plan": "pro", "score": 3}
    assert attrs("u2") == {"plan": "a;b", "score": 4}
    assert [row[:2] for row in error_rows(record)] == [[str(bad_line), "u3"]]


def test_a_sep_line_naming_a_separator_imports_do_not_read_is_refused(run_import):
    with pytest.raises(ImportRefused, match=r"'sep=\|' line.*commas, semicolons or tabs"):
        run_import(b"sep=|\nexternal_id|plan\nu1|pro\n")
    assert not Profile.objects.exists() and not Import.objects.exists()


def test_a_semicolon_file_resumes_after_its_last_batch_at_the_right_lines(run_import, settings):
    """Batches of two: each batch's rows keep their lines, the 'sep=' line counted."""
    settings.PUSHDESK_IMPORT_BATCH_ROWS = 2
    record = run_import(b"sep=;\nexternal_id;n\na;1\nb;2\n;3\nc;4\nd\n", columns={"n": {"type": "number"}})
    assert (record.rows_imported, record.rows_failed, record.separator) == (3, 2, "semicolon")
    assert [row[0] for row in error_rows(record)] == ["5", "7"]
    assert attrs("c") == {"n": 4}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "PNG image"),
        (b"PK\x03\x04\x14\x00\x06\x00", "zip archive"),
        (b"external_id\x00\x01\x02,plan\n", "binary data"),
        (b"", "empty"),
        (b"\n\n  \n", "empty"),
    ],
)
def test_a_file_that_is_not_csv_is_refused(run_import, content, message):
    with pytest.raises(ImportRefused, match=message):
        run_import(content)
    assert not Import.objects.exists()


def test_size_limit_is_a_setting(run_import, settings):
    settings.PUSHDESK_IMPORT_MAX_BYTES = 10
    with pytest.raises(ImportRefused, match="limit is 10 bytes"):
        run_import(b"external_id\nu1\nu2\n")
    assert not Import.objects.exists()


def test_rows_with_wrong_field_counts_empty_ids_and_bad_zones_fail_alone(run_import):
    content = b"external_id,plan,timezone\nu1,pro,Europe/Paris\nu2,pro\n,pro,UTC\nu4,pro,Mars/Base\nu5,ok,\n"
    record = run_import(content)
    assert (record.rows_imported, record.rows_failed) == (2, 3)
    reasons = {r[0]: r[2] for r in error_rows(record)}
    assert reasons["3"] == "has 2 fields where the header has 3"
    assert reasons["4"] == "external_id is empty"
    assert "not a time zone" in reasons["5"]
    assert Profile.objects.get(external_id="u1").timezone == "Europe/Paris"


@pytest.mark.parametrize("batch_rows", [1, 20_000])
def test_a_row_whose_external_id_has_spaces_around_it_fails_with_its_line(run_import, settings, batch_rows):
    """A cell " u1" landed on the profile "u1" while the API kept " u1" apart: an id with white
    space around it fails its row, as the API refuses it, and the profile "u1" is left alone."""
    settings.PUSHDESK_IMPORT_BATCH_ROWS = batch_rows
    ProfileFactory(external_id="u1", attributes={"plan": "pro"})
    content = b'external_id,plan\n u1,free\nu2 ,free\n"u3\t",free\nu4,free\n'
    record = run_import(content)
    assert (record.rows_imported, record.rows_failed) == (1, 3)
    reasons = {r[0]: r[2] for r in error_rows(record)}
    assert set(reasons) == {"2", "3", "4"}
    assert all("white space" in reason for reason in reasons.values()), reasons
    assert sorted(Profile.objects.values_list("external_id", flat=True)) == ["u1", "u4"]
    assert attrs("u1") == {"plan": "pro"}


def test_text_cells_land_without_the_spaces_around_them(run_import):
    """A cell "pro " (a spreadsheet's padding, a space after the comma) landed as "pro ", which the
    rule 'plan is pro' does not match: text is kept as the other types are, without the white
    space around it, declared or inferred."""
    content = b'external_id,plan,code,note\nu1,pro ,  007 ,"two  words "\nu2, pro,007,x\n'
    record = run_import(content, columns={"code": {"type": "string"}})
    assert (record.rows_imported, record.rows_failed) == (2, 0)
    assert attrs("u1") == {"plan": "pro", "code": "007", "note": "two  words"}
    assert attrs("u2") == {"plan": "pro", "code": "007", "note": "x"}


def test_error_file_is_safe_from_formula_injection(run_import):
    record = run_import(
        b'external_id,age\n"=HYPERLINK(""http://x.test"",""click"")",x\n@SUM(A1),y\n',
        columns={"age": {"type": "number"}},
    )
    rows = error_rows(record)
    assert rows[0][1].startswith("'=HYPERLINK")
    assert rows[1][1] == "'@SUM(A1)"
    assert spreadsheet_safe("-2+3") == "'-2+3" and spreadsheet_safe("plain") == "plain"


def test_the_first_rows_of_an_error_file_are_read_without_reading_the_rest(tmp_path):
    """An import's page lists the first rows of its error file, which may hold a million."""
    errors = ErrorFile(tmp_path / "errors.csv", resume_at=0)
    errors.add(2, "+33 6 12", "column 'age': 'a \"quoted\",\nline' is not a number")
    for line in range(3, 100_003):
        errors.add(line, "", "external_id is empty")
    errors.close()
    with open(tmp_path / "errors.csv", "rb") as fh:
        rows = ErrorFile.first_rows(fh, 3)
        assert fh.tell() < 64 * 1024 and not fh.closed
    assert rows == [
        ("2", "+33 6 12", "column 'age': 'a \"quoted\",\nline' is not a number"),  # as the row had it
        ("3", "", "external_id is empty"),
        ("4", "", "external_id is empty"),
    ]


def test_running_the_same_file_twice_changes_nothing_more(run_import, manager_alice):
    static = segment_create(name="VIP", kind=Segment.Kind.STATIC, by=manager_alice)
    content = b"external_id,plan\nu1,pro\nu2,free\n"
    run_import(content, target="add_to_segment", segment_id=static.pk)
    before = {p.external_id: (p.attributes, p.updated_at) for p in Profile.objects.all()}
    second = run_import(content, target="add_to_segment", segment_id=static.pk)
    assert second.status == Import.Status.DONE
    assert {p.external_id: (p.attributes, p.updated_at) for p in Profile.objects.all()} == before
    assert SegmentMember.objects.filter(segment=static).count() == 2


def test_import_merges_into_existing_profiles(run_import):
    ProfileFactory(external_id="u1", attributes={"plan": "free", "age": 3}, locale="de")
    run_import(b"external_id,plan,locale\nu1,pro,\n")
    profile = Profile.objects.get(external_id="u1")
    assert profile.attributes == {"plan": "pro", "age": 3}
    assert profile.locale == "de"  # an empty cell leaves a field as it is


def test_import_into_a_new_segment(run_import):
    record = run_import(b"external_id\nu1\nu2\n", target="new_segment", segment_name="From the fair")
    assert record.segment.kind == Segment.Kind.IMPORTED
    assert record.segment.name == "From the fair"
    assert set(record.segment.members.values_list("profile__external_id", flat=True)) == {"u1", "u2"}


def test_a_segment_gets_new_changed_and_unchanged_profiles_alike(run_import):
    """Members come from the profiles the batch writes and from those it leaves as they are."""
    ProfileFactory(external_id="same", attributes={"plan": "pro"}, locale="fr")
    changed = ProfileFactory(external_id="changed", attributes={"plan": "free"})
    ProfileFactory(external_id="elsewhere")
    before = Profile.objects.get(external_id="same").updated_at
    content = b"external_id,plan,locale\nsame,pro,\nchanged,pro,de\nnew,team,\n"
    record = run_import(content, target="new_segment", segment_name="Mixed")
    members = record.segment.members.select_related("profile")
    assert {m.profile.external_id: m.source_import_id for m in members} == {
        "same": record.pk,
        "changed": record.pk,
        "new": record.pk,
    }
    assert Profile.objects.get(external_id="same").updated_at == before
    changed.refresh_from_db()
    assert (changed.attributes, changed.locale) == ({"plan": "pro"}, "de")


def test_a_batch_whose_segment_was_deleted_writes_nothing(manager_alice):
    """Members have no database constraint on their segment: the batch checks it under a lock."""
    static = segment_create(name="VIP", kind=Segment.Kind.STATIC, by=manager_alice)
    segment_delete(segment_id=static.pk, by=manager_alice)
    batch = Batch(["u1"], ['{"plan": "pro"}'], [None], [None])
    with pytest.raises(ImportRefused, match=SEGMENT_GONE):
        write_batch(batch, now=timezone.now(), segment_id=static.pk, import_id=1, replace=False)
    assert not SegmentMember.objects.exists()
    assert not Profile.objects.filter(external_id="u1").exists()


row_locks = pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks between two sessions")


@row_locks
@pytest.mark.django_db(transaction=True)
def test_a_profile_deletion_waits_for_a_batch_listing_it_and_removes_its_new_member(manager_alice):
    """Members have no database constraint on their profile: a batch locks the profiles it lists
    as they are until it commits, and a deletion locks them first, so it sees the new member."""
    same = ProfileFactory(external_id="same", attributes={"plan": "pro"})
    segment = segment_create(name="Fair", kind=Segment.Kind.IMPORTED, by=manager_alice)
    written, blocked = threading.Event(), []

    def batch():
        with transaction.atomic():
            unchanged = Batch(["same"], ['{"plan": "pro"}'], [None], [None])
            write_batch(unchanged, now=timezone.now(), segment_id=segment.pk, import_id=1, replace=False)
            written.set()
            blocked.append(wait_for_a_blocked_writer())

    def deletion():
        written.wait(10)
        profiles_delete(profile_ids=[same.pk], by=manager_alice)

    assert not concurrently(batch, deletion)
    assert blocked == [True]
    assert not Profile.objects.exists()
    assert not SegmentMember.objects.exists()


@row_locks
@pytest.mark.django_db(transaction=True)
def test_a_batch_waits_for_a_profile_deletion_and_adds_no_member_for_the_deleted_profile(manager_alice):
    """The batch read both profiles before the deletion committed: the one it leaves as it is is
    gone and gets no member; the one it writes is created again and joins the segment."""
    same = ProfileFactory(external_id="same", attributes={"plan": "pro"})
    changed = ProfileFactory(external_id="changed", attributes={"plan": "free"})
    segment = segment_create(name="Fair", kind=Segment.Kind.IMPORTED, by=manager_alice)
    deleting, blocked = threading.Event(), []

    def deletion():
        with transaction.atomic():
            profiles_delete(profile_ids=[same.pk, changed.pk], by=manager_alice)
            deleting.set()
            blocked.append(wait_for_a_blocked_writer())

    def batch():
        deleting.wait(10)
        both = Batch(["same", "changed"], ['{"plan": "pro"}', '{"plan": "team"}'], [None, None], [None, None])
        with transaction.atomic():
            write_batch(both, now=timezone.now(), segment_id=segment.pk, import_id=1, replace=False)

    assert not concurrently(deletion, batch)
    assert blocked == [True]
    again = Profile.objects.get()
    assert (again.external_id, again.attributes) == ("changed", {"plan": "team"})
    assert list(SegmentMember.objects.values_list("segment_id", "profile_id")) == [(segment.pk, again.pk)]


@row_locks
@pytest.mark.django_db(transaction=True)
def test_a_batch_into_a_segment_locks_the_profiles_it_leaves_as_they_are_in_id_order_too(manager_alice):
    """'same' (left as it is) was created before 'changed' (written). A batch into a segment locked
    the profiles it writes, then those it leaves as they are: holding 'changed', it waited for
    'same', which a deletion held while it waited for 'changed' ('deadlock detected'). The batch
    now locks all its known profiles by id first: the deletion waits for it, then removes the
    profiles and their new members."""
    same = ProfileFactory(external_id="same", attributes={"plan": "pro"})
    changed = ProfileFactory(external_id="changed", attributes={"plan": "free"})
    segment = segment_create(name="Fair", kind=Segment.Kind.IMPORTED, by=manager_alice)
    held = ProfileHeld(changed.pk)  # a third writer's lock on it
    holding, released = held.holding, held.released

    def batch():
        holding.wait(10)
        both = Batch(["same", "changed"], ['{"plan": "pro"}', '{"plan": "team"}'], [None, None], [None, None])
        with transaction.atomic():
            write_batch(both, now=timezone.now(), segment_id=segment.pk, import_id=1, replace=False)

    def deletion():
        assert wait_for_blocked_writers(1)  # the batch waits for 'changed'
        profiles_delete(profile_ids=[same.pk, changed.pk], by=manager_alice)

    def release():
        holding.wait(10)
        wait_for_blocked_writers(2)
        released.set()

    assert concurrently(held.holder, batch, deletion, release) == []
    assert not Profile.objects.exists()
    assert not SegmentMember.objects.exists()


@row_locks
@pytest.mark.django_db(transaction=True)
def test_a_row_giving_only_an_id_whose_profile_another_writer_creates_meanwhile_is_a_member(manager_alice):
    """The batch did not see 'new' and inserted it; another writer had created it meanwhile, so the
    upsert found it and, the row giving nothing, left it as it was: its id was not returned, and the
    row got no member. Such a row is now written again under its lock and joins the segment."""
    segment = segment_create(name="Fair", kind=Segment.Kind.IMPORTED, by=manager_alice)
    created = threading.Event()

    def writer():
        with transaction.atomic():
            ProfileFactory(external_id="new", attributes={"plan": "pro"})
            created.set()
            assert wait_for_a_blocked_writer()  # the batch, inserting 'new'

    def batch():
        created.wait(10)
        rows = Batch(["new", "other"], ["{}", '{"plan": "free"}'], [None, None], [None, None])
        with transaction.atomic():
            write_batch(rows, now=timezone.now(), segment_id=segment.pk, import_id=1, replace=False)

    assert concurrently(writer, batch) == []
    assert {p.external_id: p.attributes for p in Profile.objects.all()} == {
        "new": {"plan": "pro"},
        "other": {"plan": "free"},
    }
    members = SegmentMember.objects.filter(segment=segment)
    assert sorted(members.values_list("profile__external_id", flat=True)) == ["new", "other"]


@row_locks
@pytest.mark.django_db(transaction=True)
def test_a_batch_repeating_an_id_and_a_profiles_call_on_its_profiles_do_not_deadlock(manager_alice, media, monkeypatch):
    """A batch locked the ids it gives once, then those it repeats: here 'a' and 'c', then 'b'. A
    profiles call locks in id order ('b' before 'c'): holding 'b', it waited for 'c' while the batch
    waited for 'b', and PostgreSQL ended the call ('deadlock detected'). Every profile of the batch
    is now locked in the order the other writers lock them in, repeated ids included."""
    from audiences import imports
    from audiences.services.profiles import profiles_upsert

    for external_id in ("a", "b", "c"):
        ProfileFactory(external_id=external_id, attributes={})
    measure, blocked, answers = imports.measured_rows, [], []
    items = [{"external_id": "b", "attributes": {"score": 1}}, {"external_id": "c", "attributes": {"score": 1}}]
    call = threading.Thread(
        target=lambda: answers.extend(concurrently(lambda: profiles_upsert(items=items, by=manager_alice)))
    )

    def measured_while_a_profiles_call_runs(rows):
        call.start()  # the batch's first statement is written: the call comes in now
        blocked.append(wait_for_a_blocked_writer())
        return measure(rows)

    monkeypatch.setattr(imports, "measured_rows", measured_while_a_profiles_call_runs)
    upload = SimpleUploadedFile("people.csv", b"external_id,plan\na,pro\nc,pro\nb,pro\nb,team\n")
    record = import_create(upload=upload, by=manager_alice)  # run on commit, as on a worker
    call.join(30)

    assert answers == [] and blocked == [True]
    record.refresh_from_db()
    assert (record.status, record.rows_imported, record.rows_duplicate) == (Import.Status.DONE, 3, 1)
    assert {p.external_id: p.attributes for p in Profile.objects.all()} == {
        "a": {"plan": "pro"},
        "b": {"plan": "team", "score": 1},
        "c": {"plan": "pro", "score": 1},
    }


@row_locks
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("segment", [False, True], ids=["profiles", "segment"])
def test_a_batch_locks_its_profiles_in_id_order_as_a_profiles_call_does(manager_alice, segment):
    """'b' was created before 'a'. A batch locked them by external id ('a' then 'b'), a profiles call
    by id ('b' then 'a'): both waiting for 'a', held by a third writer, the batch took it and waited
    for 'b', which the call held while it waited for 'a' ('deadlock detected')."""
    from audiences.services.profiles import profiles_upsert

    ProfileFactory(external_id="b", attributes={})
    ProfileFactory(external_id="a", attributes={})
    segment_id = segment_create(name="Fair", kind=Segment.Kind.IMPORTED, by=manager_alice).pk if segment else None
    holding, released = threading.Event(), threading.Event()

    def holder():
        with transaction.atomic():
            Profile.objects.select_for_update().get(external_id="a")
            holding.set()
            released.wait(20)

    def batch():
        holding.wait(10)
        both = Batch(["a", "b"], ['{"plan": "pro"}', '{"plan": "pro"}'], [None, None], [None, None])
        with transaction.atomic():
            write_batch(both, now=timezone.now(), segment_id=segment_id, import_id=1, replace=False)

    def call():
        assert wait_for_blocked_writers(1)  # the batch first
        items = [{"external_id": "a", "attributes": {"score": 1}}, {"external_id": "b", "attributes": {"score": 1}}]
        profiles_upsert(items=items, by=manager_alice)

    def release():
        holding.wait(10)
        wait_for_blocked_writers(2)
        released.set()

    assert concurrently(holder, batch, call, release) == []
    assert {p.external_id: p.attributes for p in Profile.objects.all()} == {
        "a": {"plan": "pro", "score": 1},
        "b": {"plan": "pro", "score": 1},
    }


def _lock_waiters() -> int:
    """How many sessions of the test database wait for a lock now."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0]


@row_locks
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("replace", [False, True], ids=["add", "replace"])
def test_two_imports_into_one_segment_write_its_members_in_turn(manager_alice, monkeypatch, replace):
    """Each batch repeats an id, so it adds its members in two statements: 'a' then 'b' for one,
    'b' then 'a' for the other. Both first statements went through (the profiles change nothing),
    then each waited for the member the other had added ('deadlock detected'). A batch now holds
    its segment so that no other batch writes its members meanwhile: the second waits."""
    from audiences import imports
    from tests.locks import eventually

    a = ProfileFactory(external_id="a", attributes={})
    b = ProfileFactory(external_id="b", attributes={})
    segment = segment_create(name="VIP", kind=Segment.Kind.STATIC, by=manager_alice)
    measure, arrived = imports.measured_rows, []

    def measured_once_the_other_batch_is_in(rows):
        arrived.append(True)
        eventually(lambda: len(arrived) == 2 or _lock_waiters() >= 1)
        return measure(rows)

    monkeypatch.setattr(imports, "measured_rows", measured_once_the_other_batch_is_in)

    def batch(ids, import_id):
        rows = Batch()
        rows.add(ids[0], "{}", None, None, line=2)
        rows.repeats[ids[1]] = [(3, "{}", None, None), (4, "{}", None, None)]
        with transaction.atomic():
            write_batch(rows, now=timezone.now(), segment_id=segment.pk, import_id=import_id, replace=replace)

    assert concurrently(lambda: batch("ab", 1), lambda: batch("ba", 2)) == []
    members = SegmentMember.objects.filter(segment=segment)
    assert sorted(members.values_list("profile_id", flat=True)) == sorted([a.pk, b.pk])


@row_locks
@pytest.mark.django_db(transaction=True)
def test_a_batch_its_database_ends_in_a_deadlock_is_written_again(manager_alice, media, caplog):
    """Another session locks 'b', then 'a': the batch, holding 'a' and waiting for 'b', is the
    deadlock's victim, rolled back whole. It failed the import ('Stopped by an unexpected error');
    it is written again once the other session commits, its failed rows reported once."""
    ProfileFactory(external_id="a", attributes={})
    ProfileFactory(external_id="b", attributes={})
    holding, ended = threading.Event(), []

    def other():
        with transaction.atomic():
            Profile.objects.select_for_update(no_key=True).get(external_id="b")
            holding.set()
            assert wait_for_a_blocked_writer()  # the batch, holding 'a'
            Profile.objects.select_for_update(no_key=True).get(external_id="a")

    session = threading.Thread(target=lambda: ended.extend(concurrently(other)))
    session.start()
    assert holding.wait(10)
    upload = SimpleUploadedFile("people.csv", b"external_id,plan\na,pro\n,free\nb,pro\nb,team\n")
    record = import_create(upload=upload, by=manager_alice)  # run on commit, as on a worker
    session.join(30)

    assert ended == []
    record.refresh_from_db()
    assert (record.status, record.error) == (Import.Status.DONE, "")
    assert "deadlock detected" in caplog.text and "written again" in caplog.text
    assert (record.rows_done, record.rows_imported, record.rows_failed, record.rows_duplicate) == (4, 2, 1, 1)
    assert {p.external_id: p.attributes for p in Profile.objects.all()} == {"a": {"plan": "pro"}, "b": {"plan": "team"}}
    assert [(line, reason) for line, _id, reason in error_rows(record)] == [
        ("3", "external_id is empty"),
        ("5", DUPLICATE),
    ]


@row_locks
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("other", ["admin", "batch"])
def test_a_replace_import_ends_in_turn_with_a_change_of_its_segments_members(manager_alice, media, monkeypatch, other):
    """A replace import removed the members its file did not list without holding its segment: a
    member change in the admin or another import's batch, holding the segment, waited for a member
    row the removal had deleted while the removal waited for the segment to mark it changed
    ('deadlock detected'), and one of them was lost. The removal now holds the segment first, as
    the batches do: the other change waits for it, then adds 'p' again."""
    from audiences.services import imports as import_services
    from audiences.services.segments import segment_members_change

    p = ProfileFactory(external_id="p", attributes={})
    segment = segment_create(name="VIP", kind=Segment.Kind.STATIC, by=manager_alice)
    segment_members_change(segment_id=segment.pk, by=manager_alice, add=["p"])
    landed, removing, blocked = import_services._import_landed, threading.Event(), []

    def landed_once_the_other_change_waits(record):
        landed(record)
        if not removing.is_set():  # the removal of 'p' is done, not committed
            removing.set()
            blocked.append(wait_for_a_blocked_writer())

    monkeypatch.setattr(import_services, "_import_landed", landed_once_the_other_change_waits)

    def replace():
        upload = SimpleUploadedFile("people.csv", b"external_id\nb\n")
        import_create(upload=upload, by=manager_alice, target="replace_segment", segment_id=segment.pk)

    def change():
        removing.wait(10)
        if other == "admin":
            segment_members_change(segment_id=segment.pk, by=manager_alice, add=["p"])
        else:
            with transaction.atomic():
                rows = Batch(["p"], ['{"plan": "pro"}'], [None], [None])
                write_batch(rows, now=timezone.now(), segment_id=segment.pk, import_id=999, replace=False)

    assert concurrently(replace, change) == []
    assert blocked == [True]
    record = Import.objects.get(target="replace_segment")
    assert (record.status, record.error) == (Import.Status.DONE, "")
    members = SegmentMember.objects.filter(segment=segment)
    assert sorted(members.values_list("profile__external_id", flat=True)) == ["b", "p"]
    assert p.pk in members.values_list("profile_id", flat=True)


@row_locks
@pytest.mark.django_db(transaction=True)
def test_a_replace_import_and_an_erasure_remove_their_shared_members_in_id_order(manager_alice, media):
    """A replace import's removal and a deletion of profiles removed the members they share each in
    the order its plan read them: the removal through the list's rows as stored ('y', 'h', 'x'),
    the deletion through the profiles' index ('x', then 'y'). The removal holding 'y' waited for 'h'
    (held by a third writer) while the deletion took 'x' and waited for 'y'; once 'h' was let go
    the removal waited for 'x' ('deadlock detected', one of them ended). Both now lock the members
    by id first: the deletion waits for 'y' holding no member, and removes none of those the
    import removed, recording no erasure for the list."""
    from audiences.models import SegmentErasure
    from audiences.services.segments import segment_members_change

    x, y = ProfileFactory(external_id="x", attributes={}), ProfileFactory(external_id="y", attributes={})
    ProfileFactory(external_id="h", attributes={})
    segment = segment_create(name="VIP", kind=Segment.Kind.STATIC, by=manager_alice)
    for external_id in ["y", "h", "x"]:  # stored, and numbered, in this order
        segment_members_change(segment_id=segment.pk, by=manager_alice, add=[external_id])
    held_member = SegmentMember.objects.get(profile__external_id="h").pk
    holding, released = threading.Event(), threading.Event()

    def plans(cursor, *, scan: str) -> None:
        """Each reads its rows as it would on a large table: the list's many rows as stored, the
        deletion's few members through the profiles' index."""
        cursor.execute("SET enable_bitmapscan = off")
        cursor.execute("SET enable_indexscan = off" if scan == "stored" else "SET enable_seqscan = off")

    def holder():  # a third writer's lock on 'h' (another deletion removing it holds it so)
        with transaction.atomic():
            SegmentMember.objects.select_for_update().get(pk=held_member)
            holding.set()
            released.wait(20)

    def replace():
        holding.wait(10)
        with connection.cursor() as cursor:
            plans(cursor, scan="stored")
        upload = SimpleUploadedFile("people.csv", b"external_id\nb\n")
        import_create(upload=upload, by=manager_alice, target="replace_segment", segment_id=segment.pk)

    def deletion():
        assert wait_for_blocked_writers(1)  # the removal holds 'y' and waits for 'h'
        with connection.cursor() as cursor:
            plans(cursor, scan="index")
        profiles_delete(profile_ids=[x.pk, y.pk], by=manager_alice)

    def release():
        holding.wait(10)
        wait_for_blocked_writers(2)
        released.set()

    assert concurrently(holder, replace, deletion, release) == []
    record = Import.objects.get(target="replace_segment")
    assert (record.status, record.error, record.members_removed) == (Import.Status.DONE, "", 3)
    assert list(SegmentMember.objects.filter(segment=segment).values_list("profile__external_id", flat=True)) == ["b"]
    assert not Profile.objects.filter(pk__in=[x.pk, y.pk]).exists()
    assert not SegmentErasure.objects.exists()


@row_locks
@pytest.mark.django_db(transaction=True)
def test_two_imports_into_one_segment_take_turns_the_second_waiting_queued(
    manager_alice, media, settings, monkeypatch, login, api_key_for
):
    """An add import wrote its first batch (a1, a2), then a replace into the same segment ran whole
    meanwhile: it removed a1 and a2, which its file does not name, and the add then wrote a3 and a4.
    The segment held r1, a3, a4: neither file. The replace now waits, queued and shown so in the
    admin and the API, until the add has finished; then it runs, and the segment is its file."""
    from audiences.services import imports as import_services

    settings.PUSHDESK_IMPORT_BATCH_ROWS = 2
    segment = segment_create(name="VIP", kind=Segment.Kind.STATIC, by=manager_alice)
    write_once, midway, go, first = import_services._Committer._write_once, threading.Event(), threading.Event(), []

    def pause_after_the_adds_first_batch(committer, batch, **progress):
        write_once(committer, batch, **progress)
        if committer.record.target == "add_to_segment" and not first:
            first.append(committer.record.pk)
            midway.set()
            assert go.wait(20)

    monkeypatch.setattr(import_services._Committer, "_write_once", pause_after_the_adds_first_batch)

    def run(content, target):
        upload = SimpleUploadedFile(f"{target}.csv", content)
        return import_create(upload=upload, by=manager_alice, target=target, segment_id=segment.pk)  # a worker's run

    adding = threading.Thread(
        target=lambda: concurrently(lambda: run(b"external_id\na1\na2\na3\na4\n", "add_to_segment"))
    )
    adding.start()
    try:
        assert midway.wait(20)
        assert concurrently(lambda: run(b"external_id\nr1\n", "replace_segment")) == []

        add, replace = Import.objects.get(target="add_to_segment"), Import.objects.get(target="replace_segment")
        members = SegmentMember.objects.filter(segment=segment)
        assert sorted(members.values_list("profile__external_id", flat=True)) == ["a1", "a2"]
        assert (add.status, replace.status, replace.rows_done) == ("running", "queued", 0)
        assert replace.waiting_for_id == add.pk
        status = login(manager_alice).get(f"/admin/audiences/import/{replace.pk}/status/").json()
        assert (status["status"], status["waiting_for"]) == ("queued", add.pk)
        assert f"waiting for import #{add.pk} into the same segment to finish" in status["text"]
        page = login(manager_alice).get(f"/admin/audiences/import/{replace.pk}/change/").content.decode()
        assert f"import #{add.pk} into the same segment: this one runs once it has finished" in page
        detail = api_key_for(manager_alice).get(f"/api/v1/imports/{replace.pk}/").json()
        assert (detail["status"], detail["waiting_for"]) == ("queued", add.pk)
    finally:
        go.set()
        adding.join(30)
    add.refresh_from_db()
    replace.refresh_from_db()
    assert (add.status, add.rows_imported, add.error) == ("done", 4, "")
    assert (replace.status, replace.rows_imported, replace.members_removed, replace.waiting_for_id) == (
        "done",
        1,
        4,
        None,
    )
    assert list(members.values_list("profile__external_id", flat=True)) == ["r1"]


def test_imports_into_one_segment_run_in_the_order_they_were_uploaded(
    manager_alice, media, django_capture_on_commit_callbacks
):
    """The replace's task came first to a worker: it waits for the add uploaded before it, which
    wakes it at its end; the profiles-only import, into no segment, waits for nobody."""
    segment = segment_create(name="VIP", kind=Segment.Kind.STATIC, by=manager_alice)
    with django_capture_on_commit_callbacks(execute=False):  # queued, no worker has taken them yet
        add, replace, profiles = (
            import_create(upload=SimpleUploadedFile("f.csv", content), by=manager_alice, **target)
            for content, target in (
                (b"external_id\na\n", {"target": "add_to_segment", "segment_id": segment.pk}),
                (b"external_id\nb\n", {"target": "replace_segment", "segment_id": segment.pk}),
                (b"external_id\nc\n", {}),
            )
        )
    assert import_process(import_id=replace.pk) is False
    assert import_process(import_id=profiles.pk) is False
    replace.refresh_from_db()
    assert (replace.status, replace.waiting_for_id, replace.rows_done) == ("queued", add.pk, 0)
    assert Import.objects.get(pk=profiles.pk).status == "done"
    with django_capture_on_commit_callbacks(execute=True):
        import_process(import_id=add.pk)
    replace.refresh_from_db()
    assert (replace.status, replace.waiting_for_id, replace.members_removed) == ("done", None, 1)
    assert list(segment.members.values_list("profile__external_id", flat=True)) == ["b"]


def test_replace_keeps_only_the_file_members(run_import, manager_alice):
    static = segment_create(name="VIP", kind=Segment.Kind.STATIC, by=manager_alice)
    run_import(b"external_id\na\nb\n", target="add_to_segment", segment_id=static.pk)
    run_import(b"external_id\nb\nc\n", target="replace_segment", segment_id=static.pk)
    assert set(static.members.values_list("profile__external_id", flat=True)) == {"b", "c"}


def test_a_replace_whose_every_row_fails_removes_no_member_and_says_so(run_import, manager_alice):
    """A marketer's bad file (every age mistyped) emptied the segment: no row listed its members, so
    the replace removed them all. An import with no good row now removes nothing, and its note says why."""
    static = segment_create(name="VIP", kind=Segment.Kind.STATIC, by=manager_alice)
    run_import(b"external_id\na\nb\nc\n", target="add_to_segment", segment_id=static.pk)
    record = run_import(
        b"external_id,age\na,x\nzed,y\n,3\n",
        target="replace_segment",
        segment_id=static.pk,
        columns={"age": {"type": "number"}},
    )
    assert (record.status, record.rows_imported, record.rows_failed) == (Import.Status.DONE, 0, 3)
    assert set(static.members.values_list("profile__external_id", flat=True)) == {"a", "b", "c"}
    assert record.members_removed == 0
    assert "No row of the file was imported, so no member of the segment was removed" in record.note


def test_a_replace_keeps_the_members_its_failed_rows_name(run_import, manager_alice, settings):
    """A row that failed (a mistyped age, a wrong field count, a profile over the limits) still names
    a profile the marketer meant to keep: only members the file does not name at all are removed,
    whichever batch names them. A failed row adds no member."""
    settings.PUSHDESK_IMPORT_BATCH_ROWS = 2
    static = segment_create(name="VIP", kind=Segment.Kind.STATIC, by=manager_alice)
    ProfileFactory(external_id="full", attributes={f"a{i}": 1 for i in range(200)})
    run_import(b"external_id\na\nb\nc\nd\nfull\ngone\n", target="add_to_segment", segment_id=static.pk)
    content = b"external_id,age\na,1\n b ,x\nc,1,extra\nnew,x\nfull,2\n,4\n"
    record = run_import(content, target="replace_segment", segment_id=static.pk, columns={"age": {"type": "number"}})
    assert (record.status, record.rows_imported, record.rows_failed) == (Import.Status.DONE, 1, 5)
    kept = set(static.members.values_list("profile__external_id", flat=True))
    assert kept == {"a", "b", "c", "full"}
    assert record.members_removed == 2
    assert "2 members the file does not name were removed" in record.note


def test_an_import_into_a_segment_forgets_its_kept_count_as_a_change_of_its_members_does(run_import, manager_alice):
    """The kept count was of the members before: the pages read it, with its age, as the segment's size."""
    from audiences.services.segments import segment_count_keep

    static = segment_create(name="VIP", kind=Segment.Kind.STATIC, by=manager_alice)
    run_import(b"external_id\na\nb\n", target="add_to_segment", segment_id=static.pk)
    for content, target in ((b"external_id\nc\n", "add_to_segment"), (b"external_id\nb\n", "replace_segment")):
        segment_count_keep(segment_id=static.pk, by=manager_alice)
        assert Segment.objects.get(pk=static.pk).last_count is not None
        run_import(content, target=target, segment_id=static.pk)
        kept = Segment.objects.get(pk=static.pk)
        assert (kept.last_count, kept.last_counted_at, kept.last_reach) == (None, None, None), target
    # An import that changes nothing of the members leaves the count as it is.
    segment_count_keep(segment_id=static.pk, by=manager_alice)
    run_import(b"external_id\n,\n", target="add_to_segment", segment_id=static.pk)
    assert Segment.objects.get(pk=static.pk).last_count == 1


def test_target_must_be_a_static_segment_the_user_may_change(run_import, manager_alice, manager_mallory):
    rules = segment_create(name="R", rules={"all": [{"field": "locale", "op": "exists"}]}, by=manager_alice)
    with pytest.raises(ValidationError, match="static"):
        run_import(b"external_id\na\n", target="add_to_segment", segment_id=rules.pk)
    theirs = segment_create(name="T", kind=Segment.Kind.STATIC, by=manager_mallory)
    from django.http import Http404

    with pytest.raises(Http404):
        run_import(b"external_id\na\n", target="replace_segment", segment_id=theirs.pk)
    assert not Profile.objects.exists()


def test_viewer_cannot_import(run_import, viewer_carol):
    from django.core.exceptions import PermissionDenied

    with pytest.raises(PermissionDenied):
        run_import(b"external_id\na\n", by=viewer_carol)


def test_long_import_hands_over_between_tasks_and_loses_nothing(run_import, settings):
    settings.PUSHDESK_IMPORT_BATCH_ROWS = 2
    settings.PUSHDESK_IMPORT_TASK_SECONDS = 0  # hand over after every batch
    content = b"external_id,n\n" + b"".join(f"u{i},{i}\n".encode() for i in range(7)) + b",bad\nu0,again\n"
    record = run_import(content)
    assert record.status == Import.Status.DONE
    assert (record.rows_done, record.rows_imported, record.rows_failed, record.rows_duplicate) == (9, 7, 1, 1)
    assert Profile.objects.count() == 7
    assert attrs("u0") == {"n": "again"}
    assert [r[0] for r in error_rows(record)] == ["9", "10"]


def test_a_stalled_import_resumes_where_its_last_batch_ended(
    run_import, settings, manager_alice, django_capture_on_commit_callbacks
):
    settings.PUSHDESK_IMPORT_BATCH_ROWS = 2
    settings.PUSHDESK_IMPORT_TASK_SECONDS = 0
    record = run_import(b"external_id\na\nb\nc\n")
    # Pretend the worker died after the first batch: back to "running", position 2, heartbeat old.
    old = timezone.now() - timezone.timedelta(hours=1)
    Import.objects.filter(pk=record.pk).update(
        status=Import.Status.RUNNING, position=2, rows_done=2, rows_imported=2, heartbeat_at=old, finished_at=None
    )
    Profile.objects.filter(external_id="c").delete()
    settings.PUSHDESK_IMPORT_TASK_SECONDS = 100
    with django_capture_on_commit_callbacks(execute=True):
        import_restart(import_id=record.pk, by=manager_alice)  # queued again; runs inline here
    record.refresh_from_db()
    assert record.status == Import.Status.DONE
    assert (record.rows_done, record.rows_imported) == (3, 3)
    assert Profile.objects.filter(external_id="c").exists()


def test_a_running_import_is_not_claimed_twice(run_import):
    record = run_import(b"external_id\na\n")
    Import.objects.filter(pk=record.pk).update(status=Import.Status.RUNNING, heartbeat_at=timezone.now())
    assert import_process(import_id=record.pk) is False  # someone else holds it: nothing happens
    record.refresh_from_db()
    assert record.status == Import.Status.RUNNING


def test_restart_refuses_a_finished_import(run_import, manager_alice):
    record = run_import(b"external_id\na\n")
    with pytest.raises(ValidationError):
        import_restart(import_id=record.pk, by=manager_alice)


def test_progress_reports_percent_and_time_left(run_import):
    record = run_import(b"external_id\na\n")
    assert record.percent == 100.0
    record.status = Import.Status.RUNNING
    record.bytes_done = record.size // 2
    record.run_started_at = timezone.now() - timezone.timedelta(seconds=10)
    assert 0 < record.percent < 100
    assert 5 <= record.seconds_left <= 15


def test_an_import_restarted_after_a_long_gap_estimates_the_time_left_from_its_own_run(
    run_import, settings, database_refuses_profile, manager_alice, django_capture_on_commit_callbacks
):
    """The estimate counted from the import's first start: failed for two days, then restarted, it
    read as most of a day left, its run as fast as ever."""
    settings.PUSHDESK_IMPORT_BATCH_ROWS = 2
    landed, second, third = b"external_id,n\nu1,1\nu2,2\n", b"boom,3\nu4,4\n", b"u5,5\nu6,6\n"
    content = landed + second + third + b"u7,7\nu8,8\n"
    lift = database_refuses_profile("boom")
    record = run_import(content)
    assert (record.status, record.bytes_done) == (Import.Status.FAILED, len(landed))
    two_days_ago = timezone.now() - timezone.timedelta(days=2)
    Import.objects.filter(pk=record.pk).update(started_at=two_days_ago, run_started_at=two_days_ago)
    lift()
    with django_capture_on_commit_callbacks(execute=False):  # queued: a worker takes it up later
        import_restart(import_id=record.pk, by=manager_alice)
    record.refresh_from_db()
    assert (record.status, record.run_started_at, record.seconds_left) == (Import.Status.QUEUED, None, None)

    taken_up = timezone.now()
    assert import_process(import_id=record.pk, seconds=0) is True  # one batch, then hands over
    record.refresh_from_db()
    assert record.started_at == two_days_ago
    assert taken_up <= record.run_started_at <= timezone.now()
    assert (record.run_bytes_from, record.bytes_done) == (len(landed), len(landed + second))
    run_started_at = record.run_started_at
    assert import_process(import_id=record.pk, seconds=0) is True  # the next task goes on with the run
    record.refresh_from_db()
    assert (record.run_started_at, record.run_bytes_from) == (run_started_at, len(landed))
    assert record.bytes_done == len(landed + second + third)

    # The task after it is running, 10 s into the run, which wrote two batches and has one to go.
    set_at = timezone.now()
    Import.objects.filter(pk=record.pk).update(
        status=Import.Status.RUNNING,
        heartbeat_at=set_at,
        run_started_at=set_at - timezone.timedelta(seconds=10),
    )
    record.refresh_from_db()
    left = len(content) - record.bytes_done
    pace = len(second + third) / 10  # bytes a second; from the first start it was 46 bytes in two days
    seconds_left = record.seconds_left
    # 4.5 s, and more by what passed since the run's start was set (its pace slows as the run's time grows).
    late = (timezone.now() - set_at).total_seconds() * left / len(second + third)
    assert left / pace - 0.1 <= seconds_left <= left / pace + late + 0.1, (seconds_left, late)


def test_a_stalled_import_taken_up_by_a_new_worker_starts_a_new_run(manager_alice, media, settings):
    """Its worker stopped two days ago after a batch; the task that takes it up again counts from then."""
    settings.PUSHDESK_IMPORT_BATCH_ROWS = 2
    landed = b"external_id\nu1\nu2\n"
    upload = SimpleUploadedFile("people.csv", landed + b"u3\nu4\nu5\nu6\n", content_type="text/csv")
    record = import_create(upload=upload, by=manager_alice)  # its task is not run: no commit here
    assert import_process(import_id=record.pk, seconds=0) is True
    two_days_ago = timezone.now() - timezone.timedelta(days=2)
    Import.objects.filter(pk=record.pk).update(
        status=Import.Status.RUNNING, started_at=two_days_ago, run_started_at=two_days_ago, heartbeat_at=two_days_ago
    )
    taken_up = timezone.now()
    assert import_process(import_id=record.pk, seconds=0) is True
    record.refresh_from_db()
    assert record.started_at == two_days_ago
    assert taken_up <= record.run_started_at <= timezone.now()
    assert (record.run_bytes_from, record.bytes_done) == (len(landed), len(landed) + len(b"u3\nu4\n"))


def test_the_migration_counts_a_running_import_from_its_start(run_import):
    """A running import had no run recorded: it is counted from its first start, as before; one
    queued or stopped starts a new run when a worker takes it up."""
    import importlib

    from django.apps import apps

    forwards = importlib.import_module("audiences.migrations.0017_import_current_run").forwards
    running, failed = run_import(b"external_id\na\nb\n"), run_import(b"external_id\nc\n")
    started = timezone.now() - timezone.timedelta(minutes=5)
    Import.objects.filter(pk=running.pk).update(
        status=Import.Status.RUNNING, started_at=started, run_started_at=None, bytes_done=10, run_bytes_from=10
    )
    Import.objects.filter(pk=failed.pk).update(status=Import.Status.FAILED, started_at=started, run_started_at=None)
    forwards(apps, None)
    assert Import.objects.filter(pk=running.pk).values_list("run_started_at", "run_bytes_from").get() == (started, 0)
    assert Import.objects.get(pk=failed.pk).run_started_at is None


@pytest.mark.django_db(transaction=True)
def test_a_worker_writes_batches_from_a_second_thread_and_loses_nothing(manager_alice, media, settings):
    """Outside a transaction (as on a worker), PostgreSQL batches are written by a writer thread."""
    settings.PUSHDESK_IMPORT_BATCH_ROWS = 3
    rows = b"".join(f'u{i},{i},"tab\there\\\\ and\nnewline"\n'.encode() for i in range(10))
    content = b"external_id,n,note\n" + rows + b",x,y\nu1,again,z\n"
    upload = SimpleUploadedFile("people.csv", content, content_type="text/csv")
    record = import_create(upload=upload, by=manager_alice, target="new_segment", segment_name="Threaded")
    record.refresh_from_db()
    assert record.status == Import.Status.DONE
    assert (record.rows_done, record.rows_imported, record.rows_failed, record.rows_duplicate) == (12, 10, 1, 1)
    assert attrs("u1") == {"n": "again", "note": "z"}
    assert attrs("u2") == {"n": 2, "note": "tab\there\\\\ and\nnewline"}
    assert record.segment.members.count() == 10


def test_a_file_gone_from_storage_fails_the_import_and_writes_nothing(manager_alice, media):
    upload = SimpleUploadedFile("people.csv", b"external_id\na\nb\n", content_type="text/csv")
    record = import_create(upload=upload, by=manager_alice)  # its task is not run: no commit here
    record.file.delete(save=False)
    assert import_process(import_id=record.pk) is False
    record.refresh_from_db()
    assert record.status == Import.Status.FAILED
    assert "missing" in record.error
    assert not Profile.objects.exists()


def test_valid_utf8_holding_the_replacement_character_is_imported(run_import):
    """U+FFFD is a character like any other when the file spells it in valid UTF-8."""
    record = run_import("external_id,place\nu1,Caf\ufffd de la Gare\n".encode())
    assert (record.rows_imported, record.rows_failed) == (1, 0)
    assert attrs("u1") == {"place": "Caf\ufffd de la Gare"}


def test_bytes_that_do_not_decode_fail_only_their_row(run_import):
    """Past the part checked at upload, an undecodable byte fails its row and no other."""
    padding = b"".join(b"p%05d,%s\n" % (n, b"x" * 60) for n in range(1200))  # beyond the upload check
    content = b"external_id,place\n" + padding + b"u1,Caf\xe9\nu2,Caf\xc3\xa9\nu3\xff,x\n"
    record = run_import(content)
    assert (record.rows_imported, record.rows_failed) == (1201, 2)
    assert attrs("u2") == {"place": "Café"}
    assert not Profile.objects.filter(external_id="u1").exists()
    reason = "holds bytes that are not valid text in this encoding (is the file Latin-1?)"
    assert error_rows(record) == [["1202", "u1", reason], ["1204", "u3\ufffd", reason]]


def test_rows_parsed_a_column_at_a_time_match_the_row_by_row_rules():
    """The worker's column-wise parser gives each row what parse_record gives it, good or bad."""
    import json

    from audiences.imports import Record, parse_record, parse_rows, plan_columns
    from audiences.services.profiles import _timezones

    header = ["external_id", "n", "flag", "note", "locale", "timezone", "when"]
    plan = plan_columns(header, {"n": {"type": "number"}, "when": {"type": "date"}})
    rows = [
        ["u1", "1", "true", "plain", "fr-FR", "Europe/Paris", "2026-01-02"],
        ["u2", " 007 ", "no", "", "", "", ""],  # empty cells leave attributes out
        ["u3", "x", "yes", "a", "de", "UTC", "2026-01-02"],  # not a number
        ["u4", "2", "1", " " * 1500, "x" * 50, "Mars/Base", ""],  # bad zone; blank long cell is fine
        ["u5", "3", "0", "y" * 1001, "", "", ""],  # too long
        ["u6", "4", "false", 'tab\tback\\slash "q"', "", "", "2026-13-40"],  # not a date
        ["", "5", "true", "z", "", "", ""],  # no id
        ["u8", "6"],  # too few fields
        ["u9", "7", "true", "nul\x00", "", "", ""],
        ["u10", "8", "true", "bad\udcff", "", "", ""],
        ["u" + "1" * 300, "9", "true", "long id", "", "", ""],
        ["u12", " 1e3", "TRUE ", "1.50", " en", "UTC ", "2026-01-02T10:00:00Z"],
        ["u13", "-0.5", "maybe", "007", "", "", ""],
        ["  u14 ", "1", "true", "padded id", "", "", ""],  # refused as the profile API refuses it
    ]
    lines = [n + 2 for n in range(len(rows))]
    # Twice: the second time the columns' caches answer for the cells seen the first time.
    for _ in range(2):
        parsed, failures = parse_rows(rows, lines, plan, timezones=_timezones())
        expected_good, expected_bad = [], []
        for line, cells in zip(lines, rows, strict=True):
            one = parse_record(Record(line=line, cells=cells), plan, timezones=_timezones())
            if isinstance(one, str):
                expected_bad.append((line, cells[0], one))
            else:
                expected_good.append((line, one.external_id, one.attributes, one.locale, one.timezone))
        got_good = list(
            zip(
                parsed.lines,
                parsed.external_ids,
                map(json.loads, parsed.attributes),
                parsed.locales,
                parsed.timezones,
                strict=True,
            )
        )
        assert got_good == expected_good
        assert failures == expected_bad
        assert [line for line, *_ in expected_good] == [2, 3, 13, 14]


def test_error_lines_count_blank_lines_and_quoted_newlines(run_import):
    content = b'external_id,note\n\nu1,"two\r\nlines"\n\n  \n,x\nu3,"a\nb\nc"\nu3,dup\n'
    record = run_import(content)
    assert (record.rows_done, record.rows_imported, record.rows_failed, record.rows_duplicate) == (4, 2, 1, 1)
    assert [(r[0], r[1]) for r in error_rows(record)] == [("7", ""), ("11", "u3")]


def test_a_number_too_big_for_json_stays_text(run_import):
    record = run_import(b"external_id,big,small\nu1,1e999,-2.5e3\n")
    assert (record.rows_imported, record.rows_failed) == (1, 0)
    assert attrs("u1") == {"big": "1e999", "small": -2500.0}


def test_only_ascii_digits_make_numbers(run_import):
    """Other scripts' digits passed for digits: '²' failed its row (int() refused it) and '٠١٢' became 12."""
    record = run_import("external_id,note\nu1,²\nu2,①\nu3,٠١٢\nu4,5²\nu5,-٣\nu6,42\n".encode())
    assert (record.rows_imported, record.rows_failed) == (6, 0)
    notes = {p.external_id: p.attributes["note"] for p in Profile.objects.all()}
    assert notes == {"u1": "²", "u2": "①", "u3": "٠١٢", "u4": "5²", "u5": "-٣", "u6": 42}


def test_a_number_written_with_an_underscore_is_text_as_a_rule_reads_it(run_import):
    """int() and float() read "1_000" as 1000 and "1_0.5" as 10.5, PostgreSQL's numeric and a
    number rule as no number: the cell stays text where types are guessed, and fails its row
    where the column is declared a number, as any other text does."""
    record = run_import(b"external_id,note\nu1,1_000\nu2,1_0.5\nu3,-1_0\nu4,1e1_0\nu5,1000\n")
    assert (record.rows_imported, record.rows_failed) == (5, 0)
    notes = {p.external_id: p.attributes["note"] for p in Profile.objects.all()}
    assert notes == {"u1": "1_000", "u2": "1_0.5", "u3": "-1_0", "u4": "1e1_0", "u5": 1000}
    record = run_import(b"external_id,age\nd1,1_000\nd2,34\n", columns={"age": {"type": "number"}})
    assert (record.rows_imported, record.rows_failed) == (1, 1)
    assert error_rows(record)[0] == ["2", "d1", "column 'age': '1_000' is not a number"]


def test_a_quoted_field_over_the_size_limit_fails_its_record_and_reading_goes_on_after_it(run_import):
    """The reader gave up inside the field and went on at its next line: 'rest"' became a profile."""
    big = "a" * 140_000
    content = f'external_id,note\nu1,"{big}\nrest",tail\nu2,ok\n,empty\n'.encode()
    record = run_import(content)
    assert (record.rows_done, record.rows_imported, record.rows_failed) == (3, 1, 2)
    assert list(Profile.objects.values_list("external_id", flat=True)) == ["u2"]
    rows = error_rows(record)
    assert [(r[0], r[1]) for r in rows] == [("2", ""), ("5", "")]
    assert "field larger than field limit" in rows[0][2]


def test_a_record_with_several_quoted_lines_over_the_limit_is_skipped_to_its_end(run_import):
    big = "b" * 140_000
    content = f'external_id,note,x\nu1,"{big}\n{big}\n"",{big}",x\nu2,"short\nlines",y\nu3,z,"{big}"\nu4,w,v\n'
    record = run_import(content.encode())
    assert (record.rows_done, record.rows_imported, record.rows_failed) == (4, 2, 2)
    assert sorted(Profile.objects.values_list("external_id", flat=True)) == ["u2", "u4"]
    assert [r[0] for r in error_rows(record)] == ["2", "7"]


def test_a_quoted_field_closed_on_the_line_it_outgrew_the_limit_does_not_swallow_the_next_record(run_import):
    big = "c" * 140_000
    record = run_import(f'external_id,note\nu1,"short\n{big}",x\nu2,ok\n'.encode())
    assert (record.rows_done, record.rows_imported, record.rows_failed) == (2, 1, 1)
    assert list(Profile.objects.values_list("external_id", flat=True)) == ["u2"]
    assert [r[0] for r in error_rows(record)] == ["2"]


def test_locale_and_attributes_follow_the_profile_api_rules(run_import):
    """Locales were stored unchecked (cut to 35 characters), and any number and size of attributes landed."""
    many = ",".join(f"c{i}" for i in range(201))
    record = run_import(f"external_id,locale\nu1,not a locale!!\nu2,{'x' * 50}\nu3,fr-FR\n".encode())
    assert (record.rows_imported, record.rows_failed) == (1, 2)
    reasons = {r[1]: r[2] for r in error_rows(record)}
    assert "Not a locale" in reasons["u1"] and "Not a locale" in reasons["u2"]
    assert Profile.objects.get(external_id="u3").locale == "fr-FR"

    wide = run_import(f"external_id,{many}\nw1,{','.join('1' * 201)}\nw2,{',' * 200}1\n".encode())
    assert (wide.rows_imported, wide.rows_failed) == (1, 1)
    assert error_rows(wide) == [["2", "w1", "attributes: At most 200 attributes."]]
    assert attrs("w2") == {"c200": 1}

    # The limit counts bytes of ASCII JSON, as the API does: each 'é' takes six ('\\u00e9').
    columns = ",".join(f"n{i}" for i in range(20))
    content = f"external_id,{columns}\nb1,{','.join(['v' * 900] * 20)}\nb2,{','.join(['é' * 1000] * 3)}{',' * 17}\n"
    heavy = run_import(content.encode() + b"b3,short" + b"," * 19 + b"\n")
    assert (heavy.rows_imported, heavy.rows_failed) == (1, 2)
    assert [(r[1], r[2]) for r in error_rows(heavy)] == [
        ("b1", "attributes: Attributes take at most 16384 bytes as JSON."),
        ("b2", "attributes: Attributes take at most 16384 bytes as JSON."),
    ]
    assert not Profile.objects.filter(external_id__in=["w1", "b1", "b2"]).exists()


def wide_file(ids: list[str], names: list[str], *, value: str = "1") -> bytes:
    """A file giving each profile of ``ids`` every attribute of ``names``."""
    lines = [",".join(["external_id", *names])] + [",".join([x, *[value] * len(names)]) for x in ids]
    return ("\n".join(lines) + "\n").encode()


def test_imports_cannot_grow_a_profile_past_200_attributes(run_import):
    """Three imports of 150 other columns each made profiles of 450 attributes, which the API refuses."""
    first = run_import(wide_file(["u1", "u2"], [f"a{i}" for i in range(150)]))
    assert (first.rows_imported, first.rows_failed) == (2, 0)
    second = run_import(wide_file(["u1", "new", "u2"], [f"b{i}" for i in range(150)]))
    assert (second.rows_done, second.rows_imported, second.rows_failed) == (3, 1, 2)
    assert error_rows(second) == [
        ["2", "u1", "attributes: The profile would hold 300 attributes (at most 200)."],
        ["4", "u2", "attributes: The profile would hold 300 attributes (at most 200)."],
    ]
    assert sorted(attrs("u1")) == sorted(f"a{i}" for i in range(150))
    assert sorted(attrs("new")) == sorted(f"b{i}" for i in range(150))
    third = run_import(wide_file(["u1", "u2"], [f"c{i}" for i in range(150)]))
    assert (third.rows_imported, third.rows_failed) == (0, 2)
    assert {len(p.attributes) for p in Profile.objects.all()} == {150}


def test_imports_cannot_grow_a_profile_past_16_kb_of_attributes(run_import):
    ProfileFactory(external_id="big", attributes={f"k{i}": "v" * 1000 for i in range(12)})
    ProfileFactory(external_id="small", attributes={"k0": "v"})
    record = run_import(wide_file(["big", "small"], ["n0", "n1", "n2", "n3", "n4"], value="w" * 900))
    assert (record.rows_imported, record.rows_failed) == (1, 1)
    size = len(json_compact({**attrs("big"), **{f"n{i}": "w" * 900 for i in range(5)}}))
    assert error_rows(record) == [
        ["2", "big", f"attributes: The profile's attributes would take {size} bytes as JSON (at most 16384)."]
    ]
    assert attrs("big") == {f"k{i}": "v" * 1000 for i in range(12)}
    assert sorted(attrs("small")) == ["k0", "n0", "n1", "n2", "n3", "n4"]


def test_letters_beyond_ascii_count_in_what_a_profile_keeps_as_the_api_counts_them(run_import):
    """The profile's 600 'é' take 1,209 bytes as the database's JSON but 3,608 as the API measures."""
    ProfileFactory(external_id="accents", attributes={"k": "é" * 600})
    names = [f"c{i:02d}" for i in range(14)]
    record = run_import(wide_file(["accents", "plain"], names, value="w" * 945))
    assert (record.rows_imported, record.rows_failed) == (1, 1)
    assert error_rows(record) == [
        ["2", "accents", "attributes: The profile's attributes would take 16964 bytes as JSON (at most 16384)."]
    ]
    assert attrs("accents") == {"k": "é" * 600}


def test_a_profile_over_the_limits_from_before_may_change_without_growing(run_import):
    """As the API allows: its values change, a name it holds is given again, nothing is added."""
    ProfileFactory(external_id="old", attributes={f"a{i}": 1 for i in range(250)}, locale="de")
    record = run_import(b"external_id,a0,a1,locale\nold,2,3,fr\n")
    assert (record.rows_imported, record.rows_failed) == (1, 0)
    profile = Profile.objects.get(external_id="old")
    assert (len(profile.attributes), profile.attributes["a0"], profile.attributes["a1"], profile.locale) == (
        250,
        2,
        3,
        "fr",
    )
    grows = run_import(b"external_id,a0,extra,locale\nold,5,1,es\n")
    assert (grows.rows_imported, grows.rows_failed) == (0, 1)
    assert error_rows(grows) == [["2", "old", "attributes: The profile would hold 251 attributes (at most 200)."]]
    profile.refresh_from_db()
    assert (profile.attributes["a0"], "extra" in profile.attributes, profile.locale) == (2, False, "fr")
    again = run_import(b"external_id,a0,a1,locale\nold,2,3,fr\n")
    assert (again.rows_imported, again.rows_failed) == (1, 0)
    assert Profile.objects.get(external_id="old").updated_at == profile.updated_at  # nothing to write


def test_a_large_profile_within_the_limits_still_takes_an_import(run_import):
    """Profiles that may come near the limits are measured one by one; those staying within them land."""
    ProfileFactory(external_id="near", attributes={f"a{i}": "x" * 50 for i in range(195)})
    record = run_import(
        wide_file(["near", "other"], [f"b{i}" for i in range(5)]), target="new_segment", segment_name="S"
    )
    assert (record.rows_imported, record.rows_failed) == (2, 0)
    assert len(attrs("near")) == 200
    assert set(record.segment.members.values_list("profile__external_id", flat=True)) == {"near", "other"}


def test_a_row_refused_for_the_limits_adds_no_member(run_import, manager_alice):
    static = segment_create(name="VIP", kind=Segment.Kind.STATIC, by=manager_alice)
    ProfileFactory(external_id="full", attributes={f"a{i}": 1 for i in range(200)})
    record = run_import(b"external_id,extra\nfull,1\nfine,1\n", target="add_to_segment", segment_id=static.pk)
    assert (record.rows_imported, record.rows_failed) == (1, 1)
    assert [r[:2] for r in error_rows(record)] == [["2", "full"]]
    assert list(static.members.values_list("profile__external_id", flat=True)) == ["fine"]
    assert "extra" not in attrs("full")


@pytest.mark.parametrize("batch_rows", [2, 20_000])
def test_rows_repeating_an_id_are_measured_in_file_order(run_import, settings, batch_rows):
    """Each row of a file wider than the limit may give up to 200 values: two rows of one profile then made 250."""
    settings.PUSHDESK_IMPORT_BATCH_ROWS = batch_rows
    a, b = [f"a{i}" for i in range(150)], [f"b{i}" for i in range(100)]
    header = ",".join(["external_id", *a, *b, "locale"])
    content = "\n".join(
        [
            header,
            ",".join(["u1", *["1"] * 150, *[""] * 100, "de"]),
            ",".join(["u1", *[""] * 150, *["2"] * 100, "fr"]),
            ",".join(["u1", *["3"] * 10, *[""] * 240, "es"]),
        ]
    )
    record = run_import(content.encode() + b"\n")
    assert (record.rows_done, record.rows_imported, record.rows_duplicate, record.rows_failed) == (3, 1, 1, 1)
    assert error_rows(record) == [
        ["3", "u1", "attributes: The profile would hold 250 attributes (at most 200)."],
        ["4", "u1", DUPLICATE],
    ]
    profile = Profile.objects.get(external_id="u1")
    assert (sorted(profile.attributes), profile.locale) == (sorted(a), "es")
    assert profile.attributes["a0"] == 3 and profile.attributes["a149"] == 1


@pytest.mark.django_db(transaction=True)
def test_a_worker_refuses_rows_past_the_limits_from_its_writer_thread(manager_alice, media, settings):
    """Outside a transaction (as on a worker) the PostgreSQL batches are written by a second thread,
    which measures the profiles that may pass the limits and reports them with their batch."""
    settings.PUSHDESK_IMPORT_BATCH_ROWS = 2
    ProfileFactory(external_id="u3", attributes={f"a{i}": 1 for i in range(200)})
    content = b"external_id,n\nu1,1\n,bad\nu3,1\nu4,1\nu5,1\nu3,2\n"
    upload = SimpleUploadedFile("people.csv", content, content_type="text/csv")
    record = import_create(upload=upload, by=manager_alice, target="new_segment", segment_name="Threaded")
    record.refresh_from_db()
    assert record.status == Import.Status.DONE
    assert (record.rows_done, record.rows_imported, record.rows_failed, record.rows_duplicate) == (6, 3, 3, 0)
    assert [(r[0], r[1], r[2].split(":")[0]) for r in error_rows(record)] == [
        ("3", "", "external_id is empty"),
        ("4", "u3", "attributes"),
        ("7", "u3", "attributes"),
    ]
    assert "n" not in attrs("u3")
    assert set(record.segment.members.values_list("profile__external_id", flat=True)) == {"u1", "u4", "u5"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("external_id,n\nu1,x\n".encode("utf-16"), "UTF-16 text"),
        ("external_id,n\nu1,x\n".encode("utf-16-be"), "looks like UTF-16"),
        ("external_id,n\nu1,x\n".encode("utf-32"), "UTF-32 text"),
    ],
)
def test_utf16_and_utf32_files_are_refused_with_a_hint_to_export_as_utf8(run_import, content, message):
    """They were refused as binary data (NUL bytes)."""
    with pytest.raises(ImportRefused, match=message) as refused:
        run_import(content)
    assert "UTF-8" in str(refused.value)
    assert not Import.objects.exists()


def test_a_utf8_file_with_its_mark_declared_latin1_is_refused_naming_utf8(run_import):
    """It was refused because the header's first column read 'ï»¿external_id'."""
    with pytest.raises(ImportRefused, match="choose the UTF-8 encoding"):
        run_import("\ufeffexternal_id,city\nu1,Zürich\n".encode(), encoding="latin-1")
    assert not Import.objects.exists()


def test_a_nul_in_a_row_fails_that_row_wherever_it_is(run_import):
    """Within the first 64 KB it refused the whole file; further on it failed its row only."""
    padding = b"".join(b"p%05d,%s\n" % (n, b"x" * 60) for n in range(1200))  # beyond the upload check
    record = run_import(b"external_id,n\nu1,a\x00b\nu2,ok\n" + padding + b"u3,c\x00d\n")
    assert (record.rows_imported, record.rows_failed) == (1201, 2)
    assert [(r[0], r[2]) for r in error_rows(record)] == [
        ("2", "holds a NUL character"),
        ("1204", "holds a NUL character"),
    ]


def test_after_a_resume_a_good_row_repeating_a_failed_rows_id_is_not_a_duplicate(
    run_import, settings, manager_alice, django_capture_on_commit_callbacks
):
    """The ids remembered from the rows done before the resume included the failed rows'."""
    settings.PUSHDESK_IMPORT_BATCH_ROWS = 2
    content = b"external_id,n\nu1,1\nu2,2\nu3,x\nu4,4\nu3,5\n"
    record = run_import(content, columns={"n": {"type": "number"}})
    assert (record.rows_imported, record.rows_failed, record.rows_duplicate) == (4, 1, 0)
    # The worker stopped after the second batch; the error file then held what it holds now.
    old = timezone.now() - timezone.timedelta(hours=1)
    Import.objects.filter(pk=record.pk).update(
        status=Import.Status.RUNNING, position=4, rows_done=4, rows_imported=3, heartbeat_at=old, finished_at=None
    )
    with django_capture_on_commit_callbacks(execute=True):
        import_restart(import_id=record.pk, by=manager_alice)
    record.refresh_from_db()
    assert record.status == Import.Status.DONE
    assert (record.rows_done, record.rows_imported, record.rows_failed, record.rows_duplicate) == (5, 4, 1, 0)
    assert [(r[0], r[1]) for r in error_rows(record)] == [("4", "u3")]
    assert attrs("u3") == {"n": 5}


def disk_full() -> str:
    """What the database says when ``database_refuses_profile`` makes it refuse a write, as the error quotes it."""
    if connection.vendor == "postgresql":  # its first line: not the CONTEXT: line PostgreSQL adds
        return "OperationalError: could not extend file: No space left on device"
    return "IntegrityError: database or disk is full"


def test_an_unexpected_error_fails_the_import_saying_what_landed_and_a_restart_finishes_it(
    run_import, settings, database_refuses_profile, caplog, manager_alice, django_capture_on_commit_callbacks
):
    """It stayed 'running' with no error, at 100 %, its first batch written."""
    settings.PUSHDESK_IMPORT_BATCH_ROWS = 2
    lift = database_refuses_profile("u3")  # the second batch's first row
    record = run_import(b"external_id,n\nu1,1\n,bad\nu3,3\nu4,4\nu5,5\n")
    assert record.status == Import.Status.FAILED
    assert record.error == (
        f"Stopped by an unexpected error ({disk_full()}). "
        "The file's first 2 rows (to line 3) were read and their good rows written, in whole batches; nothing "
        "after them was written. Restart the import to go on from there, or import the file again: the rows "
        "already written change nothing."
    )
    assert (record.rows_done, record.rows_imported, record.rows_failed) == (2, 1, 1)
    assert list(Profile.objects.values_list("external_id", flat=True)) == ["u1"]
    assert [(r[0], r[2]) for r in error_rows(record)] == [("3", "external_id is empty")]
    assert any(r.levelname == "ERROR" and f"Import {record.pk}" in r.getMessage() for r in caplog.records)

    lift()
    with django_capture_on_commit_callbacks(execute=True):
        import_restart(import_id=record.pk, by=manager_alice)
    record.refresh_from_db()
    assert (record.status, record.error) == (Import.Status.DONE, "")
    assert (record.rows_done, record.rows_imported, record.rows_failed) == (5, 4, 1)
    assert sorted(Profile.objects.values_list("external_id", flat=True)) == ["u1", "u3", "u4", "u5"]
    assert [r[0] for r in error_rows(record)] == ["3"]


@pytest.mark.django_db(transaction=True)
def test_an_unexpected_error_in_the_writer_thread_fails_the_import(
    manager_alice, media, settings, database_refuses_profile
):
    """Outside a transaction (as on a worker) the PostgreSQL batches are written by a second thread."""
    settings.PUSHDESK_IMPORT_BATCH_ROWS = 2
    database_refuses_profile("u3")  # the second batch's first row
    upload = SimpleUploadedFile("people.csv", b"external_id\nu1\nu2\nu3\nu4\nu5\nu6\nu7\n", content_type="text/csv")
    record = import_create(upload=upload, by=manager_alice)
    record.refresh_from_db()
    assert record.status == Import.Status.FAILED
    assert record.error.startswith(f"Stopped by an unexpected error ({disk_full()}).")
    assert "first 2 rows (to line 3)" in record.error
    assert (record.rows_done, record.rows_imported) == (2, 2)
    assert sorted(Profile.objects.values_list("external_id", flat=True)) == ["u1", "u2"]


def test_an_import_whose_segment_is_gone_fails_instead_of_writing_profiles_alone(
    manager_alice, media, django_capture_on_commit_callbacks
):
    """The segment's deletion set the import's segment to null: a queued import then wrote profiles only."""
    static = segment_create(name="VIP", kind=Segment.Kind.STATIC, by=manager_alice)
    upload = SimpleUploadedFile("people.csv", b"external_id\nu1\n", content_type="text/csv")
    record = import_create(upload=upload, by=manager_alice, target="add_to_segment", segment_id=static.pk)
    segment_delete(segment_id=static.pk, by=manager_alice)
    import_process(import_id=record.pk)
    record.refresh_from_db()
    assert (record.status, record.error) == (Import.Status.FAILED, SEGMENT_GONE)
    assert not Profile.objects.exists()


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"note": {"to": 5}}, "'to' must be a name"),
        ({"note": {"to": ["x"]}}, "'to' must be a name"),
        ({"note": {"type": "string", "to": {"a": 1}}}, "'to' must be a name"),
        ({"note": {"type": ["string"]}}, "unknown type"),
        ({"note": {"tpye": "number"}}, "unknown key 'tpye'"),
        ({"note": 5}, "must be an object"),
    ],
)
def test_a_column_mapping_of_the_wrong_shape_is_refused(run_import, columns, message):
    """A 'to' that was not text raised a TypeError."""
    with pytest.raises(ImportRefused, match=message):
        run_import(b"external_id,note\nu1,x\n", columns=columns)
    assert not Import.objects.exists()


def test_a_failed_import_counts_as_done_only_the_bytes_its_written_batches_read(
    run_import, settings, database_refuses_profile, manager_alice, django_capture_on_commit_callbacks
):
    """The percentage read the file's position, which runs ahead of the batches written (a small
    file is read at once): an import stopped after its first batch showed 100 %."""
    settings.PUSHDESK_IMPORT_BATCH_ROWS = 2
    landed = '\ufeffexternal_id,city\r\nu1,"Zürich\r\nNord"\r\n\r\nu2,São Paulo\r\n'.encode()
    rest = b"u3,Lyon\nboom,Nice\nu5,Metz\n"
    lift = database_refuses_profile("boom")
    record = run_import(landed + rest)
    assert record.status == Import.Status.FAILED
    assert (record.rows_done, record.bytes_done) == (2, len(landed))
    assert record.percent == round(100 * len(landed) / len(landed + rest), 1) == 69.0

    lift()
    with django_capture_on_commit_callbacks(execute=True):
        import_restart(import_id=record.pk, by=manager_alice)
    record.refresh_from_db()
    assert (record.status, record.rows_done, record.percent) == (Import.Status.DONE, 5, 100.0)


def test_an_import_stopped_partway_lists_only_the_failed_rows_of_its_written_batches(
    run_import, settings, database_refuses_profile, manager_alice, django_capture_on_commit_callbacks
):
    settings.PUSHDESK_IMPORT_BATCH_ROWS = 2
    content = b"external_id,n\nu1,1\n,2\nboom,3\n,4\n,5\nu6,6\n"  # batches: lines 2-3, 4-5, 6-7
    lift = database_refuses_profile("boom")
    record = run_import(content)
    assert record.status == Import.Status.FAILED
    assert (record.rows_done, record.rows_failed) == (2, 1)
    assert [r[0] for r in error_rows(record)] == ["3"]  # not line 5: its batch was not written
    assert record.error_bytes == record.error_file.size

    lift()
    with django_capture_on_commit_callbacks(execute=True):
        import_restart(import_id=record.pk, by=manager_alice)
    record.refresh_from_db()
    assert (record.status, record.rows_done, record.rows_imported, record.rows_failed) == (Import.Status.DONE, 6, 3, 3)
    assert [r[0] for r in error_rows(record)] == ["3", "5", "6"]


def test_an_import_refused_partway_keeps_the_error_file_of_the_batches_it_wrote(
    run_import, settings, database_refuses_profile, manager_alice
):
    """Its segment deleted while it ran: the error file listed the rows of the batch refused, and was not offered."""
    settings.PUSHDESK_IMPORT_BATCH_ROWS = 2
    static = segment_create(name="VIP", kind=Segment.Kind.STATIC, by=manager_alice)
    database_refuses_profile("gone", deletes_segment=static.pk)
    content = b"external_id,n\nu1,1\n,2\ngone,3\n,4\nu5,5\n,6\n"  # batches: lines 2-3, 4-5, 6-7
    record = run_import(content, target="add_to_segment", segment_id=static.pk)
    assert record.status == Import.Status.FAILED
    assert (record.rows_done, record.rows_imported, record.rows_failed) == (4, 2, 2)
    assert [r[0] for r in error_rows(record)] == ["3", "5"]
    assert record.error == (
        f"{SEGMENT_GONE} The file's first 4 rows (to line 5) were read and their good rows written, "
        "in whole batches; nothing after them was written."
    )
    assert record.bytes_done == len(b"external_id,n\nu1,1\n,2\ngone,3\n,4\n")
    assert not Profile.objects.filter(external_id="u5").exists()


def test_an_import_refused_when_it_resumes_offers_the_error_file_of_the_batches_it_wrote(
    manager_alice, media, settings, django_capture_on_commit_callbacks
):
    """Its segment deleted between two tasks: the rows that failed before were counted but could not be downloaded."""
    settings.PUSHDESK_IMPORT_BATCH_ROWS = 2
    static = segment_create(name="VIP", kind=Segment.Kind.STATIC, by=manager_alice)
    upload = SimpleUploadedFile("people.csv", b"external_id,n\nu1,1\n,2\nu3,3\n,4\n", content_type="text/csv")
    with django_capture_on_commit_callbacks(execute=False):
        record = import_create(upload=upload, by=manager_alice, target="add_to_segment", segment_id=static.pk)
        assert import_process(import_id=record.pk, seconds=0) is True  # one batch, then hands over
    segment_delete(segment_id=static.pk, by=manager_alice)
    import_process(import_id=record.pk)
    record.refresh_from_db()
    assert record.status == Import.Status.FAILED
    assert record.error.startswith(SEGMENT_GONE)
    assert (record.rows_done, record.rows_failed) == (2, 1)
    assert [r[0] for r in error_rows(record)] == ["3"]


@pytest.mark.django_db(transaction=True)
def test_a_worker_stopped_partway_offers_only_what_its_written_batches_read_and_failed(
    manager_alice, media, settings, database_refuses_profile
):
    """On a worker the file is parsed a batch or two ahead of the writer thread: the error file
    listed the rows of batches never written, and the percentage the bytes parsed."""
    settings.PUSHDESK_IMPORT_BATCH_ROWS = 2
    database_refuses_profile("boom")
    landed = b"external_id,n\nu1,1\n,2\n"
    content = landed + b"boom,3\n,4\n,5\n,6\n,7\nu8,8\n"
    upload = SimpleUploadedFile("people.csv", content, content_type="text/csv")
    record = import_create(upload=upload, by=manager_alice)
    record.refresh_from_db()
    assert record.status == Import.Status.FAILED
    assert (record.rows_done, record.rows_failed, record.bytes_done) == (2, 1, len(landed))
    assert [r[0] for r in error_rows(record)] == ["3"]
    assert "first 2 rows (to line 3)" in record.error


def test_restart_is_refused_to_whoever_may_not_see_the_import_or_change_its_segment_now(
    run_import, manager_alice, manager_mallory, admin_erin
):
    """Any Manager restarted any import by its id, and its creator after losing access to its segment."""
    from django.http import Http404

    from accounts.services import access_revoke

    static = segment_create(name="VIP", kind=Segment.Kind.STATIC, by=manager_alice)
    record = run_import(b"external_id\na\n", target="add_to_segment", segment_id=static.pk)
    Import.objects.filter(pk=record.pk).update(status=Import.Status.FAILED)
    with pytest.raises(Http404):
        import_restart(import_id=record.pk, by=manager_mallory)
    access_revoke(obj=static, to=manager_alice, by=admin_erin)
    with pytest.raises(Http404):
        import_restart(import_id=record.pk, by=manager_alice)
    segment_delete(segment_id=static.pk, by=admin_erin)
    with pytest.raises(ValidationError, match="segment was deleted"):
        import_restart(import_id=record.pk, by=admin_erin)
    assert Import.objects.get(pk=record.pk).status == Import.Status.FAILED
