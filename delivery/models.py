from django.conf import settings
from django.db import models
from django.utils import timezone
from guardian.models import GroupObjectPermissionBase, UserObjectPermissionBase


class App(models.Model):
    """A mobile app and its channel configuration; also the scope that object access is granted on."""

    has_object_access = True

    name = models.CharField(max_length=100, unique=True)
    rate_limit_per_second = models.PositiveIntegerField(
        default=1000, help_text="Most messages per second sent for this app, across all workers."
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


class AppUserObjectPermission(UserObjectPermissionBase):
    content_object = models.ForeignKey(App, on_delete=models.CASCADE)


class AppGroupObjectPermission(GroupObjectPermissionBase):
    content_object = models.ForeignKey(App, on_delete=models.CASCADE)
