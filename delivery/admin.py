import json
import threading

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpResponse
from django.urls import path, reverse
from django.utils.decorators import method_decorator
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.views.decorators.debug import sensitive_post_parameters, sensitive_variables
from liquid.exceptions import LiquidError

from accounts.admin import AccessAdmin, BigTableAdmin, ObjectAccessAdminMixin, ScopedAdmin
from accounts.services import audit
from audiences.models import Profile
from delivery.models import App, Delivery, DeliveryRules, Device, Dispatch, PushContent
from delivery.payloads import message_render, spec_validate
from delivery.selectors import (
    apps_visible_to,
    deliveries_visible_to,
    device_deliveries,
    devices_visible_to,
    dispatch_outcomes,
)
from delivery.services.apps import apns_key_parse, app_create, app_test_connection, app_update, service_account_parse
from delivery.services.contents import pushcontent_save, pushcontent_test_send
from delivery.services.devices import devices_test_flag_set
from delivery.services.dispatches import dispatch_stop


def _credential_status(set_at, fingerprint: str) -> str:
    if not fingerprint:
        return "Not set."
    return f"Set on {set_at:%Y-%m-%d %H:%M} UTC, fingerprint {fingerprint}."


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
        fields = (
            "name",
            "rate_limit_per_second",
            "uses_simulator",
            "apns_team_id",
            "apns_key_id",
            "apns_bundle_id",
            "apns_environment",
        )

    @method_decorator(sensitive_variables("upload", "raw"))
    def _read(self, name: str):
        upload = self.cleaned_data.get(name)
        if not upload:
            return None
        raw = upload.read()
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
    actions = ["test_connection"]
    readonly_fields = (
        "object_access",
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
            ("Dates", {"fields": ("created_at", "updated_at")}),
        )

    def get_queryset(self, request):
        # The secrets themselves are never needed to list or show an app.
        return super().get_queryset(request).defer("apns_private_key", "fcm_service_account")

    @method_decorator(sensitive_post_parameters())
    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        return super().changeform_view(request, object_id, form_url, extra_context)

    @admin.display(description="Channels")
    def channels(self, obj):
        names = [n for n, on in (("APNs", obj.apns_configured), ("FCM", obj.fcm_configured)) if on]
        return ", ".join(names) or "—"

    @admin.display(description="APNs key")
    def apns_key_status(self, obj):
        if obj is None:
            return "Not set."
        return _credential_status(obj.apns_private_key_set_at, obj.apns_private_key_fingerprint)

    @admin.display(description="Service account JSON")
    def fcm_status(self, obj):
        if obj is None:
            return "Not set."
        return _credential_status(obj.fcm_service_account_set_at, obj.fcm_service_account_fingerprint)

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
                if self.errors:
                    return
                try:
                    self._saved = admin_self._save_through_service(request, self.instance, self, change=obj is not None)
                except ValidationError as exc:
                    for field, errors in exc.message_dict.items():
                        name = _FORM_FIELD.get(field, field)
                        self.add_error(name if name in self.fields else None, errors)
                except PermissionDenied as exc:
                    self.add_error(None, str(exc))

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


# --- the send pipeline ---------------------------------------------------------------------------------

_IOS_CARD = (
    '<div style="width:320px;border-radius:18px;background:rgba(235,235,240,.95);padding:10px 12px;'
    'font-family:-apple-system,Helvetica,sans-serif;color:#111;box-shadow:0 1px 4px rgba(0,0,0,.2)">'
    '<div style="display:flex;justify-content:space-between;font-size:12px;color:#555">'
    "<span>&#9635; {app}</span><span>now</span></div>"
    '<div style="display:flex;gap:8px"><div style="flex:1">'
    '<div style="font-weight:600;font-size:14px">{title}</div>'
    '<div style="font-size:13px;font-weight:500">{subtitle}</div>'
    '<div style="font-size:13px;white-space:pre-line;overflow:hidden;max-height:5.2em">{body}</div></div>'
    "{image}</div></div>"
)
_ANDROID_CARD = (
    '<div style="width:320px;border-radius:12px;background:#fff;padding:10px 12px;'
    'font-family:Roboto,Arial,sans-serif;color:#202124;box-shadow:0 1px 4px rgba(0,0,0,.3)">'
    '<div style="font-size:12px;color:{color}">&#9679; {app} &middot; now</div>'
    '<div style="font-weight:500;font-size:14px">{title}</div>'
    '<div style="font-size:13px;color:#5f6368;white-space:pre-line;overflow:hidden;max-height:2.6em">{body}</div>'
    "{image}</div>"
)


# The request being answered, per thread: admin instances are shared between requests.
_current = threading.local()


def _previews_html(content: PushContent, profile: dict | None, context: dict) -> str:
    """iOS and Android lock-screen mock-ups of the content rendered for one profile."""
    return _spec_previews_html(
        content.spec(), app_name=content.app.name if content.app_id else "App", profile=profile, context=context
    )


def _spec_previews_html(spec: dict, *, app_name: str, profile: dict | None, context: dict) -> str:
    """iOS and Android lock-screen mock-ups of a content spec (a content's, or a dispatch's frozen copy)."""
    if spec.get("silent"):
        return format_html("<p>A silent (background) push: nothing is shown on the lock screen.</p>")
    try:
        message = message_render(spec, profile=profile or {"attributes": {}}, context=context)
    except LiquidError as exc:
        return format_html('<p class="errornote">The content does not render: {}</p>', exc.message)
    ios_image = (
        format_html(
            '<img src="{}" alt="" style="width:44px;height:44px;object-fit:cover;border-radius:6px">',
            message.image_url,
        )
        if message.image_url
        else ""
    )
    android_image = (
        format_html(
            '<img src="{}" alt="" style="width:100%;max-height:140px;object-fit:cover;border-radius:8px;margin-top:6px">',
            message.image_url,
        )
        if message.image_url
        else ""
    )
    ios = format_html(
        _IOS_CARD,
        app=app_name,
        title=message.title,
        subtitle=message.subtitle,
        body=message.body,
        image=ios_image,
    )
    android = format_html(
        _ANDROID_CARD,
        app=app_name,
        color=spec["android"].get("color") or "#1a73e8",
        title=message.title,
        body=message.body,
        image=android_image,
    )
    return format_html(
        '<div style="display:flex;gap:24px;flex-wrap:wrap;background:#2b3a55;padding:16px;border-radius:8px">'
        '<div><div style="color:#fff;margin-bottom:6px">iOS</div>{}</div>'
        '<div><div style="color:#fff;margin-bottom:6px">Android</div>{}</div></div>',
        ios,
        android,
    )


# Errors from spec_validate name spec paths; the form shows them on the matching field.
_SPEC_FIELD = {
    "ios.sound": "ios_sound",
    "ios.badge": "ios_badge",
    "ios.category": "ios_category",
    "ios.thread_id": "ios_thread_id",
    "ios.interruption_level": "ios_interruption_level",
    "android.channel_id": "android_channel_id",
    "android.icon": "android_icon",
    "android.color": "android_color",
    "android.priority": "android_priority",
}


def _form_field(path: str, fields) -> str | None:
    name = _SPEC_FIELD.get(path) or path.split(".", 1)[0]
    if path.startswith("variants."):
        name = "variants"
    if path.startswith("data."):
        name = "data"
    return name if name in fields else None


@admin.register(PushContent)
class PushContentAdmin(ObjectAccessAdminMixin, ScopedAdmin):
    list_display = ("name", "app", "title", "silent", "version", "updated_at")
    list_filter = (("app", admin.RelatedOnlyFieldListFilter), "silent")
    search_fields = ("name", "title")
    list_select_related = ("app",)
    actions = ["send_test"]
    readonly_fields = ("previews", "version", "object_access", "created_at", "updated_at")

    class Media:
        js = ("delivery/content_form.js",)

    # The admin's own labels would read "Ios sound"; text fields wide enough for Liquid.
    WIDE = {"title": 80, "subtitle": 80, "image_url": 80, "tap_url": 80}

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        field = super().formfield_for_dbfield(db_field, request, **kwargs)
        if field is None:
            return field
        for prefix, platform in (("ios_", "iOS"), ("android_", "Android")):
            if db_field.name.startswith(prefix):
                field.label = f"{platform} {db_field.name.removeprefix(prefix).replace('_', ' ')}"
        if db_field.name in self.WIDE:
            field.widget.attrs["size"] = self.WIDE[db_field.name]
            field.widget.attrs["style"] = "width:min(60em,100%)"
        if db_field.name == "body":
            field.widget.attrs.update({"cols": 80, "rows": 4, "style": "width:min(60em,100%)"})
        return field

    fieldsets = (
        (
            "Lock-screen previews",
            {
                "fields": ("previews",),
                "description": "Rendered for the profile chosen below (or one without attributes), as saved.",
            },
        ),
        (None, {"fields": ("app", "name", "object_access")}),
        (
            "Message",
            {
                "fields": ("title", "subtitle", "body", "image_url", "tap_action", "tap_url", "data"),
                "description": "Liquid: {{ profile.attributes.first_name | default: 'there' }}, "
                "{{ profile.locale }}, {{ context.order_id }}.",
            },
        ),
        (
            "iOS",
            {
                "fields": (
                    "ios_sound",
                    "ios_badge",
                    "ios_category",
                    "ios_thread_id",
                    "ios_interruption_level",
                    "ios_mutable_content",
                )
            },
        ),
        ("Android", {"fields": ("android_channel_id", "android_icon", "android_color", "android_priority")}),
        ("Delivery", {"fields": ("silent", "ttl_seconds", "collapse_key")}),
        ("Locales", {"fields": ("default_locale", "variants")}),
        ("History", {"fields": ("version", "created_at", "updated_at")}),
    )

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "app":
            kwargs["queryset"] = apps_visible_to(request.user)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def get_form(self, request, obj=None, change=False, **kwargs):
        """Validate through the service while the form validates, so its errors show on the form."""
        form_class = super().get_form(request, obj, change=change, **kwargs)

        class ValidatingForm(form_class):
            def _post_clean(self):
                super()._post_clean()
                if self.errors:
                    return
                try:
                    spec_validate(self.instance.spec())
                except ValidationError as exc:
                    for path, errors in exc.message_dict.items():
                        self.add_error(_form_field(path, self.fields), [f"{path}: {e}" for e in errors])

        return ValidatingForm

    def save_model(self, request, obj, form, change):
        pushcontent_save(content=obj, by=request.user)

    @admin.display(description="Previews")
    def previews(self, obj):
        if obj is None or obj.pk is None:
            return format_html(
                '<div class="content-previews" data-preview-url="{}"><p>{}</p></div>',
                reverse("admin:delivery_pushcontent_live_preview_new"),
                "The previews follow the form as you type.",
            )
        request = getattr(_current, "request", None)
        wanted = request.GET.get("preview_profile", "") if request is not None else ""
        profile = None
        note = "a profile without attributes"
        if wanted:
            found = Profile.objects.filter(external_id=wanted).values("external_id", "locale", "timezone", "attributes")
            profile = found.first()
            note = f"profile {wanted}" if profile else f"no profile {wanted!r}: one without attributes"
        chooser = format_html(
            '<p>Preview for: <input type="text" value="{}" placeholder="external id" '
            'id="preview-profile" style="width:14em"> '
            '<button type="button" onclick="location.search=\'?preview_profile=\'+'
            "encodeURIComponent(document.getElementById('preview-profile').value)\">Show</button> "
            "<em>({})</em></p>",
            wanted,
            note,
        )
        return format_html(
            '{}<div class="content-previews" data-preview-url="{}">{}</div>',
            chooser,
            reverse("admin:delivery_pushcontent_live_preview", args=[obj.pk]),
            _previews_html(obj, profile, {}),
        )

    def get_urls(self):
        return [
            path(
                "live-preview/",
                self.admin_site.admin_view(self.live_preview_view),
                name="delivery_pushcontent_live_preview_new",
            ),
            path(
                "<int:object_id>/live-preview/",
                self.admin_site.admin_view(self.live_preview_view),
                name="delivery_pushcontent_live_preview",
            ),
            *super().get_urls(),
        ]

    def live_preview_view(self, request, object_id: int | None = None):
        """The phones for the form as it stands (POST of the form, nothing saved): the chosen profile,
        in the locale of the tab open (``preview_locale``)."""
        if request.method != "POST":
            raise PermissionDenied("Post the form to preview it.")
        obj = None
        if object_id is not None:
            obj = self.get_object(request, str(object_id))
            if obj is None or not self.has_view_permission(request, obj):
                raise Http404("No such content.")
        elif not self.has_add_permission(request):
            raise PermissionDenied
        form_class = self.get_form(request, obj, change=obj is not None)
        form = form_class(request.POST, instance=obj or PushContent())
        form.is_valid()  # fills the instance with what validates; the rest stays as saved
        wanted = request.POST.get("preview_profile", "").strip()
        profile = None
        if wanted:
            profile = (
                Profile.objects.filter(external_id=wanted)
                .values("external_id", "locale", "timezone", "attributes")
                .first()
            )
        locale = request.POST.get("preview_locale", "").strip()
        if locale:
            profile = {**(profile or {"attributes": {}}), "locale": locale}
        return HttpResponse(_previews_html(form.instance, profile, {}))

    def change_view(self, request, object_id, form_url="", extra_context=None):
        _current.request = request  # the previews read the chosen profile from the query string
        try:
            response = super().change_view(request, object_id, form_url, extra_context)
            if hasattr(response, "render"):
                response.render()  # while the request is known
            return response
        finally:
            _current.request = None

    @admin.action(description="Send a test to the app's test devices", permissions=["test_send"])
    def send_test(self, request, queryset):
        for content in queryset:
            try:
                dispatch = pushcontent_test_send(content_id=content.pk, by=request.user)
            except (PermissionDenied, ValidationError) as exc:
                self.message_user(request, f"{content}: {exc}", messages.ERROR)
                continue
            url = reverse("admin:delivery_dispatch_change", args=[dispatch.pk])
            self.message_user(
                request, format_html('{}: test sent, <a href="{}">follow it</a>.', content, url), messages.SUCCESS
            )

    def has_test_send_permission(self, request):
        return request.user.has_perm("delivery.test_send_pushcontent")


@admin.register(Device)
class DeviceAdmin(BigTableAdmin):
    """Devices of the apps the user has access to; filter by profile from its page (?profile__id__exact=)."""

    list_display = (
        "short_token",
        "platform",
        "profile",
        "app",
        "push_enabled",
        "is_test",
        "active",
        "last_registered_at",
    )
    list_filter = ("platform", "active", "is_test", "push_enabled")
    search_fields = ("=profile__external_id", "=token")
    list_select_related = ("profile", "app")
    raw_id_fields = ("profile",)
    ordering = ("-id",)
    actions = ["mark_test", "unmark_test"]
    fields = (
        "profile",
        "app",
        "platform",
        "token",
        "push_enabled",
        "is_test",
        "active",
        "invalidated_at",
        "invalidated_reason",
        "last_registered_at",
        "created_at",
        "delivery_history",
    )
    readonly_fields = fields

    def get_queryset(self, request):
        return devices_visible_to(request.user).select_related("profile", "app")

    def _get_obj_does_not_exist_redirect(self, request, opts, object_id):
        raise Http404("No device with this id.")

    def has_add_permission(self, request):
        return False  # devices come from the mobile app (the API)

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="Token")
    def short_token(self, obj):
        return f"…{obj.token[-12:]}"

    @admin.display(description="Delivery history")
    def delivery_history(self, obj):
        rows = device_deliveries(obj)
        if not rows:
            return "No delivery yet."
        return format_html_join(
            "",
            '<div><a href="{}">#{}</a> {} · {} {} {}</div>',
            (
                (
                    reverse("admin:delivery_delivery_change", args=[d.pk]),
                    d.pk,
                    d.dispatch,
                    d.status,
                    d.reason,
                    f"· opened {d.opened_at:%Y-%m-%d %H:%M}" if d.opened_at else "",
                )
                for d in rows
            ),
        )

    def _set_test(self, request, queryset, value: bool):
        changed = devices_test_flag_set(
            device_ids=list(queryset.values_list("pk", flat=True)), is_test=value, by=request.user
        )
        self.message_user(request, f"{changed} device(s) changed.", messages.SUCCESS)

    @admin.action(description="Mark as test devices", permissions=["write"])
    def mark_test(self, request, queryset):
        self._set_test(request, queryset, True)

    @admin.action(description="Unmark as test devices", permissions=["write"])
    def unmark_test(self, request, queryset):
        self._set_test(request, queryset, False)

    def has_write_permission(self, request):
        return request.user.has_perm("delivery.change_device")


@admin.register(Dispatch)
class DispatchAdmin(ScopedAdmin):
    list_display = (
        "__str__",
        "app",
        "kind",
        "status",
        "progress",
        "accepted",
        "failed",
        "skipped",
        "unknown",
        "created_at",
    )
    list_filter = ("status", "kind")
    list_select_related = ("app",)
    actions = ["stop"]
    fields = (
        "label",
        "app",
        "kind",
        "status",
        "stream",
        "progress",
        "outcomes",
        "total",
        "accepted",
        "failed",
        "skipped",
        "unknown",
        "opened",
        "error",
        "source",
        "content",
        "context",
        "created_by",
        "created_at",
        "started_at",
        "finished_at",
    )
    readonly_fields = fields

    @admin.display(description="Sent by")
    def source(self, obj):
        """A link back to the campaign or the journey that sent it."""
        from django.apps import apps

        if obj.source_id is None:
            return "A test send" if obj.kind == Dispatch.Kind.TEST else "—"
        if obj.kind in (Dispatch.Kind.CAMPAIGN, Dispatch.Kind.API_TRIGGER):
            campaign = apps.get_model("campaigns", "Campaign").objects.filter(pk=obj.source_id).first()
            if campaign is None:
                return f"campaign {obj.source_id} (deleted)"
            url = reverse("admin:campaigns_campaign_change", args=[campaign.pk])
            return format_html('<a href="{}" class="dispatch-source">Campaign “{}”</a>', url, campaign)
        if obj.kind == Dispatch.Kind.JOURNEY:
            version = (
                apps.get_model("journeys", "JourneyVersion")
                .objects.select_related("journey")
                .filter(pk=obj.source_id)
                .first()
            )
            if version is None:
                return f"journey version {obj.source_id} (deleted)"
            url = reverse("admin:journeys_journey_change", args=[version.journey_id])
            return format_html(
                '<a href="{}" class="dispatch-source">Journey “{}”, version {}</a>',
                url,
                version.journey,
                version.number,
            )
        return str(obj.source_id)

    @admin.display(description="Content sent")
    def content(self, obj):
        """The frozen content as phones show it; its JSON one click away."""
        return format_html(
            '{}<details><summary>As JSON</summary><pre style="white-space:pre-wrap">{}</pre></details>',
            _spec_previews_html(obj.content_spec or {}, app_name=obj.app.name, profile=None, context={}),
            json.dumps(obj.content_spec, indent=2, ensure_ascii=False),
        )

    def has_add_permission(self, request):
        return False  # dispatches are made by campaigns, journeys, API triggers and test sends

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="Progress")
    def progress(self, obj):
        live = ""
        if obj.status in (Dispatch.Status.PREPARING, Dispatch.Status.SENDING):
            live = mark_safe("<script>setTimeout(function(){location.reload()}, 2000)</script>")  # noqa: S308 (a constant)
        return format_html(
            '<div style="width:160px;background:#eee;border-radius:4px" title="{} of {}">'
            '<div style="width:{}%;background:#417690;height:10px;border-radius:4px"></div></div>'
            "<small>{}% · {} of {}</small>{}",
            obj.done_count,
            obj.total,
            obj.percent,
            obj.percent,
            obj.done_count,
            obj.total,
            live,
        )

    @admin.display(description="Stream")
    def stream(self, obj):
        """A standing dispatch: what it streams, and its last minute (rate, trigger-to-accepted latency)."""
        if not obj.standing:
            return "— (a send run of its own)"
        from delivery.services.streams import stream_live_figures

        figures = stream_live_figures(obj)
        latency = (
            f"p50 {figures['latency_p50_ms']:.0f} ms, p99 {figures['latency_p99_ms']:.0f} ms"
            if figures["latency_p50_ms"] is not None
            else "no push accepted"
        )
        return format_html(
            "Calls append to it during {} (UTC), version {}.<br>"
            "<strong>Last minute: {} messages/s, trigger to accepted {}.</strong>",
            obj.stream_day,
            obj.stream_version[:12],
            figures["rate_per_second"],
            latency,
        )

    @admin.display(description="Outcomes by reason")
    def outcomes(self, obj):
        rows = dispatch_outcomes(obj)
        if not rows:
            return "—"
        deliveries = reverse("admin:delivery_delivery_changelist")
        final = [r for r in rows if r["status"] != "retried"]
        retried = [r for r in rows if r["status"] == "retried"]
        return format_html(
            "<table><tr><th>status</th><th>reason</th><th>count</th></tr>{}{}</table>",
            format_html_join(
                "",
                '<tr><td><a href="{}?dispatch__id__exact={}&status__exact={}">{}</a></td><td>{}</td><td>{}</td></tr>',
                ((deliveries, obj.pk, r["status"], r["status"], r["reason"] or "—", r["count"]) for r in final),
            ),
            format_html_join(
                "",
                "<tr><td>retried after</td><td>{}</td><td>{}</td></tr>",
                ((r["reason"], r["count"]) for r in retried),
            ),
        )

    @admin.action(description="Stop the selected dispatches (queued rows are not sent)", permissions=["stop"])
    def stop(self, request, queryset):
        for dispatch in queryset:
            try:
                dispatch_stop(dispatch_id=dispatch.pk, by=request.user)
            except PermissionDenied as exc:
                self.message_user(request, f"{dispatch}: {exc}", messages.ERROR)
                continue
            self.message_user(request, f"{dispatch}: stopped.", messages.SUCCESS)

    def has_stop_permission(self, request):
        return request.user.has_perm("delivery.stop_dispatch")


@admin.register(Delivery)
class DeliveryAdmin(BigTableAdmin):
    list_display = ("id", "dispatch", "device", "status", "reason", "attempts", "finished_at", "opened_at")
    list_filter = ("status",)
    search_fields = ("=id", "=provider_message_id")
    list_select_related = ("dispatch", "device")
    raw_id_fields = ("dispatch", "device")
    ordering = ("-id",)
    fields = (
        "dispatch",
        "device",
        "profile_id",
        "status",
        "reason",
        "provider_message_id",
        "attempts",
        "next_attempt_at",
        "expires_at",
        "lease_expires_at",
        "finished_at",
        "opened_at",
    )
    readonly_fields = fields

    def get_queryset(self, request):
        return deliveries_visible_to(request.user).select_related("dispatch", "device")

    def _get_obj_does_not_exist_redirect(self, request, opts, object_id):
        raise Http404("No delivery with this id.")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(DeliveryRules)
class DeliveryRulesAdmin(AccessAdmin):
    """Administrators set each app's frequency cap and quiet hours for marketing pushes."""

    list_display = ("app", "frequency_cap", "frequency_window_hours", "quiet_start", "quiet_end", "quiet_mode")
    list_select_related = ("app",)
    fieldsets = (
        (None, {"fields": ("app",)}),
        ("Frequency cap", {"fields": ("frequency_cap", "frequency_window_hours")}),
        ("Quiet hours", {"fields": ("quiet_start", "quiet_end", "quiet_mode", "default_timezone")}),
    )

    def get_queryset(self, request):
        rules = super().get_queryset(request)
        if not request.user.has_perm("delivery.view_deliveryrules"):
            return rules.none()
        return rules.filter(app__in=apps_visible_to(request.user).values("pk"))

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "app":
            kwargs["queryset"] = apps_visible_to(request.user)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        audit(
            actor=request.user, action="delivery_rules_changed", obj=obj, summary={"fields": sorted(form.changed_data)}
        )
