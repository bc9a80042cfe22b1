"""Profiles, their events, segments (rules / imported / static) and CSV imports.

Profiles and events are the big tables: bigint keys, indexes for the segment queries
(a GIN index on ``attributes`` on PostgreSQL, events by (profile, name, occurred_at)).
"""

import datetime as dt

from django.conf import settings
from django.db import models
from django.utils import timezone as dj_timezone
from guardian.models import GroupObjectPermissionBase, UserObjectPermissionBase

from accounts.models import GrantStamp, IdempotentRequest


class Profile(models.Model):
    """One person, across every app of the installation, known by the integrator's ``external_id``."""

    id = models.BigAutoField(primary_key=True)
    external_id = models.CharField(max_length=255, unique=True, help_text="The integrator's own user id.")
    attributes = models.JSONField(default=dict, blank=True, help_text="The customer's own fields.")
    locale = models.CharField(max_length=35, blank=True, help_text="e.g. fr-FR")
    timezone = models.CharField(max_length=64, blank=True, help_text="IANA name, e.g. Europe/Paris")
    created_at = models.DateTimeField(default=dj_timezone.now, editable=False)
    updated_at = models.DateTimeField(default=dj_timezone.now, editable=False)
    last_seen_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        # No index names last_seen_at: events move it on every call, and an update that changes
        # no indexed column is a HOT update (the row alone, not an entry in each of its indexes,
        # one per attribute in the GIN index). A rule on last_seen_at scans the profiles, as most
        # rules do; an index on it saved nothing measurable even for a window of a few percent.

    def __str__(self) -> str:
        return self.external_id


class Event(models.Model):
    """Something a profile did, sent by the integrator (``purchase``, ``app_open``...).

    ``profile`` has no database constraint: the check cost PostgreSQL a lookup per event (about a
    third of its time in a call of 1,000). Instead the events' writer (``events_ingest``) holds its
    profiles locked ``FOR KEY SHARE`` until it commits, and a deletion (``profiles_delete``) locks
    them ``FOR UPDATE`` first, so it waits for those events and removes them too.

    No index serves "every event, newest first": each event paid an entry in it, about a sixth of
    PostgreSQL's time in a call of 1,000, for the admin's list alone, which reads the newest of each
    name through the (name, occurred_at) index instead (``audiences.selectors.events_newest_ids``).
    """

    id = models.BigAutoField(primary_key=True)
    profile = models.ForeignKey(
        Profile, on_delete=models.CASCADE, related_name="events", db_index=False, db_constraint=False
    )
    name = models.CharField(max_length=100)
    properties = models.JSONField(default=dict, blank=True)
    occurred_at = models.DateTimeField()
    received_at = models.DateTimeField(default=dj_timezone.now, editable=False)

    class Meta:
        ordering = ["-occurred_at", "-id"]
        indexes = [
            models.Index(fields=["profile", "name", "occurred_at"], name="event_profile_name_time_idx"),
            models.Index(fields=["name", "occurred_at"], name="event_name_time_idx"),
        ]

    def __str__(self) -> str:
        # An event has no zone of its own: in UTC, named, as the admin shows its other times.
        return f"{self.name} @ {self.occurred_at.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC"


class EventReplay(models.Model):
    """Stored events whose listener failed (the journeys' entries and exits they cause): the
    listener runs again for them later, until it succeeds (``events_replay_due``, the beat's).

    A listener that fails no longer fails the events: a listener that always failed, on some
    event or after a bad deployment, would have refused every call that held one."""

    listener = models.CharField(max_length=200, help_text="The listener that failed (module.name).")
    event_ids = models.JSONField(help_text="The call's events, in its order.")
    error = models.TextField(blank=True, help_text="What the last attempt raised.")
    attempts = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(default=dj_timezone.now, editable=False)
    next_attempt_at = models.DateTimeField()

    class Meta:
        ordering = ["next_attempt_at", "id"]
        indexes = [models.Index(fields=["next_attempt_at"], name="event_replay_due_idx")]

    def __str__(self) -> str:
        return f"{len(self.event_ids)} events for {self.listener.rsplit('.', 1)[-1]}"


class EventBulkRequest(IdempotentRequest):
    """An ``Idempotency-Key`` seen on ``POST /api/v1/events/bulk/``: the same key and body replay
    the answer, stored in the events' transaction (a retry stores nothing and enters no journey)."""

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "idempotency_key"], name="events_idempotency_once_per_user")
        ]


class Segment(models.Model):
    """An audience: a rule tree evaluated live, or a kept list of profiles (imported or static)."""

    has_object_access = True

    class Kind(models.TextChoices):
        RULES = "rules", "rules (evaluated live)"
        IMPORTED = "imported", "imported (from a CSV file)"
        STATIC = "static", "static (a hand-kept list)"

    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.RULES)
    rules = models.JSONField(null=True, blank=True, help_text="The rule tree (rules segments only).")
    last_count = models.BigIntegerField(null=True, blank=True, editable=False)
    last_counted_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_reach = models.JSONField(
        null=True,
        blank=True,
        editable=False,
        help_text="At the last count, per app: [{app, name, profiles, reachable, ios, android, opted_in}].",
    )
    # Moves whenever the kept figures are forgotten: a change of the rules, of a kept list's members,
    # or of a segment the rules use. A count keeps its figures only while it has not moved since the
    # count read the segment (``segment_definition_read``), so that none is kept for rules it no longer has.
    definition_version = models.PositiveBigIntegerField(default=0, editable=False)
    created_at = models.DateTimeField(default=dj_timezone.now, editable=False)
    updated_at = models.DateTimeField(default=dj_timezone.now, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+", editable=False
    )
    references = models.ManyToManyField(
        "self",
        through="SegmentReference",
        symmetrical=False,
        related_name="referenced_by",
        blank=True,
        editable=False,
    )

    class Meta:
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return self.name

    @property
    def has_members_table(self) -> bool:
        return self.kind in (self.Kind.IMPORTED, self.Kind.STATIC)

    def definition(self) -> dict[str, dict]:
        """What decides who is in this segment, as saved: by segment id, its kind and rules, and
        for a kept list its membership stamp (``members_stamp``); the segments its rules use are
        included, recursively. A kept list's entry also says how many members it holds now
        (``count``, for the review: not part of the stamp).

        An approval covers this (``definition_fingerprint``): editing any of it changes who an
        approved send reaches.
        """
        found: dict[str, dict] = {}
        pending = {self.pk}
        while pending:
            segments = {s.pk: s for s in Segment.objects.filter(pk__in=pending)}
            used: set[int] = set()
            for pk in sorted(pending):
                segment = segments.get(pk)
                if segment is None:
                    found[str(pk)] = {"missing": True}
                    continue
                entry = {"name": segment.name, "kind": segment.kind, "rules": segment.rules}
                if segment.has_members_table:
                    entry["count"], entry["members"] = segment.members_stamp()
                found[str(pk)] = entry
                used |= segments_used(segment.rules)
            pending = {pk for pk in used if str(pk) not in found}
        return found

    # One statement, so that one snapshot reads the members and the erasures: read apart, an erasure
    # committing between the two reads would count its members twice or not at all, and refuse a send.
    MEMBERS_STAMP_SQL = """
        SELECT sum(live), sum(counted), max(newest) FROM (
            SELECT count(*) AS live, count(*) AS counted, max(id) AS newest
            FROM audiences_segmentmember WHERE segment_id = %(segment)s
            UNION ALL
            SELECT 0, sum(members), max(newest) FROM audiences_segmenterasure WHERE segment_id = %(segment)s
        ) stamp
    """

    def members_stamp(self) -> tuple[int, list]:
        """A kept list's members now, and its membership stamp: [member count, newest member id],
        the members its profiles' erasures removed counted back (``SegmentErasure``).

        Every deliberate change of the members moves the stamp (an import's batch, a replace's
        removal, an add or removal in the admin or the API): an add gives a newer id than any
        before, a removal lowers the count. The deletion of a profile (``profiles_delete``) moves
        neither: it chooses no one to target, and the erased person gets nothing from a list they
        left, so approvals of what reads the list stand. With no erasure it is the stamp approvals
        held before erasures were told apart (the count and newest id of the members), so those
        stay valid while their list is unchanged.
        """
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute(self.MEMBERS_STAMP_SQL, {"segment": self.pk})
            live, counted, newest = cursor.fetchone()
        return int(live or 0), [int(counted or 0), None if newest is None else int(newest)]

    def definition_fingerprint(self) -> str:
        """SHA-256 of ``definition()``, names and a kept list's present count left out (renaming a
        segment changes nobody's membership; the stamp says whether its members were changed)."""
        import hashlib
        import json

        who = {
            pk: {k: v for k, v in entry.items() if k not in ("name", "count")}
            for pk, entry in self.definition().items()
        }
        blob = json.dumps(who, sort_keys=True, default=str, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


def segments_reached(roots) -> dict[int, set[int]]:
    """Each of the ``roots`` segment ids with the ids of the segments its rules use, at any depth
    (through ``SegmentReference``): one query, whatever the segments (none without roots)."""
    from django.db import connection

    roots = sorted({int(pk) for pk in roots})
    if not roots:
        return {}
    marks = ", ".join(["%s"] * len(roots))
    with connection.cursor() as cursor:
        cursor.execute(
            f"WITH RECURSIVE reached(root, id) AS (SELECT id, id FROM {Segment._meta.db_table} "  # noqa: S608 (table names; values are bound)
            f"WHERE id IN ({marks}) UNION SELECT reached.root, r.target_id FROM {SegmentReference._meta.db_table} r "
            "JOIN reached ON r.source_id = reached.id) SELECT root, id FROM reached",
            roots,
        )
        found: dict[int, set[int]] = {root: {root} for root in roots}
        for root, segment_id in cursor.fetchall():
            found[root].add(segment_id)
    return found


def segments_hold(ids) -> None:
    """Hold these segments and those their rules use now, at any depth, ``FOR SHARE`` until the
    transaction ends (PostgreSQL; SQLite's write lock serialises writers already). Call it before
    checking that they are defined as approved, in the transaction whose statements then read them:
    a change of one (its rules, a kept list's members, an import into it), which locks its row
    first, waits for those statements instead of committing between the check and them and
    reaching people no approver read. Readers of the same segments share the lock, taken in id order."""
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    ids = {int(pk) for pk in ids}
    held = set(ids)
    for reached in segments_reached(ids).values():
        held |= reached
    if not held:
        return
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id FROM {Segment._meta.db_table} WHERE id = ANY(%s) ORDER BY id FOR SHARE",  # noqa: S608 (a table name; values are bound)
            [sorted(held)],
        )


def segments_used(rules) -> set[int]:
    """The ids of the segments a rule tree uses (membership conditions, at any depth)."""
    found: set[int] = set()
    stack = [rules]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            target = node.get("segment")
            if isinstance(target, int) and not isinstance(target, bool):
                found.add(target)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def segments_closure(segment_ids, *fields: str) -> dict[int, tuple]:
    """These segments and those their rules use, at any depth (those that exist): by id, the values
    of ``fields`` and their rules last. A query per level of nesting."""
    found: dict[int, tuple] = {}
    asked = pending = set(segment_ids)
    while pending:
        used: set[int] = set()
        for pk, *values in Segment.objects.filter(pk__in=sorted(pending)).values_list("pk", *fields, "rules"):
            found[pk] = tuple(values)
            used |= segments_used(values[-1])
        pending = used - asked
        asked = asked | pending
    return found


def segments_named_by(segment_ids) -> tuple[set[int], set[int]]:
    """The segments the rules of these segments use, at any depth (themselves included), and the
    apps their reachability conditions name: what their definitions show. A query per level."""
    from audiences.rules.schema import app_references

    found = segments_closure(segment_ids)
    apps = set().union(*(app_references(rules) for (rules,) in found.values()))
    return set(segment_ids) | set(found), apps


class SegmentUserObjectPermission(UserObjectPermissionBase, GrantStamp):
    content_object = models.ForeignKey(Segment, on_delete=models.CASCADE)


class SegmentGroupObjectPermission(GroupObjectPermissionBase, GrantStamp):
    content_object = models.ForeignKey(Segment, on_delete=models.CASCADE)


class SegmentReference(models.Model):
    """Segment ``source``'s rules use membership of ``target``: ``target`` cannot be deleted meanwhile."""

    source = models.ForeignKey(Segment, on_delete=models.CASCADE, related_name="+")
    target = models.ForeignKey(Segment, on_delete=models.PROTECT, related_name="+")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["source", "target"], name="segment_reference_unique")]

    def __str__(self) -> str:
        return f"{self.source_id} uses {self.target_id}"


class SegmentMember(models.Model):
    """A profile in an imported or static segment."""

    id = models.BigAutoField(primary_key=True)
    # No database constraint on the segment: checked per row, it cost imports a query per member.
    # Writers lock the segment instead (``segment_members_change``, imports: once per batch) and
    # ``segment_delete`` locks it before removing its members.
    segment = models.ForeignKey(
        Segment, on_delete=models.CASCADE, related_name="members", db_index=False, db_constraint=False
    )
    # No database constraint on the profile either: its check cost imports a locking query per
    # member. A writer holds each member's profile locked instead (an import's upsert writes it or
    # locks it ``FOR KEY SHARE``, as ``segment_members_change`` does), and ``profiles_delete`` locks
    # profiles ``FOR UPDATE`` before removing their members.
    profile = models.ForeignKey(Profile, on_delete=models.CASCADE, related_name="memberships", db_constraint=False)
    added_at = models.DateTimeField(default=dj_timezone.now, editable=False)
    # The import that last listed this member; "replace" imports drop members it did not list.
    source_import = models.ForeignKey(
        "Import",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        db_constraint=False,
        db_index=False,
    )

    class Meta:
        constraints = [models.UniqueConstraint(fields=["segment", "profile"], name="segment_member_unique")]

    def __str__(self) -> str:
        return f"{self.profile_id} in {self.segment_id}"


class SegmentErasure(models.Model):
    """Members a kept list lost when their profiles were deleted (``profiles_delete``): one row per
    segment and deletion, how many and the newest of their member ids. Nothing in it names a profile.

    The list's membership stamp counts them back (``Segment.members_stamp``): deleting a person
    leaves the approvals of what reads the list standing, as no one chose whom to target."""

    id = models.BigAutoField(primary_key=True)
    # No database constraint on the segment, as on its members: its check would take a share lock on
    # the segment while the deletion holds its profiles, the opposite order to the writers of members
    # (the segment, then the profiles), and each would wait for the other. ``segment_delete`` deletes
    # a segment through the ORM, which removes these with it, after locking its members: an erasure
    # still removing some of them has committed its record by then.
    segment = models.ForeignKey(Segment, on_delete=models.CASCADE, related_name="erasures", db_constraint=False)
    members = models.BigIntegerField(help_text="How many members the deletion removed.")
    newest = models.BigIntegerField(help_text="The largest member id among them.")
    erased_at = models.DateTimeField(default=dj_timezone.now, editable=False)

    class Meta:
        # As a segment's delete confirmation counts them ("Erasure records: 2"). Bookkeeping only: no
        # admin page lists or edits them, and a segment's deletion removes them with it.
        verbose_name = "erasure record"
        verbose_name_plural = "erasure records"

    def __str__(self) -> str:
        return f"{self.members} erased from {self.segment_id}"


class Import(models.Model):
    """A CSV upload of profiles, run by a worker, optionally feeding a segment."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    class Target(models.TextChoices):
        PROFILES = "profiles", "profiles only"
        NEW_SEGMENT = "new_segment", "a new imported segment"
        ADD_TO_SEGMENT = "add_to_segment", "add to a static segment"
        REPLACE_SEGMENT = "replace_segment", "replace a static segment's members"

    class Encoding(models.TextChoices):
        UTF8 = "utf-8", "UTF-8 (with or without BOM)"
        LATIN1 = "latin-1", "Latin-1 (ISO-8859-1)"

    class Separator(models.TextChoices):
        COMMA = "comma", "comma (,)"
        SEMICOLON = "semicolon", "semicolon (;)"
        TAB = "tab", "tab"

    id = models.BigAutoField(primary_key=True)
    file = models.FileField(upload_to="imports/%Y/%m/", max_length=300)
    original_name = models.CharField(max_length=255, blank=True)
    size = models.BigIntegerField(default=0)
    encoding = models.CharField(max_length=10, choices=Encoding.choices, default=Encoding.UTF8)
    separator = models.CharField(
        max_length=10,
        choices=Separator.choices,
        default=Separator.COMMA,
        editable=False,
        help_text="What separates the file's columns, found in its header line (or its 'sep=' line).",
    )
    columns = models.JSONField(
        default=dict, blank=True, help_text="Per CSV column: {'to': attribute name, 'type': string|number|...}."
    )
    target = models.CharField(max_length=20, choices=Target.choices, default=Target.PROFILES)
    segment = models.ForeignKey(Segment, on_delete=models.SET_NULL, null=True, blank=True, related_name="imports")
    segment_name = models.CharField(max_length=200, blank=True, help_text="Name of the new segment.")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    error = models.TextField(
        blank=True, help_text="Why the file was refused, or why the import stopped (and how much of it landed)."
    )
    rows_done = models.BigIntegerField(default=0, help_text="Rows read so far (good, failed and duplicate).")
    rows_imported = models.BigIntegerField(default=0)
    rows_failed = models.BigIntegerField(default=0)
    rows_duplicate = models.BigIntegerField(default=0)
    bytes_done = models.BigIntegerField(default=0)
    # Where a resumed run picks up: CSV records consumed, and the error file's length, both
    # saved in the same transaction as the rows they account for.
    position = models.BigIntegerField(default=0, editable=False)
    error_bytes = models.BigIntegerField(default=0, editable=False)
    error_file = models.FileField(upload_to="imports/errors/%Y/%m/", max_length=300, blank=True)
    # A replace's end: how many members the file did not name were removed (None: not a replace, or
    # not ended yet), and what the import says of it (none removed when no row of the file landed).
    members_removed = models.BigIntegerField(
        null=True, blank=True, help_text="Members of the segment the file did not name, removed at its end."
    )
    note = models.TextField(blank=True, help_text="What the import did to its segment beyond its rows.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+", editable=False
    )
    # The API key that uploaded it (empty: uploaded in the admin). A key without the read scope,
    # which may be the public one an app ships, reads the imports it uploaded and no other.
    created_by_key = models.ForeignKey(
        "accounts.ApiKey",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        editable=False,
        help_text="The API key that uploaded the file (empty: uploaded in the admin).",
    )
    created_at = models.DateTimeField(default=dj_timezone.now, editable=False)
    started_at = models.DateTimeField(null=True, blank=True)
    # The current run: when a worker took the import up again after it failed or stalled (or
    # first took it), and the bytes done then. Empty while a restarted import waits for a worker.
    # A run goes on across the tasks an import hands over between.
    run_started_at = models.DateTimeField(
        "current run started at",
        null=True,
        blank=True,
        help_text="When a worker took up the import this time (its first start, or after it failed or stalled): "
        "the time left is estimated from this run's pace.",
    )
    run_bytes_from = models.BigIntegerField(default=0, editable=False)
    # Runs in a row whose worker stopped before they wrote a batch (a deploy, an out-of-memory kill):
    # the imports watchdog queues the import again after the first, and ends it failed after the
    # second, as its file may be what stops the worker. A run that writes a batch, or a restart, clears it.
    stalled_runs = models.PositiveSmallIntegerField(
        default=0,
        editable=False,
        help_text="Runs in a row whose worker stopped before they wrote a batch: a second one ends the import failed.",
    )
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # When the import last moved: queued (its upload, a restart, its turn in its segment coming) or a
    # batch written. A worker taking it up without writing a batch, or the imports watchdog queuing it
    # again, does not move it: a queued import still for twice PUSHDESK_IMPORT_STALL_SECONDS since
    # then is one no worker takes up (``imports_not_taken_up``).
    progressed_at = models.DateTimeField(
        "last moved at",
        default=dj_timezone.now,
        editable=False,
        help_text="When the import was queued or last wrote a batch; queuing it again after a stall keeps it.",
    )
    finished_at = models.DateTimeField(null=True, blank=True)
    # Imports into one segment take turns: a queued one whose turn has not come names the import it
    # waits for, whose end wakes it (``audiences.services.imports``).
    waiting_for = models.ForeignKey(
        "self",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        editable=False,
        help_text="The import into the same segment that this queued one waits for, to run after it.",
    )

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"Import #{self.pk} ({self.original_name or 'file'})"

    @property
    def percent(self) -> float:
        if self.status == self.Status.DONE:
            return 100.0
        if not self.size:
            return 0.0
        return round(min(100.0, 100.0 * self.bytes_done / self.size), 1)

    @property
    def seconds_left(self) -> float | None:
        """Estimated from the current run's pace: the bytes it wrote over the time it has run.

        None until that run has written a batch. The time before it (a failure or a stall and
        the wait for a restart) is left out: counted, it made the estimate days long.
        """
        if self.status != self.Status.RUNNING or not self.run_started_at or not self.size:
            return None
        written = self.bytes_done - self.run_bytes_from
        if written <= 0:
            return None
        elapsed = max(0.0, (dj_timezone.now() - self.run_started_at).total_seconds())
        remaining = max(0, self.size - self.bytes_done)
        return round(elapsed * remaining / written, 1)
