from django.apps import AppConfig
from django.db.models.signals import post_migrate


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Accounts and access"

    def ready(self) -> None:
        from accounts.roles import roles_sync_after_migrate

        # Permissions of later apps exist only after their migrations ran, so role
        # permissions are (re)applied after every migrate, from the one table in roles.py.
        post_migrate.connect(roles_sync_after_migrate, dispatch_uid="accounts.roles_sync")
        post_migrate.connect(_create_cache_table, dispatch_uid="accounts.cache_table")
        _connect_stamps()


def _connect_stamps() -> None:
    """Bump the ``access`` version stamp whenever a key, a user, a role or an object grant changes.

    The row receivers listen to those models only: a delete receiver for every model would make
    each cascade load its rows to signal them one by one (a profile's events, a dispatch's
    deliveries) instead of deleting them with one query.
    """
    from django.apps import apps
    from django.contrib.auth.models import Group
    from django.db.models.signals import m2m_changed, post_delete, post_save

    from accounts.models import User
    from accounts.stamps import access_changed, access_granting_models, access_rows_changed

    granting = access_granting_models()
    for model in apps.get_models():
        if issubclass(model, granting):
            label = model._meta.label_lower
            post_save.connect(access_rows_changed, sender=model, dispatch_uid=f"accounts.stamps.save.{label}")
            post_delete.connect(access_rows_changed, sender=model, dispatch_uid=f"accounts.stamps.delete.{label}")
    m2m_changed.connect(access_changed, sender=User.groups.through, dispatch_uid="accounts.stamps.groups")
    m2m_changed.connect(access_changed, sender=Group.permissions.through, dispatch_uid="accounts.stamps.perms")
    m2m_changed.connect(access_changed, sender=User.user_permissions.through, dispatch_uid="accounts.stamps.uperms")


def _create_cache_table(sender, using="default", **kwargs) -> None:
    """The embedded mode caches in the database (django-q2's monitor needs a shared cache)."""
    from django.conf import settings
    from django.core.management import call_command

    if sender.name != "accounts":
        return
    if any(c["BACKEND"].endswith("DatabaseCache") for c in settings.CACHES.values()):
        call_command("createcachetable", database=using, verbosity=0)
