import pytest


@pytest.fixture
def media(settings, tmp_path):
    """Uploaded files and error files go to a fresh MEDIA_ROOT."""
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


@pytest.fixture
def run_import(manager_alice, media, django_capture_on_commit_callbacks):
    """Upload bytes as a CSV file and run the import to the end, as the worker would."""
    from django.core.files.uploadedfile import SimpleUploadedFile

    from audiences.models import Import
    from audiences.services.imports import import_create

    def run(content: bytes, *, by=None, name="people.csv", **kwargs) -> "Import":
        upload = SimpleUploadedFile(name, content, content_type="text/csv")
        with django_capture_on_commit_callbacks(execute=True):
            record = import_create(upload=upload, by=by or manager_alice, **kwargs)
        record.refresh_from_db()
        return record

    return run


@pytest.fixture
def under_review(manager_alice, approver_bob):
    """Make a segment the audience of ``manager_alice``'s campaign waiting for ``approver_bob``, who
    then reads the segment (read-only) without a grant on it."""
    from accounts.services import access_grant
    from campaigns.services.lifecycle import campaign_create, campaign_submit
    from tests.factories import AppFactory, PushContentFactory

    def submit(segment):
        app = AppFactory(name="Review")
        access_grant(obj=app, to=manager_alice, by=None)
        content = PushContentFactory(app=app)
        campaign = campaign_create(by=manager_alice, name="Promo", app=app, segment=segment, content=content)
        access_grant(obj=campaign, to=approver_bob, by=None)  # shared with the approver, not the segment
        campaign_submit(campaign_id=campaign.pk, by=manager_alice)
        return campaign

    return submit


@pytest.fixture
def database_refuses_profile(django_db_blocker):
    """Make the database itself fail the write of one profile (by external id), as a full disk would:
    a trigger raises when the row is inserted. ``deletes_segment=<id>`` makes that write delete the
    segment instead, as a deletion committed meanwhile would. Returns a function that lifts it;
    it is lifted at the end of the test in any case."""
    from django.db import connection

    installed = []

    def lift():
        if installed:
            installed.clear()
            with django_db_blocker.unblock(), connection.cursor() as cursor:
                if connection.vendor == "postgresql":
                    cursor.execute("DROP TRIGGER IF EXISTS pushdesk_test_refuse ON audiences_profile")
                    cursor.execute("DROP FUNCTION IF EXISTS pushdesk_test_refuse()")
                else:
                    cursor.execute("DROP TRIGGER IF EXISTS pushdesk_test_refuse")

    def install(external_id: str, *, deletes_segment: int | None = None):
        assert external_id.isalnum()  # spelled into the trigger's SQL
        if connection.vendor == "postgresql":
            action = (
                _deletion(int(deletes_segment))
                if deletes_segment
                else "RAISE EXCEPTION 'could not extend file: No space left on device' USING ERRCODE = '53100'"
            )
            statements = [
                "CREATE FUNCTION pushdesk_test_refuse() RETURNS trigger LANGUAGE plpgsql AS "
                f"$$ BEGIN {action}; RETURN NEW; END $$",
                "CREATE TRIGGER pushdesk_test_refuse BEFORE INSERT ON audiences_profile FOR EACH ROW "
                f"WHEN (NEW.external_id = '{external_id}') EXECUTE FUNCTION pushdesk_test_refuse()",
            ]
        else:
            action = (
                _deletion(int(deletes_segment))
                if deletes_segment
                else "SELECT RAISE(ABORT, 'database or disk is full')"
            )
            statements = [
                "CREATE TRIGGER pushdesk_test_refuse BEFORE INSERT ON audiences_profile "
                f"WHEN NEW.external_id = '{external_id}' BEGIN {action}; END"
            ]
        with connection.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)
        installed.append(external_id)
        return lift

    yield install
    lift()


def _deletion(segment_id: int) -> str:
    """The rows ``segment_delete`` removes or changes with a segment, as SQL statements."""
    statements = [
        "DELETE FROM audiences_segmentmember WHERE segment_id = {id}",
        "DELETE FROM audiences_segmentuserobjectpermission WHERE content_object_id = {id}",
        "DELETE FROM audiences_segmentgroupobjectpermission WHERE content_object_id = {id}",
        "UPDATE audiences_import SET segment_id = NULL WHERE segment_id = {id}",
        "DELETE FROM audiences_segment WHERE id = {id}",
    ]
    return "; ".join(statement.format(id=int(segment_id)) for statement in statements)
