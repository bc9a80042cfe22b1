"""What the database knows about the deployment it belongs to."""

from django.db import models


class Instance(models.Model):
    """The one row naming the deployment this database belongs to (``PUSHDESK_INSTANCE``).

    Written by the first ``migrate`` and by ``manage.py instance_claim``. A process whose
    ``PUSHDESK_INSTANCE`` differs (a restored backup, a staging clone) sends nothing.
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1, editable=False)
    name = models.CharField(max_length=63)
    claimed_at = models.DateTimeField()

    class Meta:
        constraints = [models.CheckConstraint(condition=models.Q(id=1), name="operations_instance_single_row")]

    def __str__(self) -> str:
        return self.name


class SendTotals(models.Model):
    """The one row summing the figures of dispatches finished before ``through``, for ``/metrics``.

    A scrape adds the dispatches not summed here (running, or finished since ``through``) to these,
    so it reads no finished dispatch twice; ``operations.metrics.send_totals`` moves ``through``
    forward (under this row's lock) to an hour ago, once a dispatch's figures no longer change.
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1, editable=False)
    through = models.DateTimeField(null=True, blank=True, help_text="None: nothing summed yet.")
    sends = models.JSONField(default=dict, help_text="{app id: {outcome: count}}")
    platform_sends = models.JSONField(default=dict, help_text="{app id: {platform: {outcome: count}}}")
    retries = models.JSONField(default=dict, help_text="{reason: count}")

    class Meta:
        verbose_name_plural = "send totals"
        constraints = [models.CheckConstraint(condition=models.Q(id=1), name="operations_sendtotals_single_row")]

    def __str__(self) -> str:
        return f"Send totals through {self.through}"
