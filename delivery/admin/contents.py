"""The admin of push content: the editor, the device previews and the test send."""

import difflib
import re
import threading

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count
from django.db.models.deletion import ProtectedError
from django.http import Http404, HttpResponse, HttpResponseNotAllowed
from django.template.defaultfilters import pluralize
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.text import capfirst
from django.utils.translation import get_language_info
from liquid.exceptions import LiquidError

from accounts.admin.bases import (
    KeptChoiceField,
    ObjectAccessAdminMixin,
    ScopedAdmin,
    asks_again,
    linked_if_visible,
    page_request,
    related_links_that_work,
    senders_html,
    with_reader_sees,
)
from accounts.form_tokens import form_token_done
from accounts.selectors import approvals_outdated_said, approvals_reading, visible_named
from audiences.models import Profile
from audiences.selectors import audience_attribute_names
from config.db import deletion_counts
from config.labels import numbered
from delivery.models import App, Device, Dispatch, PushContent
from delivery.payloads import (
    data_shape_check,
    message_render,
    message_render_failure,
    spec_attributes_unseen,
    variants_shape_check,
)
from delivery.selectors import (
    apps_in_scope,
)
from delivery.services.contents import (
    pushcontent_check,
    pushcontent_holders,
    pushcontent_save,
    pushcontent_test_send,
    pushcontent_uses_described,
    sends_to_simulator,
)

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


def _json_object(value, message: str):
    if value in (None, ""):
        return {}
    if not isinstance(value, dict):
        raise ValidationError(message)
    return value


def _shape_checked(check, value):
    """``value`` when ``check`` passes it; else its messages, as the field's own errors."""
    try:
        check(value)
    except ValidationError as exc:
        raise ValidationError(exc.messages) from None
    return value


def _previews_html(content: PushContent, profile: dict | None, context: dict, *, reader) -> str:
    """iOS and Android lock-screen mock-ups of the content rendered for one profile, under its app's
    name to a ``reader`` who may see the app, "app #3" to one granted the content alone."""
    app_name = "App"
    if content.app_id:  # the form's app, which a live preview may have changed since the page read it
        seen = content.app_id in visible_named(reader, App, [content.app_id])
        app_name = content.app.name if seen else numbered("app", content.app_id)
    return _spec_previews_html(content.spec(), app_name=app_name, profile=profile, context=context)


def _spec_previews_html(spec: dict, *, app_name: str, profile: dict | None, context: dict) -> str:
    """iOS and Android lock-screen mock-ups of a content spec (a content's, or a dispatch's frozen copy)."""
    if spec.get("silent"):
        return format_html("<p>A silent (background) push: nothing is shown on the lock screen.</p>")
    profile = profile or {"attributes": {}}
    try:
        message = message_render(spec, profile=profile, context=context)
    except LiquidError as exc:
        # The place in the words the form's errors use ("the French title: …"), not its path.
        failure = message_render_failure(spec, profile=profile, context=context)
        said = f"{_field_in_words(failure[0])}: {failure[1]}" if failure is not None else exc.message
        return format_html('<p class="errornote">The content does not render: {}</p>', said)
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
        color=(spec.get("android") or {}).get("color") or "#1a73e8",
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


_FIELD_WORDS = {"image_url": "image URL", "tap_url": "tap URL"}


def _field_in_words(field: str) -> str:
    """A text of the content as its editor reads it: ``variants.fr.title`` is "the French title",
    ``data.order`` "the custom data 'order'"."""
    if field.startswith("data."):
        return f"the custom data '{field.removeprefix('data.')}'"
    if not field.startswith("variants."):
        return f"the {_FIELD_WORDS.get(field, field)}"
    locale, name = field.removeprefix("variants.").rsplit(".", 1)
    try:
        language = get_language_info(locale.lower())["name"]
    except KeyError:
        language = locale  # a language Django does not name: its code
    else:
        language = f"{language} ({locale})" if "-" in locale else language  # "French (fr-CA)"
    return f"the {language} {_FIELD_WORDS.get(name, name)}"


def _form_field(path: str, fields) -> str | None:
    name = _SPEC_FIELD.get(path) or path.split(".", 1)[0]
    if path.startswith("variants."):
        name = "variants"
    if path.startswith("data."):
        name = "data"
    return name if name in fields else None


def _said_on(field: str | None, path: str, message: str) -> str:
    """A spec error as the form shows it on ``field`` (``_form_field``): as it reads under the field
    that is its own; after the text it is about, in words, under a field of several texts (a
    variant's title, a custom data value). The API names the path itself (``body``, ``android.color``)."""
    if (field is not None and field in (path, _SPEC_FIELD.get(path))) or re.fullmatch(r"variants\.[^.]+", path):
        return message  # its own field, or a variant's payload, whose message names its locale
    return f"{capfirst(_field_in_words(path))}: {message}"


def test_send_reach(app_ids: list[int]) -> str:
    """How many phones test sends of contents of ``app_ids`` (an app once per content) reach, as the
    question asking for them says it: each content's app's active test devices, counted now (one QA
    phone and a thousand phones read alike). The campaign page's Test send says it too."""
    per_app = dict(
        Device.objects.filter(app_id__in=set(app_ids), is_test=True, active=True)
        .values("app_id")
        .annotate(n=Count("pk"))
        .values_list("app_id", "n")
    )
    phones = sum(per_app.get(app_id, 0) for app_id in app_ids)
    if len(app_ids) == 1:
        return f"It reaches {phones} phone{pluralize(phones)}: the active test devices of its app."
    return f"They reach {phones} phone{pluralize(phones)} in all: each its app's active test devices."


@admin.register(PushContent)
class PushContentAdmin(ObjectAccessAdminMixin, ScopedAdmin):
    list_display = ("name", "app_shown", "title", "silent", "version", "updated_at")
    # Sorted by the app's name, which it says by number to a reader granted the content alone.
    withheld_columns = ("app_shown",)
    list_filter = (("app", admin.RelatedOnlyFieldListFilter), "silent")
    search_fields = ("name", "title")
    list_select_related = ("app",)
    actions = ["send_test"]
    readonly_fields = ("previews", "version", "object_access", "created_at", "updated_at", "sent_by")

    class Media:
        js = ("delivery/content_form.js",)

    def get_queryset(self, request):
        # A content granted without its app names it only to whoever may see it (``app_shown``).
        return with_reader_sees(super().get_queryset(request), request.user, field="app_id", model=App, name="app_seen")

    @admin.display(description="App", ordering="app__name")
    def app_shown(self, obj):
        """The app, named to a reader who may see it, "app #3" to a reader granted the content alone."""
        return obj.app.name if getattr(obj, "app_seen", False) else numbered("app", obj.app_id)

    def get_deleted_objects(self, objs, request):
        """The page and the list's action both refuse, listing them, what journeys still send. What a
        foreign key protects (a campaign's content, a variant of one) is told as its reader may be
        told (``pushcontent_uses_described``): Django's listing named each, a variant of a campaign
        the reader may not see too, and a campaign as a kind they "may not delete"."""
        objs = list(objs)
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        if protected:
            try:
                deletion_counts(objs)
            except ProtectedError as exc:
                # Refused whatever the role may delete: the protection is what is said.
                perms_needed, protected = (
                    set(),
                    pushcontent_uses_described(objects=exc.protected_objects, by=request.user),
                )
        return deleted, counts, perms_needed, [*protected, *pushcontent_holders([o.pk for o in objs], by=request.user)]

    def delete_model(self, request, obj):
        if holders := pushcontent_holders([obj.pk], by=request.user):
            raise PermissionDenied(f"{obj} is still sent by: {'; '.join(holders)}.")
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        if holders := pushcontent_holders(queryset.values_list("pk", flat=True), by=request.user):
            raise PermissionDenied(f"Still sent by: {'; '.join(holders)}.")
        super().delete_queryset(request, queryset)

    # The admin's own labels would read "Ios sound", "Image url", "Ttl seconds"; text fields wide
    # enough for Liquid.
    LABELS = {"image_url": "Image URL", "tap_url": "Tap URL", "ttl_seconds": "Time to live (seconds)"}
    WIDE = {"title": 80, "subtitle": 80, "image_url": 80, "tap_url": 80}

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        field = super().formfield_for_dbfield(db_field, request, **kwargs)
        if field is None:
            return field
        for platform, shown in (("ios", "iOS"), ("android", "Android")):
            key = db_field.name.removeprefix(f"{platform}_")
            if key != db_field.name:
                field.label = f"{shown} {PushContent.platform_options(platform)[key]}"
        if db_field.name in self.LABELS:
            field.label = self.LABELS[db_field.name]
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

    def get_fieldsets(self, request, obj=None):
        """The content's version and dates, and what sends it, once it is saved: an add page has
        none of its own."""
        if obj is None:
            return [fieldset for fieldset in self.fieldsets if fieldset[0] != "History"]
        return [*super().get_fieldsets(request, obj), ("Sent by", {"fields": ("sent_by",)})]

    @admin.display(description="Sent by")
    def sent_by(self, obj):
        """What still to send sends this content (a campaign's content or variant, a journey's
        push step), as the reader may be told, and what an edit of it does to them."""
        from delivery.services.contents import pushcontent_senders

        request = page_request()
        return senders_html(
            "content-sent-by",
            pushcontent_senders(obj.pk, by=request.user if request is not None else None),
            none="Nothing still to send sends it.",
            # What the send path does (``Campaign.approved``, ``JourneyVersion.frozen_specs``): the
            # approved versions send their copy of the content, never the edited row.
            edit="An edit of it (a renaming aside) reaches each of them only once approved for it. A scheduled or "
            "live campaign, and a live journey, keeps sending it as it was approved (a copy frozen at its "
            "approval) until a revision with the edit (a journey's new version) is submitted and approved; one "
            "waiting for approval must be submitted again; a draft sends nothing before its approval.",
        )

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "app":
            kwargs["queryset"] = apps_in_scope(request.user)
            kwargs["form_class"] = KeptChoiceField
            kwargs["label_fields"] = ("name",)  # each one's __str__
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def get_form(self, request, obj=None, change=False, **kwargs):
        """Validate through the service while the form validates, so its errors show on the form."""
        form_class = super().get_form(request, obj, change=change, **kwargs)

        class ValidatingForm(form_class):
            # An object of texts or nothing (a number, a list, a value that is not text is refused
            # here, before the content takes it, so the page shown again previews the content as
            # saved, and the live preview renders only texts).
            def clean_data(self):
                data = _json_object(self.cleaned_data.get("data"), "Custom data must map keys to strings.")
                return _shape_checked(data_shape_check, data)

            def clean_variants(self):
                variants = _json_object(
                    self.cleaned_data.get("variants"), "Variants must be an object of locale → texts."
                )
                return _shape_checked(variants_shape_check, variants)

            # Whether the content's app sends to the push simulator, read once for the check and the save.
            uses_simulator: bool | None = None

            def _post_clean(self):
                """Check the content through the service even with a field refused already, so one
                answer names every wrong field; the refused field's own error says it (the content
                holds its saved value there). Nothing is saved."""
                super()._post_clean()
                try:
                    self.uses_simulator = sends_to_simulator(self.instance.app_id)
                    pushcontent_check(content=self.instance, uses_simulator=self.uses_simulator)
                except ValidationError as exc:
                    for path, errors in exc.message_dict.items():
                        field = _form_field(path, self.fields)
                        if field not in self.errors:  # a field's own error says it already
                            self.add_error(field, [_said_on(field, path, e) for e in errors])

        field = ValidatingForm.base_fields.get("app")
        if obj is not None and field is not None:
            # A content granted without its app keeps it, offered by number, not by name (as a
            # campaign's form keeps a colleague's app); no one picks it who may not see it.
            field.queryset = field.queryset | App.objects.filter(pk=obj.app_id)
            field.reader = request.user
        related_links_that_work(request, ValidatingForm)
        return ValidatingForm

    def save_model(self, request, obj, form, change):
        # The requests waiting that approve this content as it was: a save changing it outdates them.
        reading = approvals_reading(obj) if change else []
        pushcontent_save(content=obj, by=request.user, uses_simulator=getattr(form, "uses_simulator", None))
        if outdated := approvals_outdated_said(request.user, reading, what="this content"):
            self.message_user(request, outdated, messages.WARNING)
        self._warn_of_unseen_attributes(request, obj)

    def _warn_of_unseen_attributes(self, request, content: PushContent) -> None:
        """Warn of each attribute the texts read that no recent profile of the app's audience holds,
        naming where it is read and the known name closest to it: a misspelt name renders empty, or
        its default, for everyone. Saved all the same: a later import may bring it. One query (or
        a cached read, ``audience_attribute_names``); nothing when the audience holds no attribute."""
        seen = audience_attribute_names(app_id=content.app_id)
        if not seen:
            return
        # Its app by number to a reader granted the content alone, as its page says it.
        app_name = visible_named(request.user, App, [content.app_id]).get(content.app_id)
        app_name = app_name or numbered("app", content.app_id)
        reads: dict[str, list[tuple[str, str | None]]] = {}
        for field, name, shown in spec_attributes_unseen(content.spec(), seen=set(seen)):
            reads.setdefault(name, []).append((_field_in_words(field), shown))
        for name, uses in reads.items():
            places = [place for place, _ in uses]
            where = places[0] if len(places) == 1 else f"{', '.join(places[:-1])} and {places[-1]}"
            shown = {default for _, default in uses}
            if shown == {""}:
                effect = "renders empty"
            elif None in shown or "" in shown:
                effect = "reads as empty (or renders its default)"
            elif len(shown) == 1:
                effect = f"renders its default ('{shown.pop()}') for everyone"
            else:
                effect = "renders its defaults for everyone"
            close = difflib.get_close_matches(name, seen, n=1)
            hint = f": did you mean '{close[0]}'? It {effect}" if close else f": it {effect}"
            self.message_user(
                request,
                f"No recent profile in {app_name}'s audience has the attribute '{name}' "
                f"(read in {where}){hint} until one has it.",
                messages.WARNING,
            )

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
            _previews_html(obj, profile, {}, reader=request.user if request is not None else None),
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
        obj = None
        if object_id is not None:
            obj = self.get_object(request, str(object_id))
            if obj is None or not self.has_view_permission(request, obj):
                raise Http404("No such content.")  # outside one's access, whatever the method
        elif not self.has_add_permission(request):
            raise PermissionDenied
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])  # the form is posted to it, nothing else
        form_class = self.get_form(request, obj, change=obj is not None)
        form = form_class(request.POST, instance=obj or PushContent())
        form.is_valid()  # fills the instance with what validates; the rest stays as saved
        wanted = request.POST.get("preview_profile", "").strip()
        profile = None
        if wanted and "\x00" not in wanted:  # no external id holds one: PostgreSQL text cannot
            profile = (
                Profile.objects.filter(external_id=wanted)
                .values("external_id", "locale", "timezone", "attributes")
                .first()
            )
        locale = request.POST.get("preview_locale", "").strip()
        if locale:
            profile = {**(profile or {"attributes": {}}), "locale": locale}
        return HttpResponse(_previews_html(form.instance, profile, {}, reader=request.user))

    def change_view(self, request, object_id, form_url="", extra_context=None):
        _current.request = request  # the previews read the chosen profile from the query string
        try:
            response = super().change_view(request, object_id, form_url, extra_context)
            if hasattr(response, "render"):
                response.render()  # while the request is known
            return response
        finally:
            _current.request = None

    def test_send_reach(self, request, queryset) -> list[str]:
        """What Send a test says it does: to whom, and how many phones it reaches (``test_send_reach``)."""
        return [
            "Each is sent as it is now, approved or not, to its app's test devices alone; the next page links "
            "each test send, to follow what each device got.",
            test_send_reach(list(queryset.values_list("app_id", flat=True))),
        ]

    @admin.action(description="Send a test to the app's test devices", permissions=["test_send"])
    @asks_again(
        verb="Send a test of",
        consequences=test_send_reach,
        once="test_sent_again",  # a double click on Yes sends once
    )
    def send_test(self, request, queryset):
        started = []
        for content in queryset:
            try:
                dispatch = pushcontent_test_send(content_id=content.pk, by=request.user)
            except (PermissionDenied, ValidationError) as exc:
                said = " ".join(getattr(exc, "messages", [str(exc)]))  # a refusal's sentences, not its dict
                self.message_user(request, f"{content}: {said}", messages.ERROR)
                continue
            started.append(dispatch.pk)
            url = reverse("admin:delivery_dispatch_change", args=[dispatch.pk])
            self.message_user(
                request, format_html('{}: test sent, <a href="{}">follow it</a>.', content, url), messages.SUCCESS
            )
        if started:
            form_token_done(request.form_token_use, result_id=min(started))

    def test_sent_again(self, request, queryset, use):
        """Send a test's Yes posted again (a double click): nothing sent again, the test send of each
        content it started linked; the action pressed again asks anew, and sends anew."""
        firsts = {}
        if use.result_id is not None:
            # The question's own sends: made by its user from its first one on, the first of each content.
            made = Dispatch.objects.filter(
                kind=Dispatch.Kind.TEST,
                created_by_id=use.user_id,
                source_id__in=[content.pk for content in queryset],
                pk__gte=use.result_id,
            ).order_by("pk")
            for dispatch in made:
                firsts.setdefault(dispatch.source_id, dispatch)
        when = f"{use.used_at:%Y-%m-%d %H:%M}"
        if not firsts:  # each content was refused, saying why, on the first answer
            message = format_html(
                "This test send was asked already, on {} UTC, and sent nothing: nothing was sent now. Press Send "
                "a test again to try again.",
                when,
            )
        else:
            message = format_html(
                "This test send was started already, on {} UTC: {}. Nothing was sent again; press Send a test "
                "again to send another test.",
                when,
                format_html_join("; ", "{}", ((linked_if_visible(request, d),) for d in firsts.values())),
            )
        self.message_user(request, message, messages.WARNING)

    def has_test_send_permission(self, request):
        return request.user.has_perm("delivery.test_send_pushcontent")
