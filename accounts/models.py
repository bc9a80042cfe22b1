import hashlib
import hmac

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import PermissionDenied
from django.db import models
from django.utils import timezone


class User(AbstractUser):
    """A person (or a service account) who signs in to the admin or owns API keys."""

    is_service_account = models.BooleanField(
        default=False,
        help_text="A non-human account that acts only through its API keys.",
    )

    class Meta(AbstractUser.Meta):
        swappable = "AUTH_USER_MODEL"
        permissions = [
            ("manage_object_access", "Can grant and revoke object access"),
            ("manage_others_apikey", "Can manage other users' API keys"),
        ]

    def role_names(self) -> list[str]:
        from accounts.roles import ROLES

        names = {g.name for g in self.groups.all()}
        return [r for r in ROLES if r in names]


class ApiKey(models.Model):
    """A bearer key for the REST API. Acts as its user, narrowed to its scopes.

    The key itself is ``pdk_<prefix>_<secret>``; only the prefix (to find the row) and a
    SHA-256 of the whole key (to check it) are stored.
    """

    class Scope(models.TextChoices):
        INGEST = "ingest", "ingest (profiles, events, devices)"
        TRIGGER = "trigger", "trigger (API-triggered campaigns)"
        READ = "read", "read (segments, campaigns, dispatches, journeys)"
        CAMPAIGNS = "campaigns", "campaigns (change a campaign's settings: winner mode)"
        JOURNEYS = "journeys", "journeys (change a journey: discard its draft, pause and resume it)"
        TEST_DEVICES = "test_devices", "test devices (register a device as a test device: it gets test sends of drafts)"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100, help_text="What uses this key, e.g. 'backend production'.")
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    key_hash = models.CharField(max_length=64, editable=False)
    scopes = models.JSONField(default=list)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        editable=False,
    )
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Empty: never expires.")
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        verbose_name = "API key"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({settings.PUSHDESK_API_KEY_PREFIX}_{self.prefix}_…)"

    @staticmethod
    def hash_key(raw_key: str) -> str:
        return hashlib.sha256(raw_key.encode()).hexdigest()

    def matches(self, raw_key: str) -> bool:
        """Compare in constant time, so the hash cannot be guessed byte by byte."""
        return hmac.compare_digest(self.key_hash, self.hash_key(raw_key))

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    def is_expired(self, now=None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or timezone.now())

    @property
    def status(self) -> str:
        if self.is_revoked:
            return "revoked"
        if self.is_expired():
            return "expired"
        return "active"


class IdempotentRequest(models.Model):
    """An ``Idempotency-Key`` an API key sent to an endpoint, with the answer to replay
    (``accounts.idempotency``). Each endpoint keeps its own table, unique on (the key's user, key
    text): every key of a user shares them (a retry under a rotated key replays the answer), and
    the same text from another user's key is another call."""

    id = models.BigAutoField(primary_key=True)
    api_key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, related_name="+")
    # The API key's user, which a key never changes: the unique index leads with it.
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+", db_index=False)
    idempotency_key = models.CharField(max_length=200)
    body_hash = models.CharField(max_length=64)
    finished = models.BooleanField(default=False)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return self.idempotency_key


class FormTokenUse(models.Model):
    """A one-time token of an admin form that acts once and shows a secret once (``accounts.form_tokens``),
    as it was used: one row per token, unique on it, written in the transaction of what the form did,
    so that the form sent again (a reloaded page, a double click) finds it and acts no more."""

    token = models.CharField(max_length=64, unique=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    purpose = models.CharField(max_length=100)
    subject = models.CharField(max_length=64, blank=True)
    result_id = models.BigIntegerField(null=True, blank=True)
    used_at = models.DateTimeField(default=timezone.now, db_index=True)

    def __str__(self) -> str:
        return f"{self.purpose} by user #{self.user_id} at {self.used_at:%Y-%m-%d %H:%M} UTC"


# Words an action's code spells otherwise: acronyms, and the model names some codes start with.
_ACTION_WORDS = {
    "api": "API",
    "apikey": "API key",
    "pushcontent": "push content",
    "approvalpolicy": "approval policy",
    "approvalrequest": "approval request",
    "deliveryrules": "delivery rules",
}


def audit_action_words(code: str) -> str:
    """An audit action's code in words, as the admin reads it: ``api_key_created`` → "API key created"."""
    text = " ".join(_ACTION_WORDS.get(word, word) for word in code.split("_") if word)
    return text[:1].upper() + text[1:]


class AuditEventQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise PermissionDenied("Audit events are append-only: they cannot be changed.")

    def delete(self):
        raise PermissionDenied("Audit events are append-only: they cannot be deleted.")


class AuditEvent(models.Model):
    """One thing that happened: who did which action to what, with a before/after summary.

    Append-only: saving an existing event or deleting one raises, here and (on PostgreSQL)
    in the database itself.
    """

    id = models.BigAutoField(primary_key=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True, editable=False)
    # No database constraint: deleting a user must not rewrite history (the label stays).
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        null=True,
        blank=True,
        related_name="+",
    )
    actor_label = models.CharField(max_length=150, blank=True)
    action = models.CharField(max_length=64, db_index=True)
    object_type = models.ForeignKey(
        ContentType, on_delete=models.DO_NOTHING, db_constraint=False, null=True, blank=True, related_name="+"
    )
    object_id = models.CharField(max_length=64, blank=True)
    object_label = models.CharField(max_length=200, blank=True)
    summary = models.JSONField(default=dict, blank=True)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["object_type", "object_id", "-created_at"], name="audit_object_idx"),
            models.Index(fields=["actor", "-created_at"], name="audit_actor_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.actor_label or 'system'} {audit_action_words(self.action)} {self.object_label}".strip()

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise PermissionDenied("Audit events are append-only: they cannot be changed.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise PermissionDenied("Audit events are append-only: they cannot be deleted.")


class ApprovalPolicy(models.Model):
    """Who must approve what. Administrators define policies; the newest activated matching one wins.

    When no active policy matches, any user whose role may approve that kind of object is an
    approver (the safe default): nothing is ever sent without an approval.
    """

    class SubjectType(models.TextChoices):
        CAMPAIGN = "campaign", "Campaigns"
        JOURNEY = "journey", "Journeys"

    name = models.CharField(max_length=120, unique=True)
    description = models.TextField(blank=True)
    applies_to_campaigns = models.BooleanField(default=True)
    applies_to_journeys = models.BooleanField(default=False)
    # Conditions: an empty list means "any".
    app_ids = models.JSONField(default=list, blank=True, help_text="Only objects of these apps (empty: any app).")
    campaign_kinds = models.JSONField(
        default=list, blank=True, help_text="Only these campaign kinds: scheduled, api_triggered (empty: any)."
    )
    purposes = models.JSONField(
        default=list, blank=True, help_text="Only these purposes: marketing, transactional (empty: any)."
    )
    approver_users = models.ManyToManyField(settings.AUTH_USER_MODEL, blank=True, related_name="+")
    approver_groups = models.ManyToManyField("auth.Group", blank=True, related_name="+")
    block_self_approval = models.BooleanField(
        default=True, help_text="Refuse an approval by the person who asked for it, even when they are an approver."
    )
    is_active = models.BooleanField(default=False, editable=False)
    activated_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "approval policies"
        ordering = ["-is_active", "-activated_at", "name"]

    def __str__(self) -> str:
        return self.name

    def matches(self, context: dict) -> bool:
        """Does this policy govern an object described by ``context`` (type, app_id, kind, purpose)?"""
        if context.get("type") == self.SubjectType.CAMPAIGN and not self.applies_to_campaigns:
            return False
        if context.get("type") == self.SubjectType.JOURNEY and not self.applies_to_journeys:
            return False
        if self.app_ids and context.get("app_id") not in self.app_ids:
            return False
        if self.campaign_kinds and context.get("kind") not in self.campaign_kinds:
            return False
        return not (self.purposes and context.get("purpose") not in self.purposes)


class ApprovalRequest(models.Model):
    """One submission of an object (a campaign, a journey version) for approval.

    The approvers are fixed when the request is opened (from the policy that matched then), so
    a later policy change never re-routes a request already waiting. A revision moving a campaign
    to another app is governed by the policies of both apps: its approver must be named by each
    (``policy``, the new app's, and ``source_policy``, the old app's), and self-approval is blocked
    when either blocks it.
    """

    class Status(models.TextChoices):
        PENDING = "pending", "Waiting for approval"
        APPROVED = "approved", "Approved"
        CHANGES_REQUESTED = "changes_requested", "Changes requested"
        CANCELLED = "cancelled", "Cancelled"
        VOIDED = "voided", "Voided by an edit"

    id = models.BigAutoField(primary_key=True)
    subject_type = models.ForeignKey(ContentType, on_delete=models.CASCADE, related_name="+")
    subject_id = models.CharField(max_length=64)
    subject_label = models.CharField(max_length=200)
    fingerprint = models.CharField(max_length=64, help_text="The content fingerprint at submission.")
    # What its subject was submitted as, in the words its review compares (a campaign's snapshot, a
    # journey version's): the review of the request that follows one sent back for changes shows
    # what changed since. None for a request opened before requests kept it.
    snapshot = models.JSONField(null=True, blank=True, editable=False)
    message = models.TextField(blank=True, help_text="What the requester says to the approvers.")
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    requested_at = models.DateTimeField(default=timezone.now)
    policy = models.ForeignKey(
        ApprovalPolicy, on_delete=models.SET_NULL, null=True, blank=True, related_name="requests"
    )
    approver_users = models.ManyToManyField(settings.AUTH_USER_MODEL, blank=True, related_name="+")
    approver_groups = models.ManyToManyField("auth.Group", blank=True, related_name="+")
    # A revision moving its subject to another app takes what it sends out of the app it sends to
    # now: that app's policy governs the move too, when another than ``policy`` (the row's app's).
    source_policy = models.ForeignKey(
        ApprovalPolicy,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name="policy of the app it moves out of",
    )
    source_approver_users = models.ManyToManyField(settings.AUTH_USER_MODEL, blank=True, related_name="+")
    source_approver_groups = models.ManyToManyField("auth.Group", blank=True, related_name="+")
    approve_perm = models.CharField(max_length=100, help_text="The role permission an approver needs.")
    block_self_approval = models.BooleanField(default=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING, db_index=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    comment = models.TextField(blank=True)

    class Meta:
        ordering = ["-requested_at", "-id"]
        permissions = [("decide_approvalrequest", "Can approve or request changes")]
        constraints = [
            models.UniqueConstraint(
                fields=["subject_type", "subject_id"],
                condition=models.Q(status="pending"),
                name="one_pending_request_per_subject",
            )
        ]
        indexes = [models.Index(fields=["subject_type", "subject_id", "-requested_at"], name="approval_subject_idx")]

    def __str__(self) -> str:
        return f"{self.subject_label} ({self.get_status_display()})"

    @property
    def policies(self) -> list[ApprovalPolicy]:
        """The policies that govern this request: none (any approver), one, or a move's two."""
        return [policy for policy in (self.policy, self.source_policy) if policy is not None]

    @property
    def subject(self):
        """The campaign or journey asked about; None once it was deleted (a draft can be)."""
        return self.subject_type.model_class()._default_manager.filter(pk=self.subject_id).first()


class VersionStamp(models.Model):
    """A version stamp kept in the database when there is no Redis (the embedded mode).

    Per-process caches (API keys, users' permissions, campaigns' approved content) remember the
    stamp they were loaded under; a change bumps it, and the next request reloads. See
    ``accounts.stamps``.
    """

    name = models.CharField(max_length=100, primary_key=True)
    value = models.CharField(max_length=32)

    def __str__(self) -> str:
        return f"{self.name} = {self.value}"


class GrantStamp(models.Model):
    """Who granted an object permission and when, kept on the permission row itself (the access
    services stamp it; a row written otherwise, such as before this was kept, shows neither)."""

    granted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+", editable=False
    )
    granted_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        abstract = True
