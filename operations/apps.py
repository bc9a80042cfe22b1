from django.apps import AppConfig
from django.db.models.signals import post_migrate


class OperationsConfig(AppConfig):
    name = "operations"
    verbose_name = "Operations"

    def ready(self) -> None:
        from operations.beats import beats_ensure
        from operations.instance import instance_record_on_first_migrate

        post_migrate.connect(instance_record_on_first_migrate, dispatch_uid="operations.instance_first_migrate")
        post_migrate.connect(beats_ensure, sender=self, dispatch_uid="operations.beats")
