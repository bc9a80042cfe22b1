"""Campaigns: one-off content to an audience, now, at a time, on a recurrence, or when the API asks.

The lifecycle is AJO's: draft → in_review (locked) → scheduled / live → completed / stopped /
failed, and archived. Every transition is a service in ``campaigns.services.lifecycle``.
"""

import datetime as dt
import hashlib
import json
from dataclasses import dataclass

from django.conf import settings
from django.db import models
from django.utils import timezone
from guardian.models import GroupObjectPermissionBase, UserObjectPermissionBase

from accounts.models import GrantStamp
from delivery.models import ConversionGoal


class Campaign(ConversionGoal):
    has_object_access = True
    access_scope_field = "app"

    class Kind(models.TextChoices):
        SCHEDULED = "scheduled", "Scheduled"
        API_TRIGGERED = "api_triggered", "API-triggered"

    class Purpose(models.TextChoices):
        MARKETING = "marketing", "Marketing"
        TRANSACTIONAL = "transactional", "Transactional (ignores frequency caps and quiet hours)"

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        IN_REVIEW = "in_review", "In review"
        SCHEDULED = "scheduled", "Scheduled"
        LIVE = "live", "Live"
        COMPLETED = "completed", "Completed"
        STOPPED = "stopped", "Stopped"
        FAILED = "failed", "Failed"
        ARCHIVED = "archived", "Archived"

    class ScheduleKind(models.TextChoices):
        NOW = "now", "Send when approved"
        AT = "at", "At a date and time"
        RECURRING = "recurring", "Recurring"

    class Recurrence(models.TextChoices):
        DAILY = "daily", "Daily"
        WEEKLY = "weekly", "Weekly"
        MONTHLY = "monthly", "Monthly"
        CRON = "cron", "Cron expression"

    name = models.CharField(max_length=200)
    app = models.ForeignKey("delivery.App", on_delete=models.PROTECT, related_name="campaigns")
    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.SCHEDULED)
    purpose = models.CharField(max_length=20, choices=Purpose.choices, default=Purpose.MARKETING)
    segment = models.ForeignKey(
        "audiences.Segment",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="campaigns",
        help_text="The audience (scheduled campaigns). API-triggered campaigns name their recipients per call.",
    )
    content = models.ForeignKey("delivery.PushContent", on_delete=models.PROTECT, related_name="campaigns")

    schedule_kind = models.CharField(max_length=10, choices=ScheduleKind.choices, default=ScheduleKind.NOW)
    send_at = models.DateTimeField(null=True, blank=True, help_text="The (first) send, for 'at' and 'recurring'.")
    time_zone = models.CharField(max_length=64, default="UTC", help_text="IANA name the schedule is read in.")
    recurrence = models.CharField(max_length=10, choices=Recurrence.choices, blank=True)
    cron = models.CharField(max_length=100, blank=True, help_text="Five-field cron expression, in the time zone above.")
    ends_at = models.DateTimeField(null=True, blank=True, help_text="No occurrence after this (recurring).")
    at_local_time = models.BooleanField(
        default=False,
        help_text="Send at the schedule's time of day in each profile's own time zone (profiles without one: "
        "the time zone above). The send starts when the earliest time zone reaches it.",
    )
    missed_window_minutes = models.PositiveIntegerField(
        default=60,
        help_text="An occurrence missed during downtime is sent late if at most this old, otherwise skipped.",
    )
    throttle_per_second = models.PositiveIntegerField(
        null=True, blank=True, help_text="Most messages per second for this campaign (empty: the app's limit)."
    )
    holdout_share = models.PositiveSmallIntegerField(
        "holdout share (%)",
        default=0,
        help_text="With variants: the percentage of the audience that gets nothing (the control group).",
    )

    status = models.CharField(max_length=20, choices=Status.choices, default=Status.DRAFT, db_index=True)
    status_changed_at = models.DateTimeField(default=timezone.now)
    approved_fingerprint = models.CharField(max_length=64, blank=True, editable=False)
    approved_version = models.JSONField(
        default=dict,
        blank=True,
        editable=False,
        help_text="The approved version, frozen: what is sent while an edit waits for approval (see snapshot()).",
    )
    activated_at = models.DateTimeField(null=True, blank=True, editable=False)
    next_occurrence_at = models.DateTimeField(null=True, blank=True, db_index=True, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["-updated_at", "-id"]
        permissions = [
            ("submit_campaign", "Can submit a campaign for review"),
            ("approve_campaign", "Can approve and activate a campaign"),
            ("stop_campaign", "Can stop a campaign"),
            ("archive_campaign", "Can archive a campaign"),
            ("duplicate_campaign", "Can duplicate a campaign"),
            ("trigger_campaign", "Can trigger an API-triggered campaign"),
        ]
        indexes = [models.Index(fields=["status", "next_occurrence_at"], name="campaign_due_idx")]

    def __str__(self) -> str:
        return self.name

    # What an approval covers: content, audience (and its definition) and schedule. Any change voids it.
    FINGERPRINT_FIELDS = (
        "app_id",
        "kind",
        "purpose",
        "segment_id",
        "schedule_kind",
        "send_at",
        "time_zone",
        "recurrence",
        "cron",
        "ends_at",
        "at_local_time",
        "throttle_per_second",
    )

    def fingerprint(self) -> str:
        """SHA-256 of everything an approver signs off: the content's own fingerprint, the audience's
        definition (its rules, the segments they use, a kept list's membership), the schedule."""
        data = {field: getattr(self, field) for field in self.FINGERPRINT_FIELDS}
        data["content"] = self.content.fingerprint()
        data["audience"] = self.segment.definition_fingerprint() if self.segment_id else None
        variants = self.variant_list()
        if variants or self.holdout_share:
            # Only then: the fingerprints of campaigns without variants stay what they were approved as.
            data["variants"] = [[v.content.fingerprint(), v.share] for v in variants]
            data["holdout_share"] = self.holdout_share
        blob = json.dumps(data, sort_keys=True, default=str, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    # Besides the fingerprint, what the approved version keeps (it does not change what is sent).
    SNAPSHOT_EXTRA_FIELDS = ("content_id", "missed_window_minutes")

    def variant_list(self) -> list["CampaignVariant"]:
        """The variants in their order (empty: the campaign sends its one content to everyone)."""
        if self.pk is None:
            return []
        return list(self.variants.select_related("content").order_by("number"))

    def snapshot(self) -> dict:
        """This campaign as it stands, in the frozen form an approval keeps (``approved_version``).

        The send path reads the approved snapshot, never the editable row, so an edit of a live
        campaign is a pending revision until it is approved.
        """
        fields = {name: getattr(self, name) for name in self.FINGERPRINT_FIELDS + self.SNAPSHOT_EXTRA_FIELDS}
        for name in ("send_at", "ends_at"):
            fields[name] = fields[name].isoformat() if fields[name] else None
        return {
            "fields": fields,
            "spec": self.content.spec(),
            "fingerprint": self.fingerprint(),
            "labels": {"content": str(self.content), "segment": str(self.segment) if self.segment_id else ""},
            # Who it reaches, as defined when approved: a send to an audience defined otherwise waits
            # for the revision's approval (the gate compares the fingerprints).
            "audience_definition": self.segment.definition() if self.segment_id else {},
            "audience_fingerprint": self.segment.definition_fingerprint() if self.segment_id else "",
            "variants": [
                {
                    "number": v.number,
                    "label": v.label,
                    "content_id": v.content_id,
                    "content": str(v.content),
                    "share": v.share,
                    "spec": v.content.spec(),
                }
                for v in self.variant_list()
            ],
            "holdout_share": self.holdout_share,
        }

    def approved(self) -> "ApprovedVersion | None":
        """The version that sends while the campaign is scheduled or live (None before any approval)."""
        if self.approved_version:
            return ApprovedVersion.from_snapshot(self.approved_version, campaign=self)
        if self.approved_fingerprint and self.fingerprint() == self.approved_fingerprint:
            # Approved before versions were kept: the row itself is still what was approved.
            return ApprovedVersion.from_snapshot({**self.snapshot(), "number": 1}, campaign=self)
        return None

    @property
    def has_pending_revision(self) -> bool:
        """Scheduled or live, and edited since its approval: the edit waits for its own approval."""
        if not self.is_active:
            return False
        approved = self.approved()
        return approved is None or approved.fingerprint != self.fingerprint()

    def approval_context(self) -> dict:
        return {"type": "campaign", "app_id": self.app_id, "kind": self.kind, "purpose": self.purpose}

    @property
    def is_locked(self) -> bool:
        """In review, the campaign cannot be edited (cancel the request first)."""
        return self.status == self.Status.IN_REVIEW

    @property
    def is_active(self) -> bool:
        return self.status in (self.Status.SCHEDULED, self.Status.LIVE)


@dataclass(frozen=True)
class ApprovedVersion:
    """A campaign's approved version, read from its frozen snapshot: the attributes the send path
    and the schedule read (``next_occurrence`` takes it in place of the campaign)."""

    campaign_id: int | None
    name: str
    number: int
    app_id: int
    kind: str
    purpose: str
    segment_id: int | None
    content_id: int
    schedule_kind: str
    send_at: dt.datetime | None
    time_zone: str
    recurrence: str
    cron: str
    ends_at: dt.datetime | None
    at_local_time: bool
    throttle_per_second: int | None
    missed_window_minutes: int
    activated_at: dt.datetime | None
    spec: dict
    fingerprint: str
    approved_at: str
    approved_by: str
    labels: dict
    snapshot: dict
    variants: list  # [{number, label, content_id, content, share, spec}]: empty without variants
    holdout_share: int

    @classmethod
    def from_snapshot(cls, snapshot: dict, *, campaign: "Campaign | None" = None) -> "ApprovedVersion":
        fields = dict(snapshot["fields"])
        for name in ("send_at", "ends_at"):
            fields[name] = dt.datetime.fromisoformat(fields[name]) if fields.get(name) else None
        return cls(
            campaign_id=campaign.pk if campaign else None,
            name=campaign.name if campaign else "",
            number=snapshot.get("number", 1),
            spec=snapshot["spec"],
            fingerprint=snapshot["fingerprint"],
            approved_at=snapshot.get("approved_at", ""),
            approved_by=snapshot.get("approved_by", ""),
            labels=snapshot.get("labels", {}),
            snapshot=snapshot,
            variants=snapshot.get("variants") or [],
            holdout_share=snapshot.get("holdout_share") or 0,
            missed_window_minutes=fields.pop("missed_window_minutes", 60),
            activated_at=campaign.activated_at if campaign else None,
            **{name: fields.get(name) for name in Campaign.FINGERPRINT_FIELDS + ("content_id",)},
        )


def variant_label(number: int) -> str:
    """Variants are named A, B, C… in their order; 0 is the holdout."""
    return "holdout" if number == 0 else chr(ord("A") + number - 1)


class CampaignVariant(models.Model):
    """One content of a campaign that tests several (A/B/n), and the share of the audience it gets.

    A profile's variant is drawn from a hash of the profile and the campaign
    (``delivery.variants``): the same on every retry and every occurrence.
    """

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="variants")
    number = models.PositiveSmallIntegerField(help_text="1 for A, 2 for B…: the order of the shares.")
    content = models.ForeignKey("delivery.PushContent", on_delete=models.PROTECT, related_name="+")
    share = models.PositiveSmallIntegerField("share (%)", help_text="The percentage of the audience it gets.")

    class Meta:
        ordering = ["campaign", "number"]
        constraints = [models.UniqueConstraint(fields=["campaign", "number"], name="campaign_variant_number_once")]

    def __str__(self) -> str:
        return f"{self.label}: {self.content} ({self.share}%)"

    @property
    def label(self) -> str:
        return variant_label(self.number)


class CampaignUserObjectPermission(UserObjectPermissionBase, GrantStamp):
    content_object = models.ForeignKey(Campaign, on_delete=models.CASCADE)


class CampaignGroupObjectPermission(GroupObjectPermissionBase, GrantStamp):
    content_object = models.ForeignKey(Campaign, on_delete=models.CASCADE)


class Occurrence(models.Model):
    """One due send of a scheduled campaign. The unique (campaign, due_at) makes each fire exactly once."""

    class Outcome(models.TextChoices):
        SENT = "sent", "Sent"
        SENT_LATE = "sent_late", "Sent late (missed during downtime)"
        SKIPPED_MISSED = "skipped_missed", "Skipped (missed for longer than the window)"
        REFUSED = "refused", "Refused by the gate"

    id = models.BigAutoField(primary_key=True)
    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="occurrences")
    due_at = models.DateTimeField()
    fired_at = models.DateTimeField(default=timezone.now)
    outcome = models.CharField(max_length=20, choices=Outcome.choices)
    dispatch = models.ForeignKey(
        "delivery.Dispatch", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    note = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["-due_at"]
        constraints = [models.UniqueConstraint(fields=["campaign", "due_at"], name="occurrence_once")]

    def __str__(self) -> str:
        return f"{self.campaign} @ {self.due_at:%Y-%m-%d %H:%M} ({self.outcome})"


class TriggerRequest(models.Model):
    """An ``Idempotency-Key`` seen on the trigger endpoint: same key + same body replays the answer."""

    id = models.BigAutoField(primary_key=True)
    api_key = models.ForeignKey("accounts.ApiKey", on_delete=models.CASCADE, related_name="+")
    idempotency_key = models.CharField(max_length=200)
    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="trigger_requests")
    body_hash = models.CharField(max_length=64)
    finished = models.BooleanField(default=False)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.JSONField(null=True, blank=True)
    dispatch = models.ForeignKey(
        "delivery.Dispatch",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text="The dispatch the call appended to, stored with its rows: the record is then never deleted.",
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["api_key", "idempotency_key"], name="trigger_idempotency_once")]

    def __str__(self) -> str:
        return f"{self.idempotency_key} → {self.campaign_id}"
