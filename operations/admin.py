"""The task queue's lists of finished tasks, whose "Resubmit" writes: offered to superusers only, and audited."""

from django.contrib import admin, messages
from django_q import admin as queue_admin
from django_q.models import Failure, Success

from accounts.admin.bases import AdminAuditMixin
from operations.services import task_resubmit


class ResubmitMixin(AdminAuditMixin):
    """Replaces django-q2's "Resubmit", which any reader of the list could press and which left no trace."""

    actions = ["resubmit_task"]

    @admin.action(description="Resubmit selected tasks to queue", permissions=["resubmit"])
    def resubmit_task(self, request, queryset):
        tasks = list(queryset.values_list("pk", flat=True))
        for task_id in tasks:
            task_resubmit(task_id=task_id, by=request.user)
        self.message_user(request, f"{len(tasks)} task(s) queued again.", messages.SUCCESS)

    def has_resubmit_permission(self, request):
        return request.user.has_perm(f"django_q.change_{self.model._meta.model_name}")


class SuccessAdmin(ResubmitMixin, queue_admin.TaskAdmin):
    pass


class FailureAdmin(ResubmitMixin, queue_admin.FailAdmin):
    pass


for model, model_admin in ((Success, SuccessAdmin), (Failure, FailureAdmin)):
    if admin.site.is_registered(model):
        admin.site.unregister(model)
    admin.site.register(model, model_admin)
