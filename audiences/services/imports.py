"""CSV imports of profiles: create, process (streamed, in batches), restart.

The file is read by ``audiences.imports``; these services check permissions and drive it.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
import time
import uuid
from functools import partial
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import OperationalError, connection, transaction
from django.db.models import Case, F, Q, QuerySet, Value, When
from django.http import Http404
from django.utils import timezone
from django_q.tasks import async_task

from accounts.models import ApiKey, User
from accounts.services import audit
from audiences.imports import (
    SEGMENT_GONE,
    Batch,
    ErrorFile,
    Header,
    ImportRefused,
    RecordReader,
    named_external_id,
    parse_rows,
    plan_columns,
    segment_members_lock,
    segment_members_named,
    sniff_header,
    write_batch,
)
from audiences.models import Import, Segment, SegmentMember
from audiences.selectors import imports_visible_to, segment_for
from audiences.services.profiles import _ensure_perm, _timezones, members_lock
from audiences.services.segments import segment_create, segment_members_landed
from config.db import write_pacer

log = logging.getLogger(__name__)


def import_create(
    *,
    upload,
    by: User,
    encoding: str = "utf-8",
    columns: dict | None = None,
    target: str = "profiles",
    segment_id: int | None = None,
    segment_name: str = "",
    by_key: ApiKey | None = None,
) -> Import:
    """Store an uploaded CSV file and queue its import on a worker.

    The header is checked now, so a file that is not CSV, is too big, or has no external_id
    column is refused (ImportRefused, a ValidationError) before anything is stored.
    ``target``: ``profiles`` only, ``new_segment`` (an imported segment named ``segment_name``,
    created now and granted to ``by``), ``add_to_segment`` / ``replace_segment`` (a static
    segment ``by`` may change). ``by_key``: the API key the file came through, recorded so that a
    key without the read scope reads back only its own imports (``imports_visible_to_key``).
    Raises PermissionDenied / Http404 for roles and access.
    """
    _ensure_perm(by, "audiences.add_import", "Your role may not import profiles.")
    if encoding not in Import.Encoding.values:
        raise ValidationError({"encoding": f"Unknown encoding {encoding!r}; use utf-8 or latin-1."})
    if target not in Import.Target.values:
        raise ValidationError({"target": f"Unknown target {target!r}; use one of {', '.join(Import.Target.values)}."})
    size = getattr(upload, "size", None) or 0
    if size > settings.PUSHDESK_IMPORT_MAX_BYTES:
        raise ImportRefused(
            f"The file is {size:,} bytes; the limit is {settings.PUSHDESK_IMPORT_MAX_BYTES:,} bytes "
            "(PUSHDESK_IMPORT_MAX_BYTES)."
        )
    header = sniff_header(upload, encoding=encoding, columns=columns)
    plan_columns(header.cells, columns)
    segment = None
    if target in (Import.Target.ADD_TO_SEGMENT, Import.Target.REPLACE_SEGMENT):
        if segment_id is None:
            raise ValidationError({"segment": "Choose the static segment to add to or replace."})
        segment = segment_for(by, segment_id, perm="audiences.change_segment")
        if segment.kind != Segment.Kind.STATIC:
            raise ValidationError({"segment": "Only a static segment can be added to or replaced by an import."})
    elif target == Import.Target.NEW_SEGMENT and not segment_name.strip():
        raise ValidationError({"segment_name": "Name the new segment."})
    with transaction.atomic():
        if target == Import.Target.NEW_SEGMENT:
            segment = segment_create(name=segment_name, kind=Segment.Kind.IMPORTED, by=by)
        record = Import(
            original_name=(getattr(upload, "name", "") or "")[:255],
            size=size,
            encoding=encoding,
            separator=header.separator,
            columns=columns or {},
            target=target,
            segment=segment,
            segment_name=segment_name,
            created_by=by,
            created_by_key=by_key,
        )
        record.file.save(f"{uuid.uuid4().hex}.csv", upload, save=False)
        record.save()
        audit(
            actor=by,
            action="import_created",
            obj=record,
            summary={"target": target, "segment": segment.pk if segment else None, "size": size},
        )
        transaction.on_commit(lambda: async_task("audiences.tasks.import_run", record.pk))
    return record


def _claim_import(import_id: int, now: dt.datetime) -> bool:
    """Take a queued import, or a running one whose worker stopped, when its segment's turn is its own.

    A new run starts (``run_started_at``, ``run_bytes_from``) unless the import was handed over
    by the task before, whose run goes on: taken from a stalled worker, or queued with no run
    (a first start, a restart), it starts from the bytes done now.

    Imports into one segment take turns (``_turn_ahead``): one whose turn has not come stays
    queued, naming the import it waits for (``waiting_for``), whose end queues it again. The
    segment is held first, as its batches and the end of an import hold it, so that two imports
    of it never both see the turn free, and an import ending meanwhile finds this one waiting.
    """
    claimable = Q(status=Import.Status.QUEUED) | Q(status=Import.Status.RUNNING, heartbeat_at__lt=_stall_cut(now))
    segment_id = (
        Import.objects.filter(pk=import_id).exclude(target=Import.Target.PROFILES).values_list("segment_id", flat=True)
    ).first()
    with transaction.atomic():
        if segment_id is not None:
            _segment_turn_lock(segment_id)
        record = Import.objects.select_for_update().filter(claimable, pk=import_id).first()
        if record is None:
            return False
        if segment_id is not None and record.segment_id is not None:
            ahead = _turn_ahead(record)
            if ahead is not None:
                if record.waiting_for_id != ahead:
                    Import.objects.filter(pk=record.pk).update(waiting_for_id=ahead)
                return False
        new_run = Q(status=Import.Status.RUNNING) | Q(run_started_at__isnull=True)
        Import.objects.filter(pk=import_id).update(
            status=Import.Status.RUNNING,
            heartbeat_at=now,
            waiting_for=None,
            run_started_at=Case(When(new_run, then=Value(now)), default=F("run_started_at")),
            run_bytes_from=Case(When(new_run, then=F("bytes_done")), default=F("run_bytes_from")),
        )
    return True


def _segment_turn_lock(segment_id: int) -> None:
    """Hold the segment as ``segment_members_lock`` does, for the turns of its imports; a segment
    deleted meanwhile holds nothing (its imports then fail on their own)."""
    list(Segment.objects.select_for_update(no_key=True).filter(pk=segment_id).values_list("pk", flat=True))


def _turn_ahead(record: Import) -> int | None:
    """The import into ``record``'s segment that must finish before ``record`` runs, or None.

    An import under way holds the turn to its end: running, or queued between two of its tasks
    (handed over: its run started). Otherwise imports go in the order they were created (a restart
    keeps its place), so that a replace uploaded after an add is applied after it.
    """
    if record.status == Import.Status.RUNNING or record.run_started_at is not None:
        return None  # under way: the turn is its own
    others = (
        Import.objects.filter(segment_id=record.segment_id, status__in=[Import.Status.QUEUED, Import.Status.RUNNING])
        .exclude(target=Import.Target.PROFILES)
        .exclude(pk=record.pk)
    )
    under_way = Q(status=Import.Status.RUNNING) | Q(run_started_at__isnull=False)
    ahead = others.filter(under_way).order_by("pk").values_list("pk", flat=True).first()
    if ahead is None:
        ahead = others.filter(pk__lt=record.pk).order_by("pk").values_list("pk", flat=True).first()
    return ahead


def import_process(*, import_id: int, seconds: float | None = None) -> bool:
    """Run (or resume) an import: read the file in batches, write good rows, report bad ones.

    Claims the import first (a queued one, or a running one whose worker stopped sending
    heartbeats), so two workers never run it at once. Each batch commits its rows together with
    the progress counters and the resume position, so a rerun neither repeats nor loses work;
    the same file imported twice changes nothing more (unchanged profiles are not written).
    Any error ends the import as failed (an unexpected one logged too), its error saying what
    landed: whole batches, never part of one; its counters, percentage and error file are those
    of the batches written. Returns True when the time budget ran out and the rest must run in a
    new task.
    """
    seconds = settings.PUSHDESK_IMPORT_TASK_SECONDS if seconds is None else seconds
    started = time.monotonic()
    now = timezone.now()
    if not _claim_import(import_id, now):
        return False
    record = Import.objects.select_related("segment").get(pk=import_id)
    if record.started_at is None:
        record.started_at = now
        Import.objects.filter(pk=record.pk).update(started_at=now)
    try:
        with record.file.open("rb") as stored:
            fh = getattr(stored, "file", stored)
            header = sniff_header(fh, encoding=record.encoding, columns=record.columns)
            plan = plan_columns(header.cells, record.columns)
            fh.seek(0)
            return _import_rows(record, fh, plan, header=header, started=started, seconds=seconds)
    except _ImportStopped as stopped:
        _import_failed(record, stopped.__cause__, line=stopped.line)
        return False
    except Exception as exc:  # before its first batch: the file, its header, the segment
        _import_failed(record, exc, line=0)
        return False


def _error_path(record: Import):
    return Path(settings.MEDIA_ROOT) / "imports" / "errors" / f"import-{record.pk}-errors.csv"


def _import_rows(record: Import, fh, plan, *, header: Header, started: float, seconds: float) -> bool:
    if record.target != Import.Target.PROFILES and record.segment_id is None:
        raise ImportRefused(SEGMENT_GONE)  # deleted before the import began or while it stood still
    batch_rows = settings.PUSHDESK_IMPORT_BATCH_ROWS
    replace = record.target == Import.Target.REPLACE_SEGMENT
    segment_id = record.segment_id if record.target != Import.Target.PROFILES else None
    errors = ErrorFile(_error_path(record), resume_at=record.error_bytes)
    seen: set[int] = set()  # hashes of external ids already read: duplicates are reported
    counters = {
        "done": record.rows_done,
        "imported": record.rows_imported,
        "failed": record.rows_failed,
        "duplicate": record.rows_duplicate,
    }
    tz_names = _timezones()
    reader = RecordReader(fh, encoding=record.encoding, header=header)
    committer = _Committer(record, errors, segment_id=segment_id, replace=replace)
    try:
        position = _skip_done(reader, record.position, plan, seen, timezones=tz_names)
        while not reader.finished:
            # Batches end where they did before a resume: at each multiple of batch_rows rows done.
            rows, lines, unreadable = reader.read(batch_rows - counters["done"] % batch_rows)
            if not rows and not unreadable:
                break
            position += len(rows) + len(unreadable)
            counters["done"] += len(rows) + len(unreadable)
            parsed, failures = parse_rows(rows, lines, plan, timezones=tz_names)
            problems = [(line, "", reason) for line, reason in unreadable] + failures
            counters["failed"] += len(problems)
            hashes = list(map(hash, parsed.external_ids))
            fresh = set(hashes)
            if len(fresh) == len(hashes) and fresh.isdisjoint(seen):
                seen |= fresh
                counters["imported"] += len(hashes)
            else:
                for line, external_id, key in zip(parsed.lines, parsed.external_ids, hashes, strict=True):
                    if key in seen:
                        problems.append((line, external_id, DUPLICATE))
                        counters["duplicate"] += 1
                    else:
                        seen.add(key)
                        counters["imported"] += 1
            batch = Batch.of(parsed)
            if committer.threaded:
                batch.prepare_copy()  # here, so the writer thread holds the GIL as little as possible
            last_line = max(lines[-1] if lines else 0, unreadable[-1][0] if unreadable else 0)
            committer.submit(
                batch,
                problems=problems,
                line=last_line,
                position=position,
                bytes_done=reader.bytes_read,
                **counters,
            )
            if time.monotonic() - started > seconds and not reader.finished:
                committer.close()
                _import_hand_over(record)
                return True
        committer.close()
    except Exception as exc:
        committer.close(raise_error=False)
        raise _ImportStopped(committer.line) from exc
    finally:
        committer.close(raise_error=False)
        errors.close()
    with transaction.atomic():
        removed = 0
        if replace and record.segment_id:
            # Held as a batch holds it, before any member goes: a member change in the admin or
            # another import's batch holding the segment would wait for a member removed here
            # while this waited for the segment, to mark it changed ('deadlock detected').
            segment_members_lock(record.segment_id)
            removed = _replace_removal(record)
        _import_landed(record)
        if removed:
            segment_members_landed(record.segment_id)
        _import_finish(record, status=Import.Status.DONE)
    return False


NOTHING_REMOVED = (
    "No row of the file was imported, so no member of the segment was removed: a replace removes the "
    "members its file does not name only when some of its rows land. Correct the rows that failed (see the "
    "error file) and import it again."
)


def _replace_removal(record: Import) -> int:
    """Remove the members of a replace import's segment that its file does not name, the segment held;
    return how many. A row names its profile whether it landed or failed (``segment_members_named``).
    A file none of whose rows landed removes nothing: it is a bad file, not an empty audience."""
    record.refresh_from_db(fields=["rows_imported"])
    if not record.rows_imported:
        record.members_removed, record.note = 0, NOTHING_REMOVED
        return 0
    gone = SegmentMember.objects.filter(segment_id=record.segment_id).exclude(source_import_id=record.pk)
    members_lock(gone)  # in id order, as a deletion of profiles locks those it removes
    removed = gone.delete()[0]
    record.members_removed = removed
    record.note = f"{removed:,} members the file does not name were removed from the segment."
    if removed == 1:
        record.note = "1 member the file does not name was removed from the segment."
    return removed


# The web server reads the error files the workers write: with workers on other machines, MEDIA_ROOT
# must be shared (README).
ERROR_FILE_MISSING = (
    "The error file is missing from this server's storage: the workers wrote it where the web server "
    "cannot read it (MEDIA_ROOT must be shared by both)."
)
DUPLICATE = "external_id repeated: an earlier row has it; this row applies over it, in file order"


class _ImportStopped(Exception):
    """An error (its ``__cause__``) stopped an import partway; ``line``: where the batches this run wrote end."""

    def __init__(self, line: int):
        super().__init__(line)
        self.line = line


def _skip_done(reader: RecordReader, position: int, plan, seen: set[int], *, timezones: set[str]) -> int:
    """Read past the rows a resumed import already wrote, remembering the ids of its good rows for duplicates."""
    done = 0
    while done < position and not reader.finished:
        rows, lines, unreadable = reader.read(min(position - done, 100_000))
        if not rows and not unreadable:
            break
        done += len(rows) + len(unreadable)
        parsed, _failures = parse_rows(rows, lines, plan, timezones=timezones)
        seen.update(map(hash, parsed.external_ids))
    return done


class _Committer:
    """Writes an import's batches, each in its own transaction with its rows of the error file and
    the progress that accounts for it.

    On PostgreSQL, outside a surrounding transaction, it writes from a second thread (its own
    connection) while the caller parses the next batch: the database and Python then work at
    the same time. Batches are written in order, one at a time; an error stops the import.
    The rows a batch's write refuses (the profile limits) join its failed rows, in the error file
    and the counters the caller keeps.
    """

    def __init__(self, record: Import, errors: ErrorFile, *, segment_id: int | None, replace: bool):
        self.record = record
        self.errors = errors
        self.segment_id = segment_id
        self.replace = replace
        self.error: BaseException | None = None
        self.line = 0  # the line of the last row read by the batches committed here
        # Rows refused on writing this run, which the caller counted as imported / as repeated ids.
        self.refused_imported = 0
        self.refused_duplicate = 0
        self.closed = False
        self.threaded = connection.vendor == "postgresql" and not connection.in_atomic_block
        if self.threaded:
            self.queue: queue.Queue = queue.Queue(maxsize=1)
            self.thread = threading.Thread(target=self._loop, name=f"import-{record.pk}-writer", daemon=True)
            self.thread.start()

    def submit(self, batch: Batch, **progress) -> None:
        if self.error is not None:
            raise self.error
        if self.threaded:
            self.queue.put((batch, progress))
        else:
            self._write(batch, **progress)

    def close(self, *, raise_error: bool = True) -> None:
        if self.threaded and not self.closed:
            self.closed = True
            self.queue.put(None)
            self.thread.join()
        if raise_error and self.error is not None:
            raise self.error

    def _loop(self) -> None:
        pace = write_pacer()
        try:
            while (job := self.queue.get()) is not None:
                if self.error is None:
                    pace()
                    self._write(job[0], **job[1])
        except BaseException as exc:  # handed to the parsing thread, which raises it
            self.error = exc
            while self.queue.get() is not None:  # let the producer finish; nothing more is written
                pass
        finally:
            connection.close()

    def _write(self, batch: Batch, **progress) -> None:
        """Write one batch; a batch its database ended to undo a deadlock or a serialization failure
        (``TRANSIENT``), which it then rolled back whole, is written again, up to ``ATTEMPTS`` times
        in all; then the error stops the import (which says what landed)."""
        for attempt in range(1, ATTEMPTS + 1):
            error_bytes = self.errors.tell()
            refused = (self.refused_imported, self.refused_duplicate)
            try:
                self._write_once(batch, **progress)
                return
            except OperationalError as exc:
                if getattr(exc.__cause__, "sqlstate", None) not in TRANSIENT or attempt == ATTEMPTS:
                    raise
                # What the attempt did outside the database is undone with it.
                self.errors.rewind(error_bytes)
                self.refused_imported, self.refused_duplicate = refused
                log.warning(
                    "Import %s: the batch to line %s was rolled back (%s); written again",
                    self.record.pk,
                    progress["line"],
                    str(exc).split("\n", 1)[0],
                )

    def _write_once(
        self, batch: Batch, *, problems, line, position, bytes_done, done, imported, failed, duplicate
    ) -> None:
        record = self.record
        now = timezone.now()
        with transaction.atomic():
            if connection.vendor == "postgresql":
                # A batch lost to a crash is redone on resume (its position commits with it), so
                # the import need not wait for each commit to reach the disk.
                with connection.cursor() as cursor:
                    cursor.execute("SET LOCAL synchronous_commit = off")
            refused = write_batch(batch, now=now, segment_id=self.segment_id, import_id=record.pk, replace=self.replace)
            if refused:
                problems = self._with_refused(problems, refused)
            if self.replace and problems:
                named = [external_id for _line, raw, _reason in problems if (external_id := named_external_id(raw))]
                if named:
                    segment_members_named(named, segment_id=self.segment_id, import_id=record.pk)
            for row in sorted(problems, key=lambda problem: problem[0]):
                self.errors.add(*row)
            record.position = position
            record.error_bytes = self.errors.tell()
            record.rows_done = done
            record.rows_imported = imported - self.refused_imported
            record.rows_failed = failed + self.refused_imported + self.refused_duplicate
            record.rows_duplicate = duplicate - self.refused_duplicate
            record.bytes_done = min(bytes_done, record.size) if record.size else bytes_done
            record.heartbeat_at = record.progressed_at = now
            record.save(update_fields=[*_PROGRESS_FIELDS, "heartbeat_at", "progressed_at"])
        self.line = line

    def _with_refused(self, problems: list, refused: list) -> list:
        """The batch's failed rows with those its write refused; a refused row that repeats an id
        is reported for its refusal alone."""
        lines = {line for line, _external_id, _reason in refused}
        repeated = {line for line, _external_id, reason in problems if reason == DUPLICATE and line in lines}
        self.refused_duplicate += len(repeated)
        self.refused_imported += len(refused) - len(repeated)
        return [problem for problem in problems if problem[0] not in repeated] + refused


# The SQLSTATEs of a transaction PostgreSQL ends so that others may go on (a deadlock's victim, a
# serialization failure): written again, the batch lands. Tries in all per batch.
TRANSIENT = {"40P01", "40001"}
ATTEMPTS = 3


def _import_hand_over(record: Import) -> None:
    with transaction.atomic():
        Import.objects.filter(pk=record.pk, status=Import.Status.RUNNING).update(status=Import.Status.QUEUED)
        transaction.on_commit(lambda: async_task("audiences.tasks.import_run", record.pk))


def _import_finish(record: Import, *, status: str, error: str = "") -> None:
    """End the import, done or failed, and queue again the imports of its segment waiting for it.

    The segment is held first (as a claim holds it), so an import deciding to wait for this one
    either sees it ended or is found waiting here.
    """
    with transaction.atomic():
        if record.segment_id:
            _segment_turn_lock(record.segment_id)
        if record.segment_id and record.rows_imported:
            segment_members_landed(record.segment_id)  # its kept count was of the members before
        record.status = status
        record.error = error
        record.finished_at = timezone.now()
        if status == Import.Status.DONE:
            record.bytes_done = record.size
        record.save(
            update_fields=["status", "error", "finished_at", "bytes_done", "error_file", "members_removed", "note"]
        )
        waiting = Import.objects.filter(waiting_for=record.pk, status=Import.Status.QUEUED).order_by("pk")
        waiting_ids = list(waiting.values_list("pk", flat=True))
        # Their turn has come: from now, what they wait for is a worker.
        Import.objects.filter(pk__in=waiting_ids).update(progressed_at=record.finished_at)
        for waiting_id in waiting_ids:
            transaction.on_commit(partial(async_task, "audiences.tasks.import_run", waiting_id))
        audit(
            actor=None,
            action="import_finished" if status == Import.Status.DONE else "import_failed",
            obj=record,
            summary={
                "rows": record.rows_done,
                "imported": record.rows_imported,
                "failed": record.rows_failed,
                "duplicate": record.rows_duplicate,
                "members_removed": record.members_removed,
                "error": error[:200],
            },
        )


_PROGRESS_FIELDS = [
    "position",
    "error_bytes",
    "rows_done",
    "rows_imported",
    "rows_failed",
    "rows_duplicate",
    "bytes_done",
]


def _import_landed(record: Import) -> None:
    """Make the record and its error file say what the committed batches wrote, however the import ends.

    The progress is read again (a batch may have failed after the run counted it), the error file
    is cut back to the rows of those batches, as a resume would (``ErrorFile``), and it is offered
    for download when some of them failed or repeated an id.
    """
    record.refresh_from_db(fields=_PROGRESS_FIELDS)
    path = _error_path(record)
    ErrorFile.cut_back(path, record.error_bytes if record.rows_failed or record.rows_duplicate else 0)
    if record.rows_failed or record.rows_duplicate:
        record.error_file.name = str(path.relative_to(settings.MEDIA_ROOT))


def _import_failed(record: Import, exc: BaseException, *, line: int) -> None:
    """End an import as failed by ``exc``, saying why and what landed.

    An unexpected error is logged and may be restarted past; a refusal (ImportRefused) or a
    missing file says why. What landed is what the committed batches recorded (``_import_landed``),
    ``line`` the last line of those this run wrote (0: not known).
    """
    if not connection.in_atomic_block:
        connection.close_if_unusable_or_obsolete()  # a lost connection: the next query opens another
    restart = ""
    if isinstance(exc, ImportRefused):
        reason = " ".join(exc.messages)
    elif isinstance(exc, FileNotFoundError):
        reason = "The uploaded file is missing from storage."
    else:
        log.error("Import %s stopped by an unexpected error", record.pk, exc_info=exc)
        # Its first line: a database's error goes on with lines of its own context (CONTEXT:, HINT:).
        cause = f"{type(exc).__name__}: {exc}".strip().split("\n", 1)[0].strip()
        if len(cause) > 300:
            cause = cause[:297] + "..."
        reason = f"Stopped by an unexpected error ({cause})."
        restart = (
            " Restart the import to go on from there, or import the file again: the rows already written "
            "change nothing."
        )
    _import_end_failed(record, reason=reason, line=line, restart=restart)


def _import_end_failed(record: Import, *, reason: str, line: int, restart: str) -> None:
    """End the import as failed for ``reason``, saying what landed and, with ``restart``, how to go on."""
    _import_landed(record)
    if record.rows_done:
        where = f" (to line {line:,})" if line else ""
        landed = (
            f" The file's first {record.rows_done:,} rows{where} were read and their good rows written, "
            "in whole batches; nothing after them was written."
        )
    else:
        landed = " No row was written." if restart else ""
    _import_finish(record, status=Import.Status.FAILED, error=f"{reason}{landed}{restart}")


def _stall_cut(now: dt.datetime) -> dt.datetime:
    return now - dt.timedelta(seconds=settings.PUSHDESK_IMPORT_STALL_SECONDS)


def imports_stalled(*, now: dt.datetime | None = None) -> QuerySet[Import]:
    """The imports under way whose worker stopped: running, or handed over between two tasks, with
    no batch written (no heartbeat) for longer than ``PUSHDESK_IMPORT_STALL_SECONDS``, which is
    longer than the queue lets a task run."""
    under_way = Q(status=Import.Status.RUNNING) | Q(status=Import.Status.QUEUED, run_started_at__isnull=False)
    return Import.objects.filter(under_way, heartbeat_at__lt=_stall_cut(now or timezone.now()))


def import_stalled_minutes(record: Import, *, now: dt.datetime | None = None) -> int | None:
    """Minutes since a stalled import (``imports_stalled``) last wrote a batch; None when it is not stalled."""
    now = now or timezone.now()
    under_way = record.status == Import.Status.RUNNING or (
        record.status == Import.Status.QUEUED and record.run_started_at is not None
    )
    if not under_way or record.heartbeat_at is None or record.heartbeat_at >= _stall_cut(now):
        return None
    return int((now - record.heartbeat_at).total_seconds() // 60)


def _not_taken_up_cut(now: dt.datetime) -> dt.datetime:
    return now - dt.timedelta(seconds=2 * settings.PUSHDESK_IMPORT_STALL_SECONDS)


# The statuses of an import that has ended: a queued import waiting for one (``waiting_for``) has had
# its turn come, and waits for a worker until one claims it and clears ``waiting_for``.
IMPORT_ENDED = (Import.Status.DONE, Import.Status.FAILED)

# A queued import whose turn in its segment has come: what it waits for is a worker, since it was
# queued or last wrote a batch (``Import.progressed_at``). One waiting for its segment's turn behind
# an import not yet ended waits for that import, which is reported itself when it stalls.
WAITING_FOR_A_WORKER = Q(status=Import.Status.QUEUED) & (
    Q(waiting_for__isnull=True) | Q(waiting_for__status__in=IMPORT_ENDED)
)


def imports_not_taken_up(*, now: dt.datetime | None = None) -> QuerySet[Import]:
    """The imports waiting for a worker (``WAITING_FOR_A_WORKER``) that no worker has taken up for
    more than twice ``PUSHDESK_IMPORT_STALL_SECONDS`` since they were queued or last wrote a batch
    (``Import.progressed_at``): no worker runs, or none reads their queue. The imports watchdog
    queuing one again does not hide it, as it does not move it.
    """
    return Import.objects.filter(WAITING_FOR_A_WORKER, progressed_at__lt=_not_taken_up_cut(now or timezone.now()))


def import_not_taken_up_since(record: Import, *, now: dt.datetime | None = None) -> dt.datetime | None:
    """Since when the import has waited for a worker, when it is one no worker takes up
    (``imports_not_taken_up``); None otherwise."""
    if record.status != Import.Status.QUEUED or record.progressed_at >= _not_taken_up_cut(now or timezone.now()):
        return None
    if record.waiting_for_id is not None and not imports_not_taken_up(now=now).filter(pk=record.pk).exists():
        return None  # its segment's turn is another's
    return record.progressed_at


def imports_watch(*, now: dt.datetime | None = None) -> dict[str, list[int]]:
    """Take up again, or end, each import whose worker stopped (``imports_stalled``), so that the
    imports of its segment waiting for their turn go on (the imports watchdog, every minute).

    One whose current run wrote a batch is queued again as a new run, keeping its segment's turn:
    it resumes after its last committed batch. One handed over between two tasks whose second
    never came is queued again too. One whose run wrote nothing before its worker stopped is
    queued again once (``stalled_runs`` counts it), as a deploy or an out-of-memory kill of
    another process stops a worker whatever its file; when the next run also writes nothing, it
    ends failed, saying why, since its file may be what stops the worker; its end queues the
    imports waiting for it. Each is read again under its segment's lock and its own, as a claim
    takes them, so a worker taking it up meanwhile wins. Queuing one again does not move it
    (``progressed_at``), so one that no worker then takes up is still seen (``imports_not_taken_up``).
    Returns the ids resumed and failed.
    """
    now = now or timezone.now()
    report: dict[str, list[int]] = {"resumed": [], "failed": []}
    for import_id, segment_id in imports_stalled(now=now).order_by("pk").values_list("pk", "segment_id"):
        with transaction.atomic():
            if segment_id is not None:
                _segment_turn_lock(segment_id)
            record = imports_stalled(now=now).select_for_update().filter(pk=import_id).first()
            if record is None:
                continue
            minutes = import_stalled_minutes(record, now=now)
            if record.status == Import.Status.QUEUED:
                stalled_runs = record.stalled_runs  # its task was lost before a worker took it
            elif record.bytes_done > record.run_bytes_from:
                stalled_runs = 0
            else:
                stalled_runs = record.stalled_runs + 1
            if stalled_runs < 2:
                Import.objects.filter(pk=record.pk).update(
                    status=Import.Status.QUEUED,
                    heartbeat_at=now,
                    run_started_at=now,
                    run_bytes_from=F("bytes_done"),
                    stalled_runs=stalled_runs,
                )
                audit(
                    actor=None,
                    action="import_resumed",
                    obj=record,
                    summary={"stalled_minutes": minutes, "stalled_runs": stalled_runs},
                )
                transaction.on_commit(partial(async_task, "audiences.tasks.import_run", record.pk))
                report["resumed"].append(record.pk)
                continue
            Import.objects.filter(pk=record.pk).update(stalled_runs=stalled_runs)
            record.stalled_runs = stalled_runs
            reason = (
                f"Its worker stopped: no batch written for {minutes} min (PUSHDESK_IMPORT_STALL_SECONDS is "
                f"{settings.PUSHDESK_IMPORT_STALL_SECONDS} s), and its worker stopped before writing a batch in "
                "two runs in a row, so it was not taken up again: its file may be what stops the worker."
            )
            restart = (
                " Restart the import to go on from there, or import the file again: the rows already written "
                "change nothing."
            )
            _import_end_failed(record, reason=reason, line=0, restart=restart)
            report["failed"].append(record.pk)
    return report


def import_restart(*, import_id: int, by: User) -> Import:
    """Queue again an import whose worker stopped (no heartbeat for longer than a task may run), or
    one that failed.

    It resumes where its last committed batch ended, and the worker that takes it up starts a new
    run: its time left counts from then, not from the import's first start. ``by`` must see the
    import and, when it feeds a segment, be allowed to change that segment now, as to start it
    (access to a segment may have been taken back since). Raises ValidationError when the import is done, still alive
    or its segment is gone, PermissionDenied when ``by`` may not import, Http404 when the import
    or its segment is out of their access.
    """
    _ensure_perm(by, "audiences.add_import", "Your role may not import profiles.")
    stale = _stall_cut(timezone.now())
    with transaction.atomic():
        if not imports_visible_to(by).filter(pk=import_id).exists():
            raise Http404(f"No import {import_id}.")
        record = Import.objects.select_for_update().get(pk=import_id)
        alive = record.status == Import.Status.RUNNING and record.heartbeat_at and record.heartbeat_at >= stale
        if record.status == Import.Status.DONE or alive:
            raise ValidationError("Only an import that failed or whose worker stopped can be restarted.")
        if record.target != Import.Target.PROFILES:
            if record.segment_id is None:
                raise ValidationError(f"{SEGMENT_GONE} Import the file again, into another segment.")
            segment_for(by, record.segment_id, perm="audiences.change_segment")
        record.status = Import.Status.QUEUED
        record.error = ""
        record.finished_at = None
        record.run_started_at = None  # the worker that takes it up starts a new run
        record.stalled_runs = 0  # restarted by hand: the watchdog gives it one more run again
        record.progressed_at = timezone.now()  # queued now: its wait for a worker starts again
        record.save(update_fields=["status", "error", "finished_at", "run_started_at", "stalled_runs", "progressed_at"])
        audit(actor=by, action="import_restarted", obj=record, summary={"segment": record.segment_id})
        transaction.on_commit(lambda: async_task("audiences.tasks.import_run", record.pk))
    return record
