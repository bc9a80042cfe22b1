"""The admin of apps: their settings and channel credentials (uploads), and the connection test."""

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models.constants import LOOKUP_SEP
from django.template.response import TemplateResponse
from django.utils.decorators import method_decorator
from django.utils.html import format_html
from django.views.decorators.debug import sensitive_post_parameters, sensitive_variables

from accounts.admin.bases import ObjectAccessAdminMixin, ScopedAdmin, asks_again, deleted_objects_counted
from accounts.encryption import fingerprint
from delivery.models import App
from delivery.services.apps import (
    APP_FIELDS,
    MAX_UPLOAD,
    apns_key_parse,
    app_check,
    app_create,
    app_identity_secret_rotate,
    app_secrets_unreadable,
    app_test_connection,
    app_update,
    apps_delete,
    service_account_parse,
)


def _credential_status(set_at, fingerprint: str, *, unreadable: bool = False) -> str:
    if not fingerprint:
        return "Not set."
    said = f"Set on {set_at:%Y-%m-%d %H:%M} UTC, fingerprint {fingerprint}."
    if unreadable:
        said += (
            " It cannot be decrypted with this PUSHDESK_ENCRYPTION_KEY (a different key, or one dropped before "
            "rotating?), so nothing is sent with it: set the key it was stored under, or upload it again."
        )
    return said


class AppForm(forms.ModelForm):
    """The app's fields plus uploads for its secrets; an upload replaces, an empty one keeps."""

    apns_private_key_file = forms.FileField(
        label="APNs key (.p8)",
        required=False,
        help_text="The .p8 file from Apple (Certificates, Identifiers & Profiles → Keys). Upload to set or replace.",
    )
    remove_apns = forms.BooleanField(label="Remove the APNs configuration", required=False)
    fcm_service_account_file = forms.FileField(
        label="FCM service-account JSON",
        required=False,
        help_text="From the Firebase console (Project settings → Service accounts). Upload to set or replace.",
    )
    remove_fcm = forms.BooleanField(label="Remove the FCM configuration", required=False)

    class Meta:
        model = App
        fields = APP_FIELDS  # what app_create and app_update set

    @method_decorator(sensitive_variables("upload", "raw"))
    def _read(self, name: str):
        upload = self.cleaned_data.get(name)
        if not upload:
            return None
        # One byte past the limit says "too large": a huge upload is not read whole into memory.
        raw = upload.read(MAX_UPLOAD + 1)
        return raw

    @method_decorator(sensitive_variables("raw"))
    def clean(self):
        data = super().clean()
        data["apns_private_key"] = data["fcm_service_account"] = None
        raw = self._read("apns_private_key_file")
        if raw is not None:
            try:
                data["apns_private_key"] = apns_key_parse(raw=raw)
            except ValidationError as exc:
                self.add_error("apns_private_key_file", exc.message_dict["apns_private_key"])
        raw = self._read("fcm_service_account_file")
        if raw is not None:
            try:
                data["fcm_service_account"] = service_account_parse(raw=raw)
            except ValidationError as exc:
                self.add_error("fcm_service_account_file", exc.message_dict["fcm_service_account"])
        return data


# Service errors name model fields; the form shows key errors on the upload field.
_FORM_FIELD = {"apns_private_key": "apns_private_key_file", "fcm_service_account": "fcm_service_account_file"}


@admin.register(App)
class AppAdmin(ObjectAccessAdminMixin, ScopedAdmin):
    form = AppForm
    list_display = ("name", "channels", "uses_simulator", "rate_limit_per_second", "created_at")
    search_fields = ("name",)
    actions = ["test_connection", "rotate_identity_secret"]
    readonly_fields = (
        "object_access",
        "identity_secret_status",
        "apns_key_status",
        "fcm_status",
        "fcm_project_id",
        "fcm_client_email",
        "created_at",
        "updated_at",
    )

    def _administers(self, request) -> bool:
        return request.user.has_perm("delivery.change_app")

    def get_list_display(self, request):
        # Other roles work inside an app's scope and need only its name; its channel configuration
        # (team and key ids, fingerprints, the FCM account, limits) is for those who administer it.
        return self.list_display if self._administers(request) else ("name",)

    def get_fieldsets(self, request, obj=None):
        if not self._administers(request):
            return ((None, {"fields": ("name",)}),)
        return (
            (None, {"fields": ("name", "rate_limit_per_second", "uses_simulator", "object_access")}),
            (
                "Apple Push Notification service (token-based authentication)",
                {
                    "fields": (
                        "apns_team_id",
                        "apns_key_id",
                        "apns_key_status",
                        "apns_private_key_file",
                        "apns_bundle_id",
                        "apns_environment",
                        "remove_apns",
                    )
                },
            ),
            (
                "Firebase Cloud Messaging (HTTP v1)",
                {
                    "fields": (
                        "fcm_status",
                        "fcm_project_id",
                        "fcm_client_email",
                        "fcm_service_account_file",
                        "remove_fcm",
                    )
                },
            ),
            (
                "Identity verification",
                {"fields": ("identity_secret_status", "identity_verification_required")},
            ),
            *((("Dates", {"fields": ("created_at", "updated_at")}),) if obj is not None else ()),
        )

    # What the list may be filtered by in its query string (``?name=Shop``); Django's own rule
    # allows every field of the app.
    SECRET_FIELDS = ("apns_private_key", "fcm_service_account", "identity_secret")

    def lookup_allowed(self, lookup, value, request=None):
        """Nobody filters by the encrypted secrets, and only those who administer apps filter by
        their configuration: a Viewer's ``?apns_key_id__startswith=K`` would read it out letter by
        letter from the list's count. Django answers a refused lookup 400."""
        field = lookup.split(LOOKUP_SEP, 1)[0]
        if field in self.SECRET_FIELDS:
            return False
        if request is not None and not self._administers(request) and field != "name":
            return False
        return super().lookup_allowed(lookup, value, request)

    def get_deleted_objects(self, objs, request):
        # An app's devices are counted, not listed one by one (a million would never render).
        return deleted_objects_counted(self, request, objs)

    def delete_model(self, request, obj):
        apps_delete(app_ids=[obj.pk], by=request.user)

    def delete_queryset(self, request, queryset):
        apps_delete(app_ids=list(queryset.values_list("pk", flat=True)), by=request.user)

    def get_queryset(self, request):
        # The secrets themselves are never needed to list or show an app (whether they decrypt is
        # judged from the stored tokens).
        return super().get_queryset(request).defer(*self.SECRET_FIELDS)

    @method_decorator(sensitive_post_parameters())
    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        return super().changeform_view(request, object_id, form_url, extra_context)

    @admin.display(description="Channels")
    def channels(self, obj):
        names = [n for n, on in (("APNs", obj.apns_configured), ("FCM", obj.fcm_configured)) if on]
        return ", ".join(names) or "—"

    def _unreadable(self, obj) -> list[str]:
        # Judged once per page, from the stored tokens: the secrets are not read to show their status.
        if not hasattr(obj, "_unreadable_secrets"):
            obj._unreadable_secrets = app_secrets_unreadable(app_id=obj.pk)
        return obj._unreadable_secrets

    @admin.display(description="APNs key")
    def apns_key_status(self, obj):
        if obj is None:
            return "Not set."
        return _credential_status(
            obj.apns_private_key_set_at,
            obj.apns_private_key_fingerprint,
            unreadable="apns_private_key" in self._unreadable(obj),
        )

    @admin.display(description="Service account JSON")
    def fcm_status(self, obj):
        if obj is None:
            return "Not set."
        return _credential_status(
            obj.fcm_service_account_set_at,
            obj.fcm_service_account_fingerprint,
            unreadable="fcm_service_account" in self._unreadable(obj),
        )

    @admin.display(description="Identity secret")
    def identity_secret_status(self, obj):
        if obj is None or not obj.identity_secret_fingerprint:
            return (
                "Not set. Generate one with the list's action 'Generate a new identity secret': it is shown once, "
                "for your backend to compute each external id's identity_hash."
            )
        said = (
            f"Set on {obj.identity_secret_set_at:%Y-%m-%d %H:%M} UTC, fingerprint {obj.identity_secret_fingerprint}. "
            "It is not shown again: the list's action 'Generate a new identity secret' replaces it."
        )
        if "identity_secret" in self._unreadable(obj):
            said += (
                " It cannot be decrypted with this PUSHDESK_ENCRYPTION_KEY (a different key, or one dropped before "
                "rotating?), so no identity_hash can be checked: device registrations that need one answer 503. "
                "Set the key it was stored under, or generate a new one (your backend's hashes change with it)."
            )
        return said

    def _save_through_service(self, request, obj, form, change):
        data = form.cleaned_data
        common = {
            "rate_limit_per_second": data["rate_limit_per_second"],
            "uses_simulator": data["uses_simulator"],
            "apns_team_id": data["apns_team_id"],
            "apns_key_id": data["apns_key_id"],
            "apns_bundle_id": data["apns_bundle_id"],
            "apns_environment": data["apns_environment"],
            "apns_private_key": data.get("apns_private_key"),
            "fcm_service_account": data.get("fcm_service_account"),
            "identity_verification_required": data["identity_verification_required"],
        }
        if change:
            return app_update(
                app_id=obj.pk,
                by=request.user,
                name=data["name"],
                remove_apns=data.get("remove_apns", False),
                remove_fcm=data.get("remove_fcm", False),
                **common,
            )
        return app_create(name=data["name"], by=request.user, **common)

    def get_form(self, request, obj=None, change=False, **kwargs):
        """The form saves through the service while it validates, so the service's own checks
        show on the form and a refused change saves nothing (the service is atomic)."""
        form_class = super().get_form(request, obj, change=change, **kwargs)
        admin_self = self

        class ValidatingForm(form_class):
            def _post_clean(self):
                super()._post_clean()
                try:
                    if self.errors:
                        self._check_the_rest()
                    else:
                        self._saved = admin_self._save_through_service(
                            request, self.instance, self, change=obj is not None
                        )
                except ValidationError as exc:
                    for field, errors in exc.message_dict.items():
                        name = _FORM_FIELD.get(field, field)
                        if name not in self.errors:  # a field's own error says it already
                            self.add_error(name if name in self.fields else None, errors)
                except PermissionDenied as exc:
                    self.add_error(None, str(exc))

            def _check_the_rest(self):
                """With a field or an upload refused, the service still checks what passed, so one
                answer names every wrong field; nothing is saved. A refused upload counts as given:
                it is not reported missing too."""
                data = self.cleaned_data
                app_check(
                    app_id=obj.pk if obj is not None else None,
                    by=request.user,
                    fields={field: data.get(field) for field in APP_FIELDS},
                    apns_key_given="apns_private_key_file" in self.errors or data.get("apns_private_key") is not None,
                    fcm_given="fcm_service_account_file" in self.errors or data.get("fcm_service_account") is not None,
                    remove_apns=data.get("remove_apns", False),
                    remove_fcm=data.get("remove_fcm", False),
                )

        return ValidatingForm

    def save_model(self, request, obj, form, change):
        obj.pk = form._saved.pk  # the service saved it while the form validated

    def save_related(self, request, form, formsets, change):
        pass  # nothing related; the service saved everything

    @admin.action(description="Test connection (APNs and FCM)", permissions=["test_connection"])
    def test_connection(self, request, queryset):
        for app in queryset:
            try:
                checks = app_test_connection(app_id=app.pk, by=request.user)
            except PermissionDenied as exc:
                self.message_user(request, f"{app}: {exc}", messages.ERROR)
                continue
            for check in checks:
                self.message_user(
                    request,
                    format_html("<strong>{}</strong> {}: {}", app.name, check.provider, check.message),
                    messages.SUCCESS if check.ok else messages.ERROR,
                )

    def has_test_connection_permission(self, request):
        return request.user.has_perm("delivery.test_connection_app")

    @admin.action(description="Generate a new identity secret", permissions=["rotate_identity_secret"])
    @asks_again(
        verb="Generate a new identity secret for",
        consequences=[
            "The new secret is shown once, on the next page: copy it to your backend, which computes each "
            "external id's identity_hash with it.",
            "The secret before stops verifying at once: while the app requires identity verification, its "
            "phones' registrations are refused (403 identity_unverified) until your backend uses the new one.",
        ],
        once="identity_secret_sent_again",
    )
    @method_decorator(sensitive_variables("generated", "secret"))
    def rotate_identity_secret(self, request, queryset):
        generated = []
        for app in queryset.order_by("name"):
            try:
                secret = app_identity_secret_rotate(app_id=app.pk, by=request.user)
                generated.append((app, secret, fingerprint(secret)))  # `app` was read before: not its new one
            except PermissionDenied as exc:
                self.message_user(request, f"{app}: {exc}", messages.ERROR)
        if not generated:
            return None
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "generated": generated,
            "title": "Identity secret generated",
        }
        response = TemplateResponse(request, "admin/delivery/app/identity_secret.html", context)
        response["Cache-Control"] = "no-store"
        return response

    def identity_secret_sent_again(self, request, queryset, use):
        """The answer to the page showing new secrets posted again (a reload): nothing replaced, the
        secrets not shown again, each app's fingerprint now, to tell the one copied apart."""
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "apps": list(queryset.order_by("name")),
            "use": use,
            "title": "Identity secret generated already",
        }
        response = TemplateResponse(request, "admin/delivery/app/identity_secret_already.html", context)
        response["Cache-Control"] = "no-store"
        return response

    def has_rotate_identity_secret_permission(self, request):
        return request.user.has_perm("delivery.change_app")
