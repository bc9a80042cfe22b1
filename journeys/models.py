"""Journeys: multi-step flows per profile (waits, conditions, A/B splits, pushes, exits).

A ``Journey`` is the object people own, grant and approve; what it *does* lives in its
``JourneyVersion``s: the entry, the exit criteria, the re-entry policy and the step graph. A live
version is immutable: editing a live journey edits a new draft version, which replaces the
live one when approved. Profiles already inside finish on the version they entered.
Every state change is a service in ``journeys.services.lifecycle`` and ``journeys.services.entries``;
the engine is ``journeys.services.engine``.
"""

import hashlib
import json

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone
from guardian.models import GroupObjectPermissionBase, UserObjectPermissionBase

from accounts.models import GrantStamp
from delivery.models import ConversionGoal


class Journey(ConversionGoal):
    has_object_access = True
    access_scope_field = "app"

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        IN_REVIEW = "in_review", "In review"
        LIVE = "live", "Live"
        PAUSED = "paused", "Paused"
        STOPPED = "stopped", "Stopped"
        CLOSED = "closed", "Closed"
        ARCHIVED = "archived", "Archived"

    # Still to send, or sending: what a retention of the events it counts would still change.
    STILL_TO_SEND = (Status.DRAFT, Status.IN_REVIEW, Status.LIVE, Status.PAUSED)
    # On the air: a live journey, or a paused one that resumes on the same approved version.
    ON_AIR = (Status.LIVE, Status.PAUSED)

    name = models.CharField(max_length=200)
    app = models.ForeignKey("delivery.App", on_delete=models.PROTECT, related_name="journeys")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.DRAFT, db_index=True)
    status_changed_at = models.DateTimeField(default=timezone.now)
    paused_at = models.DateTimeField(
        null=True, blank=True, editable=False, help_text="When it was paused (while it is paused)."
    )
    live_version = models.ForeignKey(
        "JourneyVersion", on_delete=models.SET_NULL, null=True, blank=True, related_name="+", editable=False
    )
    next_entry_at = models.DateTimeField(
        null=True, blank=True, db_index=True, editable=False, help_text="The next segment entry run (segment entry)."
    )
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    last_version_number = models.PositiveIntegerField(
        default=1,
        editable=False,
        help_text="The highest version number given, a discarded draft's included: the next version's is after it.",
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["-updated_at", "-id"]
        permissions = [
            ("submit_journey", "Can submit a journey for review"),
            ("approve_journey", "Can approve and publish a journey"),
            ("stop_journey", "Can stop a journey"),
            ("pause_journey", "Can pause and resume a journey"),
            ("archive_journey", "Can archive a journey"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_live(self) -> bool:
        return self.status == self.Status.LIVE

    def send_context(self, *, version: "JourneyVersion", step: str) -> dict:
        """What every push of a push step gives its content as ``context``: its sends (a batch or a
        stream, ``journeys.services.engine``) and the phones of its review alike. An approved version
        gives the name it was approved with (a rename is no new version, and does not reword its
        pushes); one not approved yet, or approved before the name was kept, the journey's own."""
        name = version.approved_name or self.name
        return {"journey": {"id": self.pk, "name": name, "version": version.number, "step": step}}

    def approved_name(self) -> str | None:
        """The name the pushes of the version that went live last give their content (``send_context``):
        the one it was approved with, which a rename making no new version does not change. None
        before any approval. No query when the journey was read with its ``live_version``."""
        return (self.live_version.approved_name or self.name) if self.live_version_id else None

    # The audit actions that change what an approval covers: whoever did one since the journey's
    # last approval may not decide its request, as its requester may not (``approver_standing``).
    APPROVAL_AUTHORING_ACTIONS = ("journey_created", "journey_renamed", "journey_version_edited")
    # An authoring action that a later one throws away: a discarded draft's edits are gone, and the
    # journey is what it was when last approved (a rename stays: the name is the journey's own).
    APPROVAL_AUTHORING_UNDONE_BY = {"journey_version_edited": "journey_draft_discarded"}

    def approval_content_ids(self) -> list[int]:
        """The push contents an approval covers: those of its version being drafted or in review."""
        return self.approval_content_ids_of([self])[self.pk]

    @classmethod
    def approval_content_ids_of(cls, journeys: list["Journey"]) -> dict[int, list[int]]:
        """``approval_content_ids`` of several journeys, by journey id, in one query."""
        from journeys.graph import contents_of

        found: dict[int, list[int] | None] = {journey.pk: None for journey in journeys}
        versions = (
            JourneyVersion.objects.filter(
                journey__in=list(found), status__in=(JourneyVersion.Status.DRAFT, JourneyVersion.Status.IN_REVIEW)
            )
            .order_by("journey_id", "-number")
            .values_list("journey_id", "graph")
        )
        for journey_id, graph in versions:
            if found[journey_id] is None:  # the newest version of each journey
                found[journey_id] = list(contents_of(graph).values())
        return {pk: contents or [] for pk, contents in found.items()}

    @classmethod
    def approval_segment_ids_of(cls, journeys: list["Journey"]) -> dict[int, set[int]]:
        """The segments an approval of each journey covers, by journey id: its entry segment and
        those its conditions read, in its version being drafted or in review, and the segments
        their rules use, at any depth. Two queries."""
        from audiences.models import segments_reached
        from journeys.graph import branch_segments, condition_branches

        found: dict[int, list[int] | None] = {journey.pk: None for journey in journeys}
        versions = (
            JourneyVersion.objects.filter(
                journey__in=list(found), status__in=(JourneyVersion.Status.DRAFT, JourneyVersion.Status.IN_REVIEW)
            )
            .order_by("journey_id", "-number")
            .values_list("journey_id", "graph", "entry_segment_id")
        )
        for journey_id, graph, entry_segment_id in versions:
            if found[journey_id] is None:  # the newest version of each journey
                used = set().union(*(branch_segments(branch) for _, branch in condition_branches(graph or {})))
                found[journey_id] = used | ({entry_segment_id} if entry_segment_id else set())
        reached = segments_reached(set().union(*(segments for segments in found.values() if segments)))
        return {
            pk: set().union(*(reached.get(segment, {segment}) for segment in segments or ()))
            for pk, segments in found.items()
        }


class JourneyPause(models.Model):
    """One pause of a journey, from its pause to its resume (or its stop): an event stored meanwhile
    entered no one, and its replay, run later, enters no one either (``journeys_events_received``)."""

    journey = models.ForeignKey(Journey, on_delete=models.CASCADE, related_name="pauses")
    paused_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True, help_text="Its resume or stop; empty while paused.")

    class Meta:
        ordering = ["journey", "paused_at"]

    def __str__(self) -> str:
        return f"{self.journey_id} paused {self.paused_at:%Y-%m-%d %H:%M}"


class JourneyUserObjectPermission(UserObjectPermissionBase, GrantStamp):
    content_object = models.ForeignKey(Journey, on_delete=models.CASCADE)


class JourneyGroupObjectPermission(GroupObjectPermissionBase, GrantStamp):
    content_object = models.ForeignKey(Journey, on_delete=models.CASCADE)


class JourneyVersion(models.Model):
    """One version of a journey's behaviour. Editable while a draft; immutable once approved."""

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        IN_REVIEW = "in_review", "In review"
        LIVE = "live", "Live"
        RETIRED = "retired", "Retired (profiles inside finish on it)"

    class EntryKind(models.TextChoices):
        SEGMENT = "segment", "Everyone in a segment"
        EVENT = "event", "When an event arrives"

    class Reentry(models.TextChoices):
        NEVER = "never", "Never: a profile enters once"
        AFTER_WAIT = "after_wait", "Again, after a wait (one instance at a time)"

    journey = models.ForeignKey(Journey, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.DRAFT)

    entry_kind = models.CharField(max_length=10, choices=EntryKind.choices, default=EntryKind.SEGMENT)
    entry_segment = models.ForeignKey(
        "audiences.Segment", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    entry_every_hours = models.PositiveIntegerField(
        default=0, help_text="Segment entry: 0 reads the segment once; N reads it again every N hours."
    )
    entry_event = models.CharField(max_length=100, blank=True, help_text="Event entry: the event's name.")
    reentry = models.CharField(max_length=12, choices=Reentry.choices, default=Reentry.NEVER)
    reentry_wait_seconds = models.PositiveIntegerField(
        default=0, help_text="With re-entry: the least time between two entries of a profile."
    )
    exit_event = models.CharField(
        max_length=100, blank=True, help_text="An event that ends the journey for the profile (blank: none)."
    )
    graph = models.JSONField(default=dict, blank=True, help_text='{"steps": [{"id", "type", ...}]}')

    approved_fingerprint = models.CharField(max_length=64, blank=True, editable=False)
    frozen_specs = models.JSONField(
        default=dict, blank=True, editable=False, help_text="Each push step's content as approved: what is sent."
    )
    approved_segments = models.JSONField(
        default=dict,
        blank=True,
        editable=False,
        help_text="Each segment it reads, by id: its definition's fingerprint as approved (none: approved before "
        "approvals covered the segments).",
    )
    approved_name = models.CharField(
        max_length=200,
        blank=True,
        editable=False,
        help_text="The journey's name as approved: what its pushes give their content (context.journey.name).",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now, editable=False)
    live_at = models.DateTimeField(null=True, blank=True, editable=False)
    retired_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["journey", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["journey", "number"], name="journey_version_number_once"),
            models.UniqueConstraint(
                fields=["journey"], condition=Q(status__in=["draft", "in_review"]), name="journey_one_open_draft"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.journey.name} v{self.number}"

    FINGERPRINT_FIELDS = (
        "entry_kind",
        "entry_segment_id",
        "entry_every_hours",
        "entry_event",
        "reentry",
        "reentry_wait_seconds",
        "exit_event",
        "graph",
    )

    def fingerprint(
        self, *, content_fingerprints: dict[str, str], segment_fingerprints: dict[str, str] | None = None
    ) -> str:
        """SHA-256 of what an approver signs off: entry, exit, re-entry, the graph, each push's content
        and the definition of each segment it reads (``segment_fingerprints``, by segment id: the
        entry's and the conditions' are read live, so an edit of one would change who enters or
        takes which branch)."""
        data = {field: getattr(self, field) for field in self.FINGERPRINT_FIELDS}
        data["app_id"] = self.journey.app_id
        data["contents"] = content_fingerprints
        if segment_fingerprints:
            # Only then: a version reading no segment, or approved before the segments were covered
            # (it froze none), keeps the fingerprint it was approved with.
            data["segments"] = segment_fingerprints
        blob = json.dumps(data, sort_keys=True, default=str, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    @property
    def is_editable(self) -> bool:
        return self.status == self.Status.DRAFT

    def steps(self) -> list[dict]:
        return list((self.graph or {}).get("steps") or [])

    def step_map(self) -> dict[str, dict]:
        return {step["id"]: step for step in self.steps() if isinstance(step, dict) and "id" in step}

    def entry_step(self) -> str | None:
        """The one step nothing leads to (the graph is validated before it can go live)."""
        from journeys.graph import entry_of

        return entry_of(self.steps())


class Enrollment(models.Model):
    """One passage of a profile through a journey version (per entry number).

    ``step`` is the step to run next; ``due_at`` when (the engine takes due enrollments).
    ``history`` lists the steps passed: ``[step id, ISO time, outcome]``.
    """

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        WAITING = "waiting", "Waiting"
        COMPLETED = "completed", "Completed"
        EXITED = "exited", "Exited"
        FAILED = "failed", "Failed"

    OPEN_STATUSES = (Status.ACTIVE, Status.WAITING)

    id = models.BigAutoField(primary_key=True)
    # No database check on the journey and version (two checks per row entered, at a million-profile
    # entry a third of its time): a journey gets enrollments only once live, and a journey that went
    # live is never deleted (``journey_delete``, under its row lock), nor its versions.
    journey = models.ForeignKey(
        Journey, on_delete=models.CASCADE, related_name="enrollments", db_index=False, db_constraint=False
    )
    version = models.ForeignKey(
        JourneyVersion, on_delete=models.CASCADE, related_name="enrollments", db_index=False, db_constraint=False
    )
    profile = models.ForeignKey("audiences.Profile", on_delete=models.CASCADE, related_name="+")
    entry_number = models.PositiveIntegerField(default=1)
    step = models.CharField(max_length=64)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.ACTIVE)
    due_at = models.DateTimeField(null=True, blank=True)
    entered_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    exit_reason = models.CharField(max_length=200, blank=True)
    history = models.JSONField(default=list, blank=True)
    # While its journey is paused: when it was due (``due_at`` is then empty, so the engine does
    # not take it); the resume gives it back.
    held_due_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["version", "profile", "entry_number"], name="enrollment_once"),
            # One instance of a journey per profile at a time.
            models.UniqueConstraint(
                fields=["journey", "profile"], condition=Q(status__in=["active", "waiting"]), name="enrollment_one_open"
            ),
        ]
        indexes = [
            models.Index(fields=["due_at"], condition=Q(status__in=["active", "waiting"]), name="enrollment_due_idx"),
            models.Index(fields=["journey", "profile", "entered_at"], name="enrollment_journey_profile_idx"),
            models.Index(fields=["version", "status", "step"], name="enrollment_version_step_idx"),
        ]

    def __str__(self) -> str:
        # As the pages name them (the admin reads the three with the enrollment), not by database ids.
        return f"{self.profile.external_id} in “{self.journey.name}” v{self.version.number}, entry #{self.entry_number}"


class StepStat(models.Model):
    """Counters per (version, step, metric): entered, passed:<branch>, pushed, exited. Kept by the engine.

    Each counter is split over shards (the engine adds to the shard of its database session), so
    concurrent event entries, which add to the same counters, do not queue behind each other's
    commit; a count is the sum of its shards."""

    id = models.BigAutoField(primary_key=True)
    version = models.ForeignKey(JourneyVersion, on_delete=models.CASCADE, related_name="stats")
    step = models.CharField(max_length=64)
    metric = models.CharField(max_length=100)
    shard = models.SmallIntegerField(default=0)
    count = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["version", "step", "metric", "shard"], name="step_stat_once_per_shard")
        ]

    def __str__(self) -> str:
        return f"{self.version_id}/{self.step}/{self.metric}={self.count}"
