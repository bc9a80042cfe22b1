"""The admin of devices: a big table, with the test flag."""

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Q
from django.http import Http404
from django.template.defaultfilters import pluralize
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from accounts.admin.bases import BigTableAdmin, drawn_for, page_request
from audiences.admin.profiles import external_id_terms
from audiences.models import Profile
from config.zones import zoned
from delivery.models import Device, Dispatch, Platform
from delivery.reasons import reason_html
from delivery.selectors import (
    apps_in_scope,
    device_deliveries,
    devices_visible_to,
    dispatch_named,
    with_source_seen,
)
from delivery.services.devices import (
    MARK_TEST_DEVICE,
    SEE_DEVICE_TOKEN,
    device_token_normal,
    device_token_show,
    devices_test_flag_set,
)


def token_shortened(token: str) -> str:
    """A push token as pages show it: its first and last few characters, enough to tell two phones
    apart and to match a provider's log, never the whole (with the app's key, it pushes to the phone)."""
    keep = min(6, len(token) // 4)
    return f"{token[:keep]}…{token[-keep:]}" if keep else "…"


@admin.register(Device)
class DeviceAdmin(BigTableAdmin):
    """Devices of the apps the user has access to; filter by profile from its page (?profile__id__exact=)."""

    empty_hint = "A phone is listed here once its app registers its push token (POST /api/v1/devices/)."

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
    search_help_text = "An exact token (an APNs token in either case), or a profile's exact external id."
    list_select_related = ("profile", "app")
    raw_id_fields = ("profile",)
    ordering = ("-id",)
    actions = ["mark_test", "unmark_test"]
    fields = (
        "profile",
        "app",
        "platform",
        "token_shown",
        "push_enabled",
        "is_test",
        "active",
        "invalidated_at",
        "invalidated_reason_shown",
        "last_registered_at",
        "created_at",
        "delivery_history",
    )
    readonly_fields = fields

    def get_queryset(self, request):
        return devices_visible_to(request.user).select_related("profile", "app")

    def get_search_results(self, request, queryset, search_term):
        """The device of an exact token, and the devices of the profile of an exact external id, each
        found through its unique index: (app, token) for the apps in the user's scope, and the
        profiles' external id (Django's "=" is iexact: a scan of every device and every profile).
        An APNs token is kept in lowercase (``device_token_normal``), so the term is also looked for
        in lowercase among the iOS devices; an FCM token is found as given."""
        terms = external_id_terms(search_term)
        if not terms:
            return queryset, False
        token = search_term.strip()
        apps = list(apps_in_scope(request.user).values_list("pk", flat=True))  # the index's first column
        profiles = list(Profile.objects.filter(external_id__in=terms).values_list("pk", flat=True))
        tokens = Q(token=token) | Q(
            token=device_token_normal(platform=Platform.IOS, token=token), platform=Platform.IOS
        )
        return queryset.filter((Q(app__in=apps) & tokens) | Q(profile__in=profiles)), False

    def _get_obj_does_not_exist_redirect(self, request, opts, object_id):
        raise Http404("No device with this id.")

    def change_view(self, request, object_id, form_url="", extra_context=None):
        # The reader, for the delivery history's sends (``page_request``).
        return drawn_for(
            request, lambda: super(DeviceAdmin, self).change_view(request, object_id, form_url, extra_context)
        )

    def get_urls(self):
        return [
            path(
                "<path:object_id>/token/",
                self.admin_site.admin_view(self.token_view),
                name=f"{self.opts.app_label}_{self.opts.model_name}_token",
            ),
            *super().get_urls(),
        ]

    def token_view(self, request, object_id):
        """The device's push token in full, to whoever may see it (``SEE_DEVICE_TOKEN``): asked with
        a GET, shown (and audited) on the POST of its button."""
        device = self.get_object(request, object_id)
        if device is None:  # not there, or outside the user's access: the device is not to be known
            raise Http404("No device with this id.")
        if not request.user.has_perm(SEE_DEVICE_TOKEN):
            raise PermissionDenied
        token = device_token_show(device_id=device.pk, by=request.user) if request.method == "POST" else None
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "object": device,
            "title": f"The push token of {device}",
            "token": token,
            "shortened": token_shortened(device.token),
            "back_url": reverse("admin:delivery_device_change", args=[device.pk]),
        }
        return TemplateResponse(request, "admin/delivery/device/token.html", context)

    def has_add_permission(self, request):
        return False  # devices come from the mobile app (the API)

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="Token")
    def short_token(self, obj):
        return token_shortened(obj.token)

    @admin.display(description="Token")
    def token_shown(self, obj):
        request = page_request()
        if request is None or not request.user.has_perm(SEE_DEVICE_TOKEN):
            return token_shortened(obj.token)
        return format_html(
            '{} <a href="{}" id="device-token-ask">Show the full token</a>',
            token_shortened(obj.token),
            reverse("admin:delivery_device_token", args=[obj.pk]),
        )

    @admin.display(description="Invalidated reason")
    def invalidated_reason_shown(self, obj):
        return reason_html(obj.invalidated_reason)

    @admin.display(description="Delivery history")
    def delivery_history(self, obj):
        rows = device_deliveries(obj)
        if not rows:
            return "No delivery yet."
        # Each send named as the page's reader may be told it (``dispatch_named``), in one query.
        request = page_request()
        sends = Dispatch.objects.filter(pk__in={d.dispatch_id for d in rows})
        seen = (
            set(with_source_seen(sends, request.user).filter(source_seen=True).values_list("pk", flat=True))
            if request is not None
            else set()
        )
        return format_html_join(
            "",
            '<div><a href="{}">#{}</a> {} · {} {} {}</div>',
            (
                (
                    reverse("admin:delivery_delivery_change", args=[d.pk]),
                    d.pk,
                    dispatch_named(d.dispatch, seen=d.dispatch_id in seen),
                    d.get_status_display(),
                    reason_html(d.reason) if d.reason else "",
                    f"· opened {zoned(d.opened_at, d.shown_zone)}" if d.opened_at else "",
                )
                for d in rows
            ),
        )

    def _set_test(self, request, queryset, value: bool):
        changed = devices_test_flag_set(
            device_ids=list(queryset.values_list("pk", flat=True)), is_test=value, by=request.user
        )
        self.message_user(request, f"{changed} device{pluralize(changed)} changed.", messages.SUCCESS)

    @admin.action(description="Mark as test devices", permissions=["mark_test"])
    def mark_test(self, request, queryset):
        self._set_test(request, queryset, True)

    @admin.action(description="Unmark as test devices", permissions=["mark_test"])
    def unmark_test(self, request, queryset):
        self._set_test(request, queryset, False)

    def has_mark_test_permission(self, request):
        # An Administrator's (``devices_test_flag_set`` checks it again): test devices get drafts.
        return request.user.has_perm("delivery.change_device") and request.user.has_perm(MARK_TEST_DEVICE)
