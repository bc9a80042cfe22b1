from django.contrib import admin

from accounts.admin import ObjectAccessAdminMixin, ScopedAdmin
from accounts.services import access_grant, audit
from delivery.models import App


@admin.register(App)
class AppAdmin(ObjectAccessAdminMixin, ScopedAdmin):
    list_display = ("name", "rate_limit_per_second", "created_at")
    search_fields = ("name",)
    readonly_fields = ("object_access", "created_at", "updated_at")

    def save_model(self, request, obj, form, change):
        creating = obj.pk is None
        if creating:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)
        audit(
            actor=request.user,
            action="app_created" if creating else "app_changed",
            obj=obj,
            summary={"fields": sorted(form.changed_data)},
        )
        if creating:
            access_grant(obj=obj, to=request.user, by=None)
