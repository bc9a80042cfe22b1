"""The task queue's admin pages, audited like every other write in the admin.

The lists of finished tasks have a "Resubmit" that writes: offered to superusers only. Schedules and
queued messages are django-q2's own pages, their adds, changes and deletes audited. Their query
strings refuse the lookups every other list refuses (``BoundedLookupsMixin``).
"""

from django.contrib import admin, messages
from django.template.defaultfilters import pluralize
from django_q import admin as queue_admin
from django_q.models import Failure, OrmQ, Schedule, Success

from accounts.admin.bases import AdminAuditMixin, BoundedLookupsMixin
from operations.services import task_resubmit


class ResubmitMixin(BoundedLookupsMixin, AdminAuditMixin):
    """Replaces django-q2's "Resubmit", which any reader of the list could press and which left no trace."""

    actions = ["resubmit_task"]

    @admin.action(description="Resubmit selected tasks to queue", permissions=["resubmit"])
    def resubmit_task(self, request, queryset):
        tasks = list(queryset.values_list("pk", flat=True))
        for task_id in tasks:
            task_resubmit(task_id=task_id, by=request.user)
        self.message_user(request, f"{len(tasks)} task{pluralize(len(tasks))} queued again.", messages.SUCCESS)

    def has_resubmit_permission(self, request):
        return request.user.has_perm(f"django_q.change_{self.model._meta.model_name}")


class SuccessAdmin(ResubmitMixin, queue_admin.TaskAdmin):
    pass


class FailureAdmin(ResubmitMixin, queue_admin.FailAdmin):
    pass


class ScheduleAdmin(BoundedLookupsMixin, AdminAuditMixin, queue_admin.ScheduleAdmin):
    pass


class QueueAdmin(BoundedLookupsMixin, AdminAuditMixin, queue_admin.QueueAdmin):
    pass


for model, model_admin in (
    (Success, SuccessAdmin),
    (Failure, FailureAdmin),
    (Schedule, ScheduleAdmin),
    (OrmQ, QueueAdmin),  # registered by django-q2 only with its ORM broker
):
    if admin.site.is_registered(model):
        admin.site.unregister(model)
        admin.site.register(model, model_admin)
