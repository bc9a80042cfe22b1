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
from django.db.models.fields.json import KT
from django.db.models.functions import Cast, Coalesce
from django.utils import timezone
from guardian.models import GroupObjectPermissionBase, UserObjectPermissionBase

from accounts.models import GrantStamp, IdempotentRequest
from delivery.models import ConversionGoal

# What a content reads to show the campaign's name, which every send gives it (``Campaign.send_context``).
NAME_READ = "context.campaign.name"


def specs_show_name(specs) -> bool:
    """Does any of the content ``specs`` show the campaign's name (``NAME_READ``)? Then the name is
    part of what an approval covers (``Campaign.fingerprint``): the approver read it on the phones."""
    from delivery.payloads import spec_reads

    return any(spec_reads(spec, NAME_READ) for spec in specs)


def approved_app_id() -> models.Expression:
    """The id of the app a campaign's frozen approved version names (NULL before any approval, or
    approved before versions were kept), as an expression over its row: indexed, so that the
    campaigns whose approved version sends to an app are found by it (``campaign_approved_app_idx``)."""
    return Cast(KT("approved_version__fields__app_id"), models.BigIntegerField())


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

    # Still to send, or sending: what a retention of the events it counts would still change.
    STILL_TO_SEND = (Status.DRAFT, Status.IN_REVIEW, Status.SCHEDULED, Status.LIVE)

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

    class WinnerMetric(models.TextChoices):
        OPEN_RATE = "open_rate", "Open rate (opened / accepted)"
        CONVERSION_RATE = "conversion_rate", "Conversion rate (the campaign's conversion goal)"

    class WinnerFallback(models.TextChoices):
        DEFAULT_VARIANT = "default_variant", "Send the default variant to the rest"
        ALL_VARIANTS = "all_variants", "Send all variants to the rest, in their shares"

    winner_mode = models.BooleanField(
        "winner mode",
        default=False,
        help_text="With variants: send them to a sample first, then the winner to the rest (scheduled, one-off "
        "campaigns).",
    )
    winner_sample_share = models.PositiveSmallIntegerField(
        "sample share (%)",
        default=20,
        help_text="The share of the audience that gets the test, split across the variants.",
    )
    winner_wait_minutes = models.PositiveIntegerField(
        "wait (minutes)", default=120, help_text="How long after the sample is sent the winner is picked."
    )
    winner_metric = models.CharField(
        "metric", max_length=20, choices=WinnerMetric.choices, default=WinnerMetric.OPEN_RATE
    )
    winner_confidence = models.PositiveSmallIntegerField(
        "confidence (%)",
        choices=[(80, "80%"), (90, "90%"), (95, "95%"), (99, "99%")],
        default=95,
        help_text="The best variant wins when a two-proportion z-test against each other variant is significant at "
        "this level.",
    )
    winner_fallback = models.CharField(
        "fallback",
        max_length=20,
        choices=WinnerFallback.choices,
        default=WinnerFallback.ALL_VARIANTS,
        help_text="What the rest get when no variant wins at that confidence.",
    )
    winner_fallback_variant = models.PositiveSmallIntegerField(
        "default variant",
        null=True,
        blank=True,
        choices=[(n, chr(ord("A") + n - 1)) for n in range(1, 11)],
        help_text="The variant the rest get when no variant wins (fallback: the default variant).",
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
        indexes = [
            models.Index(fields=["status", "next_occurrence_at"], name="campaign_due_idx"),
            models.Index(approved_app_id(), name="campaign_approved_app_idx"),
        ]

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

    def fingerprint(self, *, missed_window: bool = True, name: bool = True) -> str:
        """SHA-256 of everything an approver signs off: the content's own fingerprint, the audience's
        definition (its rules, the segments they use, a kept list's membership), the schedule, for a
        scheduled campaign its missed-send window (whether an occurrence missed during downtime goes
        out late), and the campaign's name when its content or a variant's shows it (``shows_name``).
        ``missed_window=False``, ``name=False``: as approvals made before they covered the window,
        the name, computed it (``matches``)."""
        data = {field: getattr(self, field) for field in self.FINGERPRINT_FIELDS}
        if missed_window and self.kind == self.Kind.SCHEDULED:
            data["missed_window_minutes"] = self.missed_window_minutes
        data["content"] = self.content.fingerprint()
        data["audience"] = self.segment.definition_fingerprint() if self.segment_id else None
        variants = self.variant_list()
        if name and specs_show_name([self.content.spec(), *(v.content.spec() for v in variants)]):
            # Only then: the fingerprints of campaigns whose content does not show it stay what they were
            # approved as, and a rename of them is no revision.
            data["name"] = self.name
        if variants or self.holdout_share:
            # Only then: the fingerprints of campaigns without variants stay what they were approved as.
            data["variants"] = [[v.content.fingerprint(), v.share] for v in variants]
            data["holdout_share"] = self.holdout_share
        if self.winner_mode:
            # Only then, for the same reason: the settings decide what the rest of the audience gets.
            data["winner"] = self.winner_settings()
        blob = json.dumps(data, sort_keys=True, default=str, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    # Besides the fingerprint fields, what the approved version keeps (the window is in the fingerprint
    # for a scheduled campaign, apart: an approval made before it was left it out, ``matches``).
    SNAPSHOT_EXTRA_FIELDS = ("content_id", "missed_window_minutes")

    WINNER_FIELDS = (
        "winner_sample_share",
        "winner_wait_minutes",
        "winner_metric",
        "winner_confidence",
        "winner_fallback",
        "winner_fallback_variant",
    )

    def winner_settings(self) -> dict | None:
        """Winner mode's settings as the approval covers them (None when off). With the conversion
        metric, the goal too: it decides what the rest get, so it is frozen into the approved version."""
        if not self.winner_mode:
            return None
        settings_ = {name.removeprefix("winner_"): getattr(self, name) for name in self.WINNER_FIELDS}
        if self.winner_metric == self.WinnerMetric.CONVERSION_RATE:
            settings_["goal"] = {
                "event": self.conversion_event,
                "where": list(self.conversion_where or []),
                "window_hours": self.conversion_window_hours,
                "anchor": self.conversion_anchor,
            }
        return settings_

    # The audit actions that change what an approval covers: whoever did one since the campaign's
    # last approval may not decide its request, as its requester may not (``approver_standing``).
    APPROVAL_AUTHORING_ACTIONS = (
        "campaign_created",
        "campaign_duplicated",
        "campaign_changed",
        "campaign_variants_set",
        "campaign_winner_set",
        "campaign_revision_edited",
    )

    def approval_authoring_actions(self) -> tuple[str, ...]:
        """``APPROVAL_AUTHORING_ACTIONS`` of this campaign: with them, the setting of its conversion
        goal while winner mode picks by the goal's rate, when the approval covers the goal too
        (``winner_settings``)."""
        if self.approval_covers_goal():
            return (*self.APPROVAL_AUTHORING_ACTIONS, "campaign_conversion_set")
        return self.APPROVAL_AUTHORING_ACTIONS

    def approval_covers_goal(self) -> bool:
        """Does the approval cover its conversion goal? Only while winner mode picks by the goal's
        rate (``winner_settings``): a change of it is then an edit like any other; otherwise the goal
        is a report setting."""
        return self.winner_mode and self.winner_metric == self.WinnerMetric.CONVERSION_RATE

    def approval_content_ids(self) -> list[int]:
        """The push contents an approval of the campaign covers: its content and its variants'."""
        return self.approval_content_ids_of([self])[self.pk]

    @classmethod
    def approval_content_ids_of(cls, campaigns: list["Campaign"]) -> dict[int, list[int]]:
        """``approval_content_ids`` of several campaigns, by campaign id, in one query."""
        found = {campaign.pk: [campaign.content_id] for campaign in campaigns}
        variants = CampaignVariant.objects.filter(campaign__in=list(found)).order_by("campaign_id", "number")
        for campaign_id, content_id in variants.values_list("campaign_id", "content_id"):
            found[campaign_id].append(content_id)
        return found

    @classmethod
    def approval_segment_ids_of(cls, campaigns: list["Campaign"]) -> dict[int, set[int]]:
        """The segments an approval of each campaign covers, by campaign id: its audience and the
        segments its rules use, at any depth. One query."""
        from audiences.models import segments_reached

        reached = segments_reached(campaign.segment_id for campaign in campaigns if campaign.segment_id)
        return {campaign.pk: reached.get(campaign.segment_id, set()) for campaign in campaigns}

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
            # The name its sends give the content (``send_context``), as the approver read it on the phones.
            "name": self.name,
            "spec": self.content.spec(),
            "fingerprint": self.fingerprint(),
            "covers_missed_window": True,
            "covers_name": True,
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
            "winner": self.winner_settings(),
        }

    def schedule_zone(self) -> str:
        """The zone its sends are shown in: the approved schedule's, as it was entered (a pending
        revision's zone sends nothing yet); the campaign's own before any approval."""
        return ((self.approved_version or {}).get("fields") or {}).get("time_zone") or self.time_zone

    def request_zone(self, request) -> str:
        """The zone an approval request's times are shown in: the approved version's (``schedule_zone``)
        for the request that approved it, the campaign's own for any other (a revision's, waiting or
        sent back, whose zone is the row's)."""
        approved = self.approved_version or {}
        if request is not None and approved.get("request_id", request.pk) == request.pk:
            if request.status == request.Status.APPROVED:
                return self.schedule_zone()
        return self.time_zone

    def approved(self) -> "ApprovedVersion | None":
        """The version that sends while the campaign is scheduled or live (None before any approval)."""
        if self.approved_version:
            return ApprovedVersion.from_snapshot(self.approved_version, campaign=self)
        if self.approved_fingerprint and self.fingerprint(missed_window=False, name=False) == self.approved_fingerprint:
            # Approved before versions were kept (and before approvals covered the window or the name):
            # the row itself is still what was approved.
            legacy = {
                "fingerprint": self.approved_fingerprint,
                "covers_missed_window": False,
                "covers_name": False,
                "number": 1,
            }
            return ApprovedVersion.from_snapshot({**self.snapshot(), **legacy}, campaign=self)
        return None

    def approved_name(self) -> str | None:
        """The name its approved version's sends give their content (``ApprovedVersion.name``): the
        one it was approved with, which a rename that is no revision does not change. Read from the
        row without a query (``approved`` compares fingerprints), so a list may say it of each: one
        approved before versions were kept is the row, and sends its name. None before any approval."""
        if self.approved_version:
            return self.approved_version.get("name") or self.name
        return self.name if self.approved_fingerprint else None

    @staticmethod
    def sending_app_id() -> models.Expression:
        """The id of the app a campaign's approved version sends to, as an expression over its row
        (to annotate a query with): the app of its frozen version, the row's own before any approval
        (or approved before versions were kept: the row is then what was approved, or nothing sends).
        A pending revision moving the campaign to another app changes the row's app, not this one,
        until it is approved."""
        return Coalesce(approved_app_id(), models.F("app_id"), output_field=models.BigIntegerField())

    @staticmethod
    def access_read_scope_id() -> models.Expression:
        """Who has access to the app its approved version sends to reads the campaign too
        (``accounts.selectors.visible_to``), and may do no more than ``access_read_scope_perms``:
        while a revision moving it to another app waits, both apps' people see it; once approved,
        the old app's no more."""
        return Campaign.sending_app_id()

    # A stop only ever sends less: the people of the app its approved version still sends to may
    # take it off the air (their role allowing), as the row's app's people may.
    access_read_scope_perms = frozenset({"campaigns.stop_campaign"})

    def shows_name(self) -> bool:
        """Does its content, or a variant's, show the campaign's name (``NAME_READ``)? Then the
        approval covers the name, and a rename of a scheduled or live campaign is a revision."""
        return specs_show_name([self.content.spec(), *(v.content.spec() for v in self.variant_list())])

    def matches(self, approved: "ApprovedVersion") -> bool:
        """Is the campaign as it stands the ``approved`` version? A version approved before approvals
        covered the missed-send window, or the name, has a fingerprint without it: the campaign is
        still that version while its window is the one the version keeps, and its name the one the
        version sends (``ApprovedVersion.name``) when its content shows it."""
        window = bool(approved.snapshot.get("covers_missed_window"))
        name = bool(approved.snapshot.get("covers_name"))
        if not name and approved.name != self.name and self.shows_name():
            return False
        if not window and approved.missed_window_minutes != self.missed_window_minutes:
            return False
        return approved.fingerprint == self.fingerprint(missed_window=window, name=name)

    def submitted_as(self, fingerprint: str) -> bool:
        """Is ``fingerprint`` (an approval request's) the campaign as it stands? Also as a request
        submitted before approvals covered the window, or the name, computed it: nothing of the
        campaign, its name included, changes while its request waits (``lock_editable``), and its
        approval covers them as the review showed them."""
        if fingerprint == self.fingerprint():
            return True
        older = ((False, True), (True, False), (False, False))
        return any(fingerprint == self.fingerprint(missed_window=w, name=n) for w, n in older)

    @property
    def has_pending_revision(self) -> bool:
        """Scheduled or live, and edited since its approval: the edit waits for its own approval."""
        if not self.is_active:
            return False
        approved = self.approved()
        return approved is None or not self.matches(approved)

    @classmethod
    def approval_app_moves_of(cls, campaigns: list["Campaign"]) -> dict[int, tuple[int, int]]:
        """The campaigns among ``campaigns`` whose request moves them to another app, by id: (the app
        their approved version sends to, the app the row names), for a revision of a scheduled or
        live campaign edited into another app. Its approver needs access to both
        (``accounts.selectors.approver_standings``). No query: read from the rows."""
        moves = {}
        for campaign in campaigns:
            approved = ((campaign.approved_version or {}).get("fields") or {}).get("app_id")
            if campaign.is_active and approved is not None and int(approved) != campaign.app_id:
                moves[campaign.pk] = (int(approved), campaign.app_id)
        return moves

    def approval_context(self) -> dict:
        return {"type": "campaign", "app_id": self.app_id, "kind": self.kind, "purpose": self.purpose}

    def approval_source_context(self) -> dict | None:
        """For a revision moving the campaign to another app (``approval_app_moves_of``), the
        ``approval_context`` of its approved version, which sends to the app it moves out of: that
        app's approval policy governs the move too. None for any other request."""
        move = self.approval_app_moves_of([self]).get(self.pk)
        if move is None:
            return None
        fields = self.approved_version["fields"]
        kind, purpose = fields.get("kind") or self.kind, fields.get("purpose") or self.purpose
        return {"type": "campaign", "app_id": move[0], "kind": kind, "purpose": purpose}

    def send_context(self) -> dict:
        """What every send of the campaign gives its content as ``context``: its sends, its test
        sends and its previews alike (an API trigger's call adds its own values)."""
        return {"campaign": {"id": self.pk, "name": self.name}}

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
    winner: dict | None  # winner mode's settings (Campaign.winner_settings), None when off

    def send_context(self) -> dict:
        """What every send of this version gives its content as ``context`` (``Campaign.send_context``),
        under the name it was approved with: a rename is no revision, and does not reword its sends."""
        return {"campaign": {"id": self.campaign_id, "name": self.name}}

    @classmethod
    def from_snapshot(cls, snapshot: dict, *, campaign: "Campaign | None" = None) -> "ApprovedVersion":
        fields = dict(snapshot["fields"])
        for name in ("send_at", "ends_at"):
            fields[name] = dt.datetime.fromisoformat(fields[name]) if fields.get(name) else None
        return cls(
            campaign_id=campaign.pk if campaign else None,
            # Approved before the name was kept: the row's, as its sends gave it then.
            name=snapshot.get("name") or (campaign.name if campaign else ""),
            number=snapshot.get("number", 1),
            spec=snapshot["spec"],
            fingerprint=snapshot["fingerprint"],
            approved_at=snapshot.get("approved_at", ""),
            approved_by=snapshot.get("approved_by", ""),
            labels=snapshot.get("labels", {}),
            snapshot=snapshot,
            variants=snapshot.get("variants") or [],
            holdout_share=snapshot.get("holdout_share") or 0,
            winner=snapshot.get("winner"),
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
        # Not its content's name: the admin shows a variant to whoever reads its campaign, and the
        # content may be one they may not see.
        return f"Variant {self.label} ({self.share}%)"

    @property
    def label(self) -> str:
        return variant_label(self.number)


class CampaignUserObjectPermission(UserObjectPermissionBase, GrantStamp):
    content_object = models.ForeignKey(Campaign, on_delete=models.CASCADE)


class CampaignGroupObjectPermission(GroupObjectPermissionBase, GrantStamp):
    content_object = models.ForeignKey(Campaign, on_delete=models.CASCADE)


class Occurrence(models.Model):
    """One due send of a scheduled campaign. The unique (campaign, due_at) makes each fire exactly once."""

    # The sent outcomes say that its dispatch was made, not what it delivered: that dispatch may yet
    # fail, be stopped or skip every row. The lists show what it did beside them (``occurrence_rows``).
    class Outcome(models.TextChoices):
        SENT = "sent", "Send started"
        SENT_LATE = "sent_late", "Send started late (missed during downtime)"
        # Not downtime: the schedule was approved after its time, and the send went at the approval.
        SENT_AT_APPROVAL = "sent_at_approval", "Send started at approval, after its scheduled time"
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
    at_local_time = models.BooleanField(
        null=True,
        blank=True,
        help_text="Whether it stood for a time of day at each profile's local time, as the version that fired "
        "it said (empty: not known, recorded before this was kept).",
    )

    class Meta:
        ordering = ["-due_at"]
        constraints = [models.UniqueConstraint(fields=["campaign", "due_at"], name="occurrence_once")]
        # The list of every occurrence, newest first (one campaign's reads the unique one, above).
        indexes = [models.Index(fields=["due_at", "id"], name="occurrence_due_idx")]

    def __str__(self) -> str:
        return f"{self.campaign} @ {self.due_text()}: {self.get_outcome_display().lower()}"

    def due_text(self) -> str:
        """When it was due, as the schedule was entered (``campaigns.schedule.occurrence_when``): in
        the campaign's zone, named; at each profile's local time, the wall-clock time entered and
        when the send began. Local as the version that fired it said (``at_local_time``, kept when
        it fired), never as a revision since, pending or approved, says. For a row recorded before
        that was kept: local when its dispatch sent so (a list annotates each row's
        ``dispatch_local_time`` rather than reading each dispatch); without a dispatch, when the
        approved version sends so."""
        from campaigns.schedule import at_local_time, occurrence_when
        from config.zones import zoned

        time_zone = self.campaign.schedule_zone()  # as the schedule that fired it was entered
        if self.at_local_time is not None:
            local = self.at_local_time
        elif self.dispatch_id is None:
            approved = self.campaign.approved()
            local = approved is not None and at_local_time(approved)
        elif hasattr(self, "dispatch_local_time"):
            local = bool(self.dispatch_local_time)
        else:
            local = bool(self.dispatch.local_time)
        when = occurrence_when(self.due_at, time_zone=time_zone, local=local)
        return f"{when}, from {zoned(self.due_at, time_zone)}" if local else when


class WinnerTest(models.Model):
    """A winner-mode campaign's test: the sample it sent, the pick after the wait, and the remainder.

    One per campaign. The pick is written on this row, under its lock, in the transaction that
    creates the remainder's dispatch: two workers racing, or one killed midway, cannot send the
    remainder twice. The gate lets the remainder through only against this row.
    """

    class Outcome(models.TextChoices):
        WAITING = "waiting", "Waiting for the pick"
        WINNER = "winner", "Winner picked"
        FALLBACK = "fallback", "No winner: fallback"
        CANCELLED = "cancelled", "Nothing sent to the rest"

    id = models.BigAutoField(primary_key=True)
    campaign = models.OneToOneField(Campaign, on_delete=models.CASCADE, related_name="winner_test")
    version = models.PositiveIntegerField(help_text="The approved version that sent the sample.")
    fingerprint = models.CharField(max_length=64, help_text="Its approved fingerprint: the rest gets the same.")
    settings = models.JSONField(help_text="Winner mode's settings as approved (Campaign.winner_settings).")
    sample_dispatch = models.ForeignKey(
        "delivery.Dispatch", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    due_at = models.DateTimeField(help_text="When the winner is picked: the sample's send plus the wait.")
    outcome = models.CharField(max_length=20, choices=Outcome.choices, default=Outcome.WAITING)
    winner = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="The variant the rest get (1 = A); empty: all variants in their shares."
    )
    figures = models.JSONField(
        default=list, blank=True, help_text="Per variant: [{variant, trials, successes, rate}] of the sample."
    )
    comparisons = models.JSONField(
        default=list, blank=True, help_text="The best against each other variant: [{variant, z, p, significant}]."
    )
    reason = models.CharField(max_length=300, blank=True, help_text="Which rule applied, and why.")
    picked_at = models.DateTimeField(null=True, blank=True)
    remainder_dispatch = models.ForeignKey(
        "delivery.Dispatch", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["outcome", "due_at"], name="winner_test_due_idx")]

    def __str__(self) -> str:
        return f"{self.campaign} winner test ({self.outcome})"


class TriggerRequest(IdempotentRequest):
    """An ``Idempotency-Key`` seen on the trigger endpoint: same key + same body replays the answer."""

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="trigger_requests")
    dispatch = models.ForeignKey(
        "delivery.Dispatch",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text="The dispatch the call appended to, stored with its rows: the record is then never deleted.",
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "idempotency_key"], name="trigger_idempotency_once_per_user")
        ]

    def __str__(self) -> str:
        return f"{self.idempotency_key} → {self.campaign_id}"
