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
