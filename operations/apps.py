from django.apps import AppConfig
from django.db.models.signals import post_migrate


class OperationsConfig(AppConfig):
    name = "operations"
    verbose_name = "Operations"

    def ready(self) -> None:
        from django_q.signals import pre_execute

        from config.runtime import gc_tune_worker
        from operations.beats import beats_ensure
        from operations.instance import instance_record_on_first_migrate

        # A worker tunes its collector before its first task, once the task's modules are loaded.
        pre_execute.connect(gc_tune_worker, dispatch_uid="config.runtime.gc_tune")

        post_migrate.connect(instance_record_on_first_migrate, dispatch_uid="operations.instance_first_migrate")
        post_migrate.connect(beats_ensure, sender=self, dispatch_uid="operations.beats")
