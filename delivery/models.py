from django.conf import settings
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone
from guardian.models import GroupObjectPermissionBase, UserObjectPermissionBase

from accounts.encryption import EncryptedTextField
from accounts.models import GrantStamp
from config.db import among


class ConversionGoal(models.Model):
    """What counts as a conversion for a campaign or a journey: a report setting (``delivery.conversions``).

    A profile converts when it does ``conversion_event`` (whose properties meet ``conversion_where``,
    the audiences' event property conditions) within ``conversion_window_hours`` after its delivery
    was accepted, or opened. It changes what the report counts, never what is sent.
    """

    class Anchor(models.TextChoices):
        ACCEPTED = "accepted", "Accepted by Apple or Google"
        OPENED = "opened", "Opened"

    conversion_event = models.CharField(
        max_length=100, blank=True, help_text="The event that counts as a conversion, e.g. purchase (blank: none)."
    )
    conversion_where = models.JSONField(
        default=list, blank=True, help_text="Property conditions the event must meet, as in a segment's event rule."
    )
    conversion_window_hours = models.PositiveIntegerField(
        default=24, help_text="How long after the anchor an event counts, in hours."
    )
    conversion_anchor = models.CharField(
        max_length=10, choices=Anchor.choices, default=Anchor.ACCEPTED, help_text="Counted from when the push was…"
    )

    class Meta:
        abstract = True


class App(models.Model):
    """A mobile app and its channel configuration; also the scope that object access is granted on."""

    has_object_access = True

    name = models.CharField(max_length=100, unique=True)
    rate_limit_per_second = models.PositiveIntegerField(
        default=1000, help_text="Most messages per second sent for this app, across all workers."
    )
    uses_simulator = models.BooleanField(
        "send to the push simulator",
        default=False,
        help_text="Send to the push simulator (manage.py pushsim) instead of Apple and Google: "
        "for trying campaigns before holding real credentials.",
    )

    # APNs, token-based authentication. The .p8 key is encrypted at rest and never shown again.
    class ApnsEnvironment(models.TextChoices):
        PRODUCTION = "production", "Production"
        SANDBOX = "sandbox", "Sandbox (development builds)"

    apns_team_id = models.CharField("APNs team id", max_length=10, blank=True)
    apns_key_id = models.CharField("APNs key id", max_length=10, blank=True)
    apns_bundle_id = models.CharField(
        "bundle id", max_length=155, blank=True, help_text="The iOS app's bundle id: the apns-topic of its pushes."
    )
    apns_environment = models.CharField(
        "APNs environment", max_length=10, choices=ApnsEnvironment.choices, default=ApnsEnvironment.PRODUCTION
    )
    apns_private_key = EncryptedTextField(blank=True, editable=False)
    apns_private_key_fingerprint = models.CharField(max_length=40, blank=True, editable=False)
    apns_private_key_set_at = models.DateTimeField(null=True, blank=True, editable=False)

    # FCM HTTP v1: the service-account JSON (encrypted), and what is read from it.
    fcm_service_account = EncryptedTextField(blank=True, editable=False)
    fcm_service_account_fingerprint = models.CharField(max_length=40, blank=True, editable=False)
    fcm_service_account_set_at = models.DateTimeField(null=True, blank=True, editable=False)
    fcm_project_id = models.CharField("FCM project id", max_length=100, blank=True, editable=False)
    fcm_client_email = models.CharField("service account", max_length=254, blank=True, editable=False)

    # Identity verification: the key an app ships is public, so a backend proves which external id
    # a phone signed in as by handing it identity_hash = HMAC-SHA256(secret, external_id), which a key
    # without the read scope must then send with a device registration. The secret is encrypted at
    # rest and shown once, when generated.
    identity_secret = EncryptedTextField(blank=True, editable=False)
    identity_secret_fingerprint = models.CharField(max_length=40, blank=True, editable=False)
    identity_secret_set_at = models.DateTimeField(null=True, blank=True, editable=False)
    identity_verification_required = models.BooleanField(
        "require identity verification",
        default=False,
        help_text="A device registered with a key without the read scope (the key the app ships) must carry "
        "identity_hash, the HMAC-SHA256 of its external id under the app's identity secret, computed by your "
        "backend. Generate the secret first (list action 'Generate a new identity secret').",
    )

    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+", editable=False
    )

    class Meta:
        ordering = ["name"]
        permissions = [("test_connection_app", "Can test an app's provider connection")]

    def __str__(self) -> str:
        return self.name

    @property
    def apns_configured(self) -> bool:
        return bool(
            self.apns_private_key_fingerprint and self.apns_team_id and self.apns_key_id and self.apns_bundle_id
        )

    @property
    def fcm_configured(self) -> bool:
        return bool(self.fcm_service_account_fingerprint and self.fcm_project_id)


class AppUserObjectPermission(UserObjectPermissionBase, GrantStamp):
    content_object = models.ForeignKey(App, on_delete=models.CASCADE)

    def __str__(self) -> str:
        # The user page's "Access to apps" rows are headed by it: guardian's reads "Shop | alice | view_app".
        return f"{self.user}'s access to {self.content_object}"


class AppGroupObjectPermission(GroupObjectPermissionBase, GrantStamp):
    content_object = models.ForeignKey(App, on_delete=models.CASCADE)


# --- the send pipeline ----------------------------------------------------------------------------


class Platform(models.TextChoices):
    IOS = "ios", "iOS"
    ANDROID = "android", "Android"


class Device(models.Model):
    """A push token of one app on one phone, belonging to a profile.

    Unique per (app, token): registering a known token again moves it to the new profile. An
    APNs token is kept in lowercase (its case says nothing), so the same phone's token in capitals
    is the same device.
    A provider's "this token is dead" answer deactivates it (``active`` false, with the
    reason and time); it is never targeted again until the app registers it anew.
    """

    id = models.BigAutoField(primary_key=True)
    profile = models.ForeignKey("audiences.Profile", on_delete=models.CASCADE, related_name="devices")
    app = models.ForeignKey(App, on_delete=models.CASCADE, related_name="devices", db_index=False)
    platform = models.CharField(max_length=8, choices=Platform.choices)
    token = models.CharField(max_length=512)
    push_enabled = models.BooleanField(default=True, help_text="The phone's opt-in to notifications.")
    is_test = models.BooleanField(default=False, help_text="A test device: receives test sends.")
    active = models.BooleanField(default=True)
    invalidated_at = models.DateTimeField(null=True, blank=True)
    invalidated_reason = models.CharField(max_length=100, blank=True)
    last_registered_at = models.DateTimeField(default=timezone.now)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["-id"]
        # A test device gets test sends of content nobody approved: who may make one is a role's right.
        permissions = [("mark_test_device", "Can mark, unmark and register test devices")]
        constraints = [
            models.UniqueConstraint(fields=["app", "token"], name="device_app_token_unique"),
            # An APNs token's case says nothing (it is hexadecimal): kept in lowercase, the unique
            # (app, token) above holds for it whatever the case, without a second index on the table.
            models.CheckConstraint(
                condition=~models.Q(platform="ios") | models.Q(token=Lower("token")),
                name="device_ios_token_lowercase",
            ),
        ]
        indexes = [
            models.Index(fields=["app", "is_test"], name="device_app_test_idx"),
            # The devices a provider refused, per app (the dead-tokens gauge), without reading the others.
            models.Index(
                fields=["app"],
                include=["invalidated_reason"],
                condition=models.Q(invalidated_at__isnull=False),
                name="device_invalidated_idx",
            ),
            # A profile's devices of an app, read from the index alone (a dispatch's targeting, the rules'
            # reachable condition; an audience's reach is read from the profiles on PostgreSQL).
            models.Index(
                fields=["app", "profile"],
                include=["platform", "push_enabled"],
                condition=models.Q(active=True),
                name="device_app_profile_reach_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_platform_display()} …{self.token[-8:]}"


class DeviceTombstone(models.Model):
    """A deleted device that a winner-mode sample reached, known by its token's digest, or that
    had rows not final yet, known by its platform.

    A device's row goes (deleted in the admin, with its profile, by any bulk deletion) and the app
    may register the same token again: a new device, with a new id, that the sample's rows do not
    name. Winner mode's rest knows it by this row: ``successor_id`` is the device holding the token
    now, and the rest leaves it out as it leaves out the devices of the sample's rows.

    Written by the database, not by Django: a trigger on ``delivery_device`` (migration 0037) adds a
    row for each deleted device with a row (not skipped) in a winner sample whose rest is not
    resolved yet, and links the tombstones of a token to the device that registers it again, so that
    every path that deletes or inserts devices, set-based ones included, keeps it. Only the token's
    SHA-256 is kept (hexadecimal, of the token as the device kept it: an APNs token in lowercase):
    after a profile's erasure nothing here says which phone it was. Retention deletes the rows no
    winner test still waiting to send its rest could need (``device_tombstones_delete``).

    The same trigger keeps the ``platform`` of a deleted device that had rows not final yet in a
    dispatch still running (queued, or held by a worker): those rows were counted as targeted
    under it, and their outcomes, which come after the device is gone, are counted under it too
    (``delivery.services.rollups``), so that no platform keeps a row pending for ever. Retention
    keeps such a row while a running dispatch has rows of its device not final yet
    (``device_tombstones_delete``).
    """

    id = models.BigAutoField(primary_key=True)
    app = models.ForeignKey(App, on_delete=models.CASCADE, related_name="+", db_index=False)
    token_digest = models.CharField(max_length=64, help_text="SHA-256 of the token, hexadecimal.")
    device_id = models.BigIntegerField(help_text="The device deleted.")
    successor_id = models.BigIntegerField(
        null=True, blank=True, help_text="The device that registered the same token since, if any."
    )
    platform = models.CharField(
        max_length=8,
        blank=True,
        default="",
        help_text="Its platform, kept when it had rows not final yet: their outcomes count under it.",
    )
    deleted_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [
            # A registration's lookup of its token (the insert trigger).
            models.Index(fields=["app", "token_digest"], name="device_tombstone_token_idx"),
            models.Index(fields=["deleted_at"], name="device_tombstone_deleted_idx"),
            # The platform of a row's deleted device, when its outcome is counted.
            models.Index(fields=["device_id"], name="device_tombstone_device_idx"),
        ]

    def __str__(self) -> str:
        return f"device {self.device_id} deleted {self.deleted_at:%Y-%m-%d %H:%M}"


def _object_copy(value):
    """A content's JSON object as its spec keeps it: a copy, or {} for none; a value of another
    type (a number, a list) is kept as it is, for ``spec_validate`` to refuse."""
    return dict(value) if isinstance(value, dict) else (value or {})


class PushContent(models.Model):
    """A push message as authored: texts (Liquid), tap action, options per platform, locale variants.

    Written only through ``delivery.services.contents.pushcontent_save``, which validates the templates,
    URLs and worst-case payload sizes. ``spec()`` is the frozen form a Dispatch keeps.
    """

    has_object_access = True
    access_scope_field = "app"

    class TapAction(models.TextChoices):
        OPEN_APP = "open_app", "open the app"
        DEEP_LINK = "deep_link", "open a deep link"
        URL = "url", "open a web page"

    class InterruptionLevel(models.TextChoices):
        DEFAULT = "", "default"
        PASSIVE = "passive", "passive"
        ACTIVE = "active", "active"
        TIME_SENSITIVE = "time-sensitive", "time sensitive"
        CRITICAL = "critical", "critical"

    class AndroidPriority(models.TextChoices):
        HIGH = "high", "high"
        NORMAL = "normal", "normal"

    app = models.ForeignKey(App, on_delete=models.PROTECT, related_name="push_contents")
    name = models.CharField(max_length=200)
    title = models.CharField(max_length=1000, blank=True, help_text="Liquid: {{ profile.attributes.first_name }}")
    subtitle = models.CharField(max_length=1000, blank=True, help_text="Shown on iOS only.")
    body = models.TextField(blank=True)
    image_url = models.CharField(max_length=2000, blank=True)
    tap_action = models.CharField(max_length=10, choices=TapAction.choices, default=TapAction.OPEN_APP)
    tap_url = models.CharField(max_length=2000, blank=True, help_text="The deep link or web page to open.")
    data = models.JSONField(default=dict, blank=True, help_text="Custom data: key → string (Liquid allowed).")
    ios_sound = models.CharField(max_length=100, blank=True, default="default")
    ios_badge = models.PositiveIntegerField(null=True, blank=True)
    ios_category = models.CharField(max_length=100, blank=True)
    ios_thread_id = models.CharField(max_length=100, blank=True)
    ios_interruption_level = models.CharField(
        max_length=20, choices=InterruptionLevel.choices, blank=True, default=InterruptionLevel.DEFAULT
    )
    ios_mutable_content = models.BooleanField(default=False)
    android_channel_id = models.CharField(max_length=100, blank=True)
    android_icon = models.CharField(max_length=100, blank=True)
    android_color = models.CharField(max_length=7, blank=True, help_text="#rrggbb")
    android_priority = models.CharField(max_length=6, choices=AndroidPriority.choices, default=AndroidPriority.HIGH)
    silent = models.BooleanField(default=False, help_text="A background push: no alert, sound or badge.")
    ttl_seconds = models.PositiveIntegerField(default=86400, help_text="Seconds the providers keep trying.")
    collapse_key = models.CharField(max_length=64, blank=True)
    default_locale = models.CharField(max_length=35, default="en", help_text="The language of the texts above.")
    variants = models.JSONField(
        default=dict, blank=True, help_text='Per locale: {"fr": {"title": "...", "body": "..."}}.'
    )
    version = models.PositiveIntegerField(default=1, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+", editable=False
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["-updated_at", "-id"]
        verbose_name = "push content"
        verbose_name_plural = "push contents"
        permissions = [("test_send_pushcontent", "Can send push content to test devices")]

    def __str__(self) -> str:
        return self.name

    @classmethod
    def platform_options(cls, platform: str) -> dict[str, str]:
        """The options of ``platform`` ("ios", "android") by their key in the spec, each in words as
        the content form labels its field (``ios_thread_id``: "thread id"), in the fields' order."""
        prefix = f"{platform}_"
        keys = [field.name.removeprefix(prefix) for field in cls._meta.fields if field.name.startswith(prefix)]
        return {key: key.replace("_", " ") for key in keys}

    def spec(self) -> dict:
        """The frozen form of this content: what a Dispatch keeps and the payload builders read."""
        return {
            "title": self.title,
            "subtitle": self.subtitle,
            "body": self.body,
            "image_url": self.image_url,
            "tap_action": self.tap_action,
            "tap_url": self.tap_url,
            "data": _object_copy(self.data),
            "ios": {
                "sound": self.ios_sound,
                "badge": self.ios_badge,
                "category": self.ios_category,
                "thread_id": self.ios_thread_id,
                "interruption_level": self.ios_interruption_level,
                "mutable_content": self.ios_mutable_content,
            },
            "android": {
                "channel_id": self.android_channel_id,
                "icon": self.android_icon,
                "color": self.android_color,
                "priority": self.android_priority,
            },
            "silent": self.silent,
            "ttl_seconds": self.ttl_seconds,
            "collapse_key": self.collapse_key,
            "default_locale": self.default_locale,
            "variants": _object_copy(self.variants),
        }

    def fingerprint(self) -> str:
        """A digest of everything that is sent: equal fingerprints, identical messages."""
        return spec_fingerprint(self.spec())


def spec_fingerprint(spec: dict) -> str:
    """The digest of a content's ``spec()``: what ``PushContent.fingerprint`` is, for a spec already read."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


class PushContentUserObjectPermission(UserObjectPermissionBase, GrantStamp):
    content_object = models.ForeignKey(PushContent, on_delete=models.CASCADE)


class PushContentGroupObjectPermission(GroupObjectPermissionBase, GrantStamp):
    content_object = models.ForeignKey(PushContent, on_delete=models.CASCADE)


class DispatchQuerySet(models.QuerySet):
    def running(self):
        """The dispatches preparing or sending, read through the unfinished ones' partial index
        (``dispatch_unfinished_idx``: a running dispatch has no finish time)."""
        return self.filter(finished_at__isnull=True, status__in=Dispatch.RUNNING_STATUSES)


def rows_within(rows: models.QuerySet, after_id: int | None, until_id: int | None) -> models.QuerySet:
    """``rows`` (deliveries) narrowed to the ids a dispatch's rows lie between (``Dispatch.rows``)."""
    if after_id:
        rows = rows.filter(id__gt=after_id)
    if until_id is not None:
        rows = rows.filter(id__lte=until_id)
    return rows


class Dispatch(models.Model):
    """One send run: a campaign execution, a journey step batch, or a test send; or a *standing*
    dispatch (a stream) that the API triggers of one approved version of a campaign (or the event
    entries of a journey's push step) append their rows to during one UTC day.

    Keeps a frozen copy of the content (``content_spec``): editing the PushContent never
    reaches a send in flight. Counters are kept up to date by the send tasks.
    """

    has_object_access = True
    access_scope_field = "app"

    class Kind(models.TextChoices):
        CAMPAIGN = "campaign", "Campaign"
        API_TRIGGER = "api_trigger", "API trigger"
        JOURNEY = "journey", "Journey step"
        TEST = "test", "Test send"

    class Status(models.TextChoices):
        PREPARING = "preparing", "Preparing"
        SENDING = "sending", "Sending"
        DONE = "done", "Done"
        STOPPED = "stopped", "Stopped"
        FAILED = "failed", "Failed"

    FINAL_STATUSES = (Status.DONE, Status.STOPPED, Status.FAILED)
    RUNNING_STATUSES = (Status.PREPARING, Status.SENDING)

    id = models.BigAutoField(primary_key=True)
    app = models.ForeignKey(App, on_delete=models.PROTECT, related_name="dispatches")
    kind = models.CharField(max_length=12, choices=Kind.choices)
    source_id = models.BigIntegerField(null=True, blank=True, help_text="The campaign or journey that sent it.")
    label = models.CharField(max_length=300, blank=True)
    content = models.ForeignKey(PushContent, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    content_spec = models.JSONField(help_text="The content as it was when the dispatch was created.")
    context = models.JSONField(default=dict, blank=True, help_text="The trigger's payload: context.* in Liquid.")
    variants = models.JSONField(
        default=list,
        blank=True,
        help_text="A campaign's variants, frozen: [{number, label, content_id, share, spec}]; empty: one content.",
    )
    holdout_share = models.PositiveSmallIntegerField(default=0, help_text="The percentage that gets nothing.")
    sample = models.JSONField(
        default=dict,
        blank=True,
        help_text="A winner-mode campaign's part: {part: 'sample' or 'rest', share, test}; empty: the whole audience.",
    )
    segment = models.ForeignKey("audiences.Segment", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    profile_ids = models.JSONField(null=True, blank=True, help_text="An explicit audience (API trigger).")
    rate_limit_per_second = models.PositiveIntegerField(null=True, blank=True, help_text="This run's own throttle.")
    local_time = models.CharField(
        max_length=19,
        blank=True,
        help_text="Send at this wall-clock time (YYYY-MM-DDTHH:MM:SS) in each profile's time zone.",
    )
    local_default_timezone = models.CharField(
        max_length=64, blank=True, help_text="The time zone of profiles without one, for local-time sends."
    )
    time_zone = models.CharField(
        max_length=64,
        blank=True,
        help_text="The zone the send is scheduled in (its campaign's), which its content's now renders in; "
        "at a local time, each profile's own. Empty: the server's clock (UTC), as a journey's.",
    )
    local_late_minutes = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="For a local-time send: how late a time zone may still be sent to when the rows are resolved; "
        "the rows of a zone later than that are skipped (missed_local_time). Empty: sent however late.",
    )
    purpose = models.CharField(
        max_length=20,
        choices=[("marketing", "marketing"), ("transactional", "transactional")],
        default="marketing",
        help_text="Marketing sends obey the app's delivery rules; transactional ones bypass them.",
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PREPARING)
    error = models.TextField(blank=True)
    total = models.BigIntegerField(default=0)
    accepted = models.BigIntegerField(default=0)
    failed = models.BigIntegerField(default=0)
    skipped = models.BigIntegerField(default=0)
    unknown = models.BigIntegerField(default=0)
    opened = models.BigIntegerField(default=0)
    retries = models.JSONField(
        default=dict, blank=True, help_text="Sends retried, by the provider's reason: {reason: count}."
    )
    by_platform = models.JSONField(
        default=dict,
        blank=True,
        editable=False,
        help_text="Final outcomes per platform: {platform: {outcome: count}} ('none' for rows without a device). "
        "Accepted and failed move with each batch; the whole is recounted when the dispatch finishes.",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+", editable=False
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    standing = models.BooleanField(
        default=False, editable=False, help_text="A stream: calls append rows to it and senders drain it as they come."
    )
    stream_version = models.CharField(
        max_length=64, blank=True, editable=False, help_text="The approved fingerprint (or step) this stream sends."
    )
    stream_day = models.DateField(null=True, blank=True, editable=False, help_text="The UTC day this stream covers.")
    rows_deleted_at = models.DateTimeField(
        null=True,
        blank=True,
        editable=False,
        help_text="When retention last deleted some of its deliveries: figures counted from them before are void.",
    )
    # Where its deliveries lie in the table's id order (ids only grow): a walk of one dispatch's rows
    # by id reads from its first row to its last instead of from the table's first or last row
    # (``rows``). Empty on dispatches made before they were kept: no bound then.
    rows_after_id = models.BigIntegerField(
        null=True, blank=True, editable=False, help_text="Every delivery of it has a larger id (set when it is made)."
    )
    rows_until_id = models.BigIntegerField(
        null=True,
        blank=True,
        editable=False,
        help_text="Every delivery of it has an id at most this (set once no row can be added to it).",
    )

    objects = DispatchQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "dispatches"
        permissions = [("stop_dispatch", "Can stop a dispatch")]
        indexes = [
            models.Index(fields=["kind", "source_id"], name="dispatch_source_idx"),
            # What a metrics scrape reads: the unfinished dispatches, and those finished since a time.
            models.Index(
                fields=["status"], condition=models.Q(finished_at__isnull=True), name="dispatch_unfinished_idx"
            ),
            models.Index(fields=["finished_at"], name="dispatch_finished_idx"),
            # Winner-mode samples per app: what a device's deletion looks for (``DeviceTombstone``).
            models.Index(fields=["app"], condition=models.Q(sample__part="sample"), name="dispatch_sample_idx"),
            # A campaign's sends, the newest first (its page's latest, their list): its two kinds are the
            # condition, not a column, so the newest of both come in one ordered scan; the app is
            # included, so counting those a user may see through the app's scope reads the index alone.
            models.Index(
                fields=["source_id", "created_at", "id"],
                include=["app"],
                condition=models.Q(kind__in=["campaign", "api_trigger"]),
                name="dispatch_campaign_sends_idx",
            ),
        ]
        constraints = [
            # One open stream per source, version and day (a closed one may be followed by another).
            models.UniqueConstraint(
                fields=["kind", "source_id", "stream_version", "stream_day"],
                condition=models.Q(standing=True, status__in=["preparing", "sending"]),
                name="dispatch_stream_once",
            )
        ]

    def __str__(self) -> str:
        return self.label or f"Dispatch #{self.pk}"

    def save(self, *args, **kwargs):
        if self._state.adding and self.rows_after_id is None:
            # Made before any of its rows: each later one takes a larger id from the sequence.
            self.rows_after_id = Delivery.objects.aggregate(high=models.Max("id"))["high"] or 0
        super().save(*args, **kwargs)

    def rows(self) -> models.QuerySet:
        """Its deliveries, bounded by id where it is known where they lie (``rows_after_id``,
        ``rows_until_id``): ordered by id, a page reads its own rows, not the whole table's."""
        return rows_within(Delivery.objects.filter(dispatch_id=self.pk), self.rows_after_id, self.rows_until_id)

    def rows_close(self) -> None:
        """Note that no row can be added to it any more (its audience resolved, or its stream
        finished or stopped under its lock): every row it has took an id no larger than the
        table's largest now. The caller saves ``rows_until_id``."""
        self.rows_until_id = Delivery.objects.aggregate(high=models.Max("id"))["high"] or 0

    def spec_for(self, variant: int | None) -> dict:
        """The frozen content a row of this variant sends (the dispatch's own without variants)."""
        if variant:
            for frozen in self.variants:
                if frozen["number"] == variant:
                    return frozen["spec"]
        return self.content_spec

    def all_specs(self) -> list[dict]:
        return [v["spec"] for v in self.variants] or [self.content_spec]

    @property
    def campaign_sent_by(self) -> int | None:
        """The campaign that sent it (its source), or, for a test send, the one it tested (its
        context names it: a test's source is its content); None for any other."""
        if self.kind in (self.Kind.CAMPAIGN, self.Kind.API_TRIGGER):
            return self.source_id
        if self.kind == self.Kind.TEST:
            tested = (self.context or {}).get("campaign")
            named = tested.get("id") if isinstance(tested, dict) else None
            return named if isinstance(named, int) and not isinstance(named, bool) else None
        return None

    @property
    def done_count(self) -> int:
        return self.accepted + self.failed + self.skipped + self.unknown

    @property
    def percent(self) -> float:
        if self.status == self.Status.DONE:
            return 100.0
        return round(100.0 * self.done_count / self.total, 1) if self.total else 0.0


class DispatchUserObjectPermission(UserObjectPermissionBase, GrantStamp):
    content_object = models.ForeignKey(Dispatch, on_delete=models.CASCADE)


class DispatchGroupObjectPermission(GroupObjectPermissionBase, GrantStamp):
    content_object = models.ForeignKey(Dispatch, on_delete=models.CASCADE)


class Delivery(models.Model):
    """One (dispatch, device): queued → sending → accepted / failed / skipped / unknown.

    Rows without a device record a profile that was skipped (no device). ``unknown`` is a row a
    worker claimed and never reported on (it died): it is never sent again, since a duplicate
    push is worse than a missing one. ``profile_id`` is a plain key (no constraint) so that
    deleting a profile never scans this table; ``dispatch_id`` and ``device_id`` are plain keys
    too: a constraint checks (and locks) the dispatch and the device once per row written, which
    made resolving an audience grow faster than the audience. Deleting a dispatch goes through
    the ORM (cascade). Deleting a device (or its profile, or its app) leaves its rows as they are:
    like ``profile_id``, ``device_id`` keeps naming the device the row was for, which no longer
    exists; a row of it not sent yet fails as ``device_deleted``, and readers join the device
    (LEFT JOIN, ``select_related``) and find none. ``device_id`` has no index of its own: every
    row would write an entry there (the outcome too: it is not a heap-only update), and only
    a device's deletion read it.
    """

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        SENDING = "sending", "Sending"
        ACCEPTED = "accepted", "Accepted"
        FAILED = "failed", "Failed"
        SKIPPED = "skipped", "Skipped"
        UNKNOWN = "unknown", "Unknown (may have been delivered)"

    FINAL_STATUSES = (Status.ACCEPTED, Status.FAILED, Status.SKIPPED, Status.UNKNOWN)

    id = models.BigAutoField(primary_key=True)
    dispatch = models.ForeignKey(
        Dispatch, on_delete=models.CASCADE, related_name="deliveries", db_index=False, db_constraint=False
    )
    device = models.ForeignKey(
        Device,
        on_delete=models.DO_NOTHING,
        null=True,
        blank=True,
        related_name="deliveries",
        db_constraint=False,
        db_index=False,
    )
    profile = models.ForeignKey(
        "audiences.Profile",
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        db_index=False,
        null=True,
        blank=True,
        related_name="+",
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    reason = models.CharField(max_length=100, blank=True)
    provider_message_id = models.CharField(max_length=200, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    # When the quiet hours that held it back end, set by the hold and kept once it is sent: its wait
    # was the app's rules, not the system's, so trigger latency figures leave it out. A retry's wait
    # (also in next_attempt_at) leaves it empty.
    held_until = models.DateTimeField(null=True, blank=True)
    # The end of its hold plus the TTL, for a row a rule or a local time held back; empty: the
    # dispatch's start plus the TTL. Every attempt sends what remains until then.
    expires_at = models.DateTimeField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    opened_at = models.DateTimeField(null=True, blank=True)
    queued_at = models.DateTimeField(
        null=True, blank=True, help_text="When a call appended it to a standing dispatch (empty for bulk runs)."
    )
    context = models.JSONField(
        null=True, blank=True, help_text="The call's context (context.* in Liquid), for rows of a standing dispatch."
    )
    variant = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="The campaign variant it sends (1 = A…), 0 for the holdout; empty: none."
    )

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "deliveries"
        # A bulk run sends once per device; a standing dispatch takes every call's rows (queued_at set).
        constraints = [
            models.UniqueConstraint(
                fields=["dispatch", "device"],
                condition=models.Q(queued_at__isnull=True),
                name="delivery_dispatch_device_unique",
            ),
            models.UniqueConstraint(
                fields=["dispatch", "profile"],
                condition=models.Q(device__isnull=True, queued_at__isnull=True),
                name="delivery_dispatch_profile_nodevice_unique",
            ),
        ]
        # Each index costs every write of every row it covers (three per send: the resolve, the
        # claim, the outcome). No index names the columns a claim changes (status, attempts,
        # lease_expires_at), so a claim is a heap-only update: its new row version stays on its
        # page (the table's fillfactor leaves room) and no index is written. Rows not finished
        # (queued or in flight: finished_at is empty exactly then) are found through the claim
        # index; finished rows enter the outcomes' time index.
        indexes = [
            models.Index(
                fields=["dispatch", "id"], condition=models.Q(finished_at__isnull=True), name="delivery_claim_idx"
            ),
            # The frequency cap counts a profile's recent deliveries; a device's page lists its
            # finished ones. Finished rows only: a row not sent yet (the resolve writes a million
            # at once) costs no entry here, and is found through its running dispatch instead.
            models.Index(
                fields=["profile", "finished_at"],
                condition=models.Q(finished_at__isnull=False),
                name="delivery_profile_finished_idx",
            ),
            # The rows of a report's sends opened since a time, whatever their send (conversions
            # anchored at the open grow by these): few rows, found without a probe per send.
            models.Index(fields=["opened_at"], condition=models.Q(opened_at__isnull=False), name="delivery_opened_idx"),
            # A report's opens by send: the latest of each, those since a time (conversions anchored
            # at the open), whatever the other sends' opens. Opened rows only: nothing on the send path.
            models.Index(
                fields=["dispatch", "opened_at"],
                condition=models.Q(opened_at__isnull=False),
                name="delivery_dispatch_opened_idx",
            ),
            # A standing dispatch's live rate and latency read its last minute; its rows not sent
            # yet are a trigger's cap's pushes on their way, found here without a bulk send's rows
            # (so an append writes an entry too: a finished-only index made the cap walk those).
            models.Index(
                fields=["dispatch", "finished_at"],
                condition=models.Q(queued_at__isnull=False),
                name="delivery_stream_recent_idx",
            ),
            # A dispatch's pushes held until the quiet hours end (queued saying why), by when they
            # go: its page counts them apart and reads the first's time here. Only held rows have
            # an entry (the rules' hold writes it, the outcome that replaces the reason removes it);
            # a claim changes no column it names.
            models.Index(
                fields=["dispatch", "next_attempt_at"],
                condition=models.Q(reason="quiet_hours", finished_at__isnull=True),
                name="delivery_held_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"Delivery #{self.pk}"

    @staticmethod
    def of_dispatches(dispatch_ids) -> models.Q:
        """The rows of these dispatches (ids, or a query of them, which the database reads:
        ``among``), put so that the planner may read them through the two partial indexes that
        lead with the dispatch (a bulk run's rows, a stream's rows) instead of scanning every
        dispatch's rows: no index covers a dispatch's finished rows alone."""
        ids = dispatch_ids if isinstance(dispatch_ids, models.QuerySet) else list(dispatch_ids)
        return models.Q(among("dispatch_id", ids), queued_at__isnull=True) | models.Q(
            among("dispatch_id", ids), queued_at__isnull=False
        )


class DispatchProfiles(models.Model):
    """Distinct profiles per group (a variant, a journey step) among a *settled* dispatch's rows,
    kept once: a figure a rollup cannot sum (one profile may have several devices and rows).

    A dispatch is settled when it is final and no row of it is queued or in flight: its rows'
    statuses no longer change then (an open sets ``opened_at`` only), so neither do these counts.
    ``name`` says which rows were counted and by what (``delivery.reports.profiles_by``); ``counts``
    is ``[[group, profiles], ...]``. Written lazily by the first report that asks, under a key-share
    lock on the dispatch; retention, which deletes rows, takes the dispatch's row lock and deletes
    these in the same transaction, having kept the profiles its report counts (``KeptProfile``).
    """

    id = models.BigAutoField(primary_key=True)
    dispatch = models.ForeignKey(Dispatch, on_delete=models.CASCADE, related_name="+", db_index=False)
    name = models.CharField(max_length=60)
    counts = models.JSONField(default=list)
    counted_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "dispatch profiles"
        constraints = [models.UniqueConstraint(fields=["dispatch", "name"], name="dispatch_profiles_once")]

    def __str__(self) -> str:
        return f"{self.dispatch_id} {self.name}"


class KeptFigure(models.Model):
    """A report's per-profile figure for one group, whose profiles retention kept (``KeptProfile``)
    when it deleted the rows they were counted from: so a report's per-profile figures (profiles per
    variant, profiles reached, conversions) still count the sends whose rows are gone, each profile
    once.

    ``scope`` is the report the rows belonged to (``campaign:<id>``, ``journey_version:<id>``),
    ``name`` the figure (as ``profiles_by`` names it; a conversion's name carries its goal's
    fingerprint, so a goal changed later counts only the rows still there), ``grp`` the group's
    value as text ("" for none). Written by retention (``delivery.kept.keep_profiles``).
    """

    id = models.BigAutoField(primary_key=True)
    scope = models.CharField(max_length=40)
    name = models.CharField(max_length=60)
    grp = models.CharField(max_length=100)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["scope", "name", "grp"], name="kept_figure_once")]

    def __str__(self) -> str:
        return f"{self.scope} {self.name} {self.grp}"


class KeptProfile(models.Model):
    """One profile a kept figure counts: one row per profile per figure and group, however many
    sends and devices reached it, two integers (far fewer and smaller rows than the deliveries they
    stand for). Written in the transaction that deletes a dispatch's first rows."""

    pk = models.CompositePrimaryKey("figure_id", "profile_id")
    # No index of its own (the key leads with it) and no constraint checked per row written, as
    # deliveries: only retention writes these, after the figure it names.
    figure = models.ForeignKey(
        KeptFigure, on_delete=models.CASCADE, related_name="+", db_index=False, db_constraint=False
    )
    profile_id = models.BigIntegerField()

    def __str__(self) -> str:
        return f"{self.figure_id} {self.profile_id}"


class RateBucket(models.Model):
    """The state of one send-rate limiter when the database keeps it (no Redis)."""

    key = models.CharField(max_length=200, primary_key=True)
    tat = models.FloatField(default=0.0, help_text="The bucket's theoretical arrival time (epoch seconds).")

    def __str__(self) -> str:
        return self.key


class DeliveryRules(models.Model):
    """An app's rules for marketing pushes: a frequency cap and quiet hours.

    Applied when a dispatch resolves its audience (``delivery.rules``), and quiet hours again when a
    send (bulk or stream) claims a row; a push they hold back is recorded with the rule as its reason.
    Transactional sends and test sends bypass them.
    """

    class QuietMode(models.TextChoices):
        DELAY = "delay", "hold until the quiet hours end"
        DISCARD = "discard", "skip the push"

    app = models.OneToOneField(App, on_delete=models.CASCADE, related_name="delivery_rules")
    frequency_cap = models.PositiveIntegerField(
        null=True, blank=True, help_text="At most this many marketing pushes per profile in the window (empty: no cap)."
    )
    frequency_window_hours = models.PositiveIntegerField(default=24, help_text="The cap's rolling window, in hours.")
    quiet_start = models.TimeField(null=True, blank=True, help_text="Quiet hours start, in the profile's time zone.")
    quiet_end = models.TimeField(null=True, blank=True, help_text="Quiet hours end (may be the next day).")
    quiet_mode = models.CharField(max_length=10, choices=QuietMode.choices, default=QuietMode.DELAY)
    default_timezone = models.CharField(max_length=64, default="UTC", help_text="For profiles without a time zone.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "delivery rules"
        verbose_name_plural = "delivery rules"

    def __str__(self) -> str:
        return f"Delivery rules of {self.app}"

    @property
    def has_quiet_hours(self) -> bool:
        return self.quiet_start is not None and self.quiet_end is not None and self.quiet_start != self.quiet_end


class DeliveryRollup(models.Model):
    """The deliveries of a dispatch counted as they happen: per quarter hour, platform, variant,
    outcome and reason (``delivery.services.rollups``). Reports, charts and the home page read these
    few rows instead of counting the deliveries.

    ``outcome`` is ``targeted`` (a row was made: counted at the quarter hour it was queued, or the
    dispatch started), a final status (``accepted``, ``failed``, ``skipped``, ``unknown``: at the
    quarter hour the row finished) or ``opened`` (at the quarter hour it was opened). Rows not yet
    final are the targeted less the final ones. Written in the transaction that changes the
    deliveries, so it is what a count of them would say; retention deleting old deliveries leaves
    theirs (the dispatch's ``rows_deleted_at`` says so): reports keep their totals. A key may be split over a few ``shard`` rows: sum them.
    """

    class Outcome(models.TextChoices):
        TARGETED = "targeted", "targeted"
        ACCEPTED = "accepted", "accepted"
        FAILED = "failed", "failed"
        SKIPPED = "skipped", "skipped"
        UNKNOWN = "unknown", "unknown"
        OPENED = "opened", "opened"

    NO_VARIANT = -1  # a row of a dispatch without variants (the delivery's variant is empty)

    id = models.BigAutoField(primary_key=True)
    dispatch = models.ForeignKey(Dispatch, on_delete=models.CASCADE, related_name="+", db_index=False)
    period = models.DateTimeField(help_text="The start of the quarter hour (UTC).")
    platform = models.CharField(max_length=8, help_text="ios, android, or none (no device).")
    variant = models.SmallIntegerField(default=NO_VARIANT, help_text="The variant (0: the holdout; -1: none).")
    outcome = models.CharField(max_length=10, choices=Outcome.choices)
    reason = models.CharField(max_length=100, blank=True)
    rows = models.BigIntegerField(default=0)
    # Calls appending to one stream at once add to different rows (by connection), so that none
    # waits for another's commit; readers sum over it.
    shard = models.SmallIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["dispatch", "period", "platform", "variant", "outcome", "reason", "shard"],
                name="delivery_rollup_key",
            )
        ]
        # The home page's last 24 hours and provider health across dispatches.
        indexes = [models.Index(fields=["period"], name="delivery_rollup_period_idx")]

    def __str__(self) -> str:
        return f"{self.dispatch_id} {self.period:%Y-%m-%d %H:%M} {self.outcome} {self.rows}"
