from django.conf import settings
from django.db import models
from django.utils import timezone
from guardian.models import GroupObjectPermissionBase, UserObjectPermissionBase

from accounts.encryption import EncryptedTextField


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
        return bool(self.apns_private_key_fingerprint and self.apns_team_id and self.apns_key_id and self.apns_bundle_id)

    @property
    def fcm_configured(self) -> bool:
        return bool(self.fcm_service_account_fingerprint and self.fcm_project_id)


class AppUserObjectPermission(UserObjectPermissionBase):
    content_object = models.ForeignKey(App, on_delete=models.CASCADE)


class AppGroupObjectPermission(GroupObjectPermissionBase):
    content_object = models.ForeignKey(App, on_delete=models.CASCADE)

