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
