"""The admin of accounts, and the admin bases every app uses: scoped (object access), big-table,
and the buttons of objects with a lifecycle."""

import contextvars

from django import forms
from django.apps import apps as django_apps
from django.contrib import admin, messages
from django.contrib.admin.utils import NotRelationField, get_fields_from_path
from django.contrib.auth.admin import GroupAdmin as DjangoGroupAdmin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.models import Group
from django.core.exceptions import FieldDoesNotExist, PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.db import connection, models
from django.http import Http404, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join

from accounts.approvals import approval_subject_for
from accounts.forms import ThrottledAdminAuthenticationForm
from accounts.json_values import JsonValueFormField
from accounts.models import ApiKey, ApprovalPolicy, ApprovalRequest, AuditEvent, User
from accounts.roles import ROLES, role_capabilities
from accounts.selectors import (
    api_key_owner_choices,
    api_keys_visible_to,
    approval_request_stuck,
    approval_requests_visible_to,
    approvals_waiting_for,
    approver_standing,
    audit_events_visible_to,
    can,
    grants_on,
    object_access_of,
    policy_approver_problems,
    visible_to,
)
from accounts.services import (
    access_grant,
    access_revoke,
    api_key_create,
    api_key_revoke,
    approval_policy_activate,
    approval_policy_deactivate,
    audit,
    user_roles_given,
)

admin.site.login_form = ThrottledAdminAuthenticationForm
admin.site.site_header = "Pushdesk"
admin.site.site_title = "Pushdesk"
admin.site.index_title = "Back-office"


# --- bases ---------------------------------------------------------------------------------


class EstimatedCountPaginator(Paginator):
    """Never counts a big table: the planner's estimate for the unfiltered list, a capped count otherwise."""

    cap = 10_000

    @cached_property
    def count(self):
        qs = self.object_list
        if connection.vendor == "postgresql" and not qs.query.where:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass", [qs.model._meta.db_table]
                )
                row = cursor.fetchone()
            if row and row[0] and row[0] > self.cap:
                return int(row[0])
        return qs[: self.cap + 1].count()


class VisibleRelatedFilter(admin.RelatedOnlyFieldListFilter):
    """A filter on a relation that offers only what the user may see: for objects under access
    control (apps, segments...) those in the user's access, for others (owners, actors...) those
    of the rows in the user's list."""

    def field_choices(self, field, request, model_admin):
        related = field.related_model
        queryset = related._default_manager.all()
        if isinstance(admin.site._registry.get(related), ScopedAdmin):
            queryset = visible_to(request.user, queryset)
        else:
            queryset = queryset.filter(pk__in=model_admin.get_queryset(request).values(f"{self.field_path}__pk"))
        ordering = self.field_admin_ordering(field, request, model_admin)
        return [(obj.pk, str(obj)) for obj in queryset.order_by(*ordering)]


class AccessAdmin(admin.ModelAdmin):
    """An admin whose object pages answer 404 for an object outside ``get_queryset``, before any permission check.

    Django checks the role's permission first, so a user without it got 403 for an object that
    exists and a redirect for one that does not; here both answer 404 and tell nothing. Its JSON
    fields pass the JSON value check (``accounts.json_values``). Its list filters on a relation
    offer only the related objects the user may see (``VisibleRelatedFilter``).
    """

    formfield_overrides = {models.JSONField: {"form_class": JsonValueFormField}}

    def get_list_filter(self, request):
        filters = []
        for spec in super().get_list_filter(request):
            name, kind = (spec, None) if isinstance(spec, str) else (spec if isinstance(spec, tuple) else (None, spec))
            if name and kind in (None, admin.RelatedFieldListFilter, admin.RelatedOnlyFieldListFilter):
                try:
                    field = get_fields_from_path(self.model, name)[-1]
                except (FieldDoesNotExist, NotRelationField):
                    field = None
                if field is not None and field.is_relation and field.related_model is not Group:
                    spec = (name, VisibleRelatedFilter)
            filters.append(spec)
        return filters

    def get_object(self, request, object_id, from_field=None):
        # A role that may not even view this kind of object learns nothing about which ids exist.
        if not self.has_view_or_change_permission(request):
            raise Http404(f"No {self.model._meta.verbose_name} with this id.")
        obj = super().get_object(request, object_id, from_field)
        if obj is None:
            raise Http404(f"No {self.model._meta.verbose_name} with this id.")
        return obj

    def _get_obj_does_not_exist_redirect(self, request, opts, object_id):
        raise Http404(f"No {opts.verbose_name} with this id.")


class BigTableAdmin(AccessAdmin):
    """The cheap admin for tables that grow (STYLE rule 4): no full count, estimated pages, no facets."""

    show_full_result_count = False
    paginator = EstimatedCountPaginator
    show_facets = admin.ShowFacets.NEVER
    list_per_page = 50


class ScopedAdmin(AccessAdmin):
    """An admin whose lists and pages hold only what the user has object access to.

    An object outside the user's access answers 404 on every page, as if it did not exist.
    """

    def get_queryset(self, request):
        return visible_to(request.user, super().get_queryset(request))

    def _get_obj_does_not_exist_redirect(self, request, opts, object_id):
        raise Http404(f"No {opts.verbose_name} with this id.")

    def _perm(self, action: str) -> str:
        opts = self.model._meta
        return f"{opts.app_label}.{action}_{opts.model_name}"

    def has_change_permission(self, request, obj=None):
        if not super().has_change_permission(request, obj):
            return False
        return obj is None or can(request.user, self._perm("change"), obj)

    def has_delete_permission(self, request, obj=None):
        if not super().has_delete_permission(request, obj):
            return False
        return obj is None or can(request.user, self._perm("delete"), obj)

    def has_view_permission(self, request, obj=None):
        if not super().has_view_permission(request, obj):
            return False
        return obj is None or can(request.user, self._perm("view"), obj)


class _AccessForm(forms.Form):
    user = forms.ModelChoiceField(queryset=User.objects.filter(is_active=True).order_by("username"), required=False)
    group = forms.ModelChoiceField(queryset=Group.objects.order_by("name"), required=False)

    def clean(self):
        data = super().clean()
        if bool(data.get("user")) == bool(data.get("group")):
            raise ValidationError("Choose either a user or a group.")
        return data


class ObjectAccessAdminMixin:
    """Adds an "Access" page to an object's admin: who was granted it, grant and revoke."""

    def get_urls(self):
        opts = self.model._meta
        return [
            path(
                "<path:object_id>/access/",
                self.admin_site.admin_view(self.access_view),
                name=f"{opts.app_label}_{opts.model_name}_access",
            ),
            *super().get_urls(),
        ]

    @admin.display(description="Object access")
    def object_access(self, obj):
        if obj is None or obj.pk is None:
            return "Saved objects only."
        principals = grants_on(obj)
        label = (
            ", ".join(f"group {p.name}" if isinstance(p, Group) else p.get_username() for p in principals)
            or "nobody yet (Administrators see everything)"
        )
        opts = self.model._meta
        url = reverse(f"admin:{opts.app_label}_{opts.model_name}_access", args=[obj.pk])
        return format_html('{} — <a href="{}">manage access</a>', label, url)

    def access_view(self, request, object_id):
        obj = self.get_object(request, object_id)
        if obj is None or not self.has_view_permission(request, obj):
            raise Http404("No such object.")
        may_manage = request.user.has_perm("accounts.manage_object_access")
        form = _AccessForm(request.POST or None)
        if request.method == "POST":
            if not may_manage:
                raise PermissionDenied("Only an Administrator can grant or revoke object access.")
            revoke = request.POST.get("revoke", "")
            if revoke:
                kind, _, pk = revoke.partition(":")
                principal = (Group if kind == "group" else User).objects.filter(pk=pk).first()
                if principal is None:
                    raise Http404("No such user or group.")
                access_revoke(obj=obj, to=principal, by=request.user)
                self.message_user(request, f"Access revoked from {principal}.", messages.SUCCESS)
                return HttpResponseRedirect(request.path)
            if form.is_valid():
                principal = form.cleaned_data["user"] or form.cleaned_data["group"]
                access_grant(obj=obj, to=principal, by=request.user)
                self.message_user(request, f"Access granted to {principal}.", messages.SUCCESS)
                return HttpResponseRedirect(request.path)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "object": obj,
            "title": f"Access to {obj}",
            "grants": [
                {
                    "label": f"group {p.name}" if isinstance(p, Group) else p.get_username(),
                    "key": f"{'group' if isinstance(p, Group) else 'user'}:{p.pk}",
                }
                for p in grants_on(obj)
            ],
            "form": form,
            "may_manage": may_manage,
        }
        return TemplateResponse(request, "admin/object_access.html", context)


# --- users and roles ------------------------------------------------------------------------


class AppAccessInline(admin.TabularInline):
    """The apps a user may work on (an App grant reaches its campaigns and journeys), granted and
    revoked here through the access services: app, granted by, when."""

    model = django_apps.get_model("delivery", "AppUserObjectPermission")
    fk_name = "user"
    fields = ("content_object", "granted")
    readonly_fields = ("granted",)
    extra = 1
    verbose_name = "app access"
    verbose_name_plural = "Access to apps"

    def get_queryset(self, request):
        return super().get_queryset(request).filter(permission__codename="view_app").select_related("content_object")

    def has_add_permission(self, request, obj=None):
        return request.user.has_perm("accounts.manage_object_access")

    def has_change_permission(self, request, obj=None):
        return False  # a grant is added or removed, never edited

    def has_delete_permission(self, request, obj=None):
        return request.user.has_perm("accounts.manage_object_access")

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "content_object":
            kwargs["label"] = "App"
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    @admin.display(description="Granted")
    def granted(self, obj):
        if obj is None or obj.pk is None:
            return "—"
        from django.contrib.contenttypes.models import ContentType

        event = (
            AuditEvent.objects.filter(
                object_type=ContentType.objects.get_for_model(obj.content_object),
                object_id=str(obj.content_object_id),
                action="access_granted",
                summary__to=f"user:{obj.user.get_username()}",
            )
            .order_by("-created_at")
            .first()
        )
        if event is None:
            return "—"
        return f"by {event.actor_label} on {event.created_at:%Y-%m-%d %H:%M} UTC"


@admin.register(User)
class UserAdmin(AccessAdmin, DjangoUserAdmin):
    list_display = ("username", "email", "roles", "is_active", "is_staff", "is_service_account", "last_login")
    list_filter = ("groups", "is_active", "is_staff", "is_service_account")
    readonly_fields = ("last_login", "date_joined", "role_summary", "object_access")
    fieldsets = (
        (None, {"fields": ("username", "password")}),
        ("Personal info", {"fields": ("first_name", "last_name", "email")}),
        ("Role", {"fields": ("groups", "role_summary"), "description": "A role says what one may do."}),
        ("Object access", {"fields": ("object_access",), "description": "Object access says where."}),
        ("Status", {"fields": ("is_active", "is_staff", "is_service_account", "is_superuser")}),
        ("Dates", {"fields": ("last_login", "date_joined")}),
    )

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("groups")

    def get_readonly_fields(self, request, obj=None):
        fields = list(super().get_readonly_fields(request, obj))
        if not request.user.is_superuser:
            fields.append("is_superuser")  # nobody but a superuser makes a superuser
        return fields

    def formfield_for_manytomany(self, db_field, request, **kwargs):
        if db_field.name == "groups":
            kwargs["queryset"] = Group.objects.filter(name__in=ROLES).order_by("name")
            kwargs["help_text"] = "The user's role(s): " + ", ".join(ROLES) + "."
        return super().formfield_for_manytomany(db_field, request, **kwargs)

    @admin.display(description="Roles")
    def roles(self, obj):
        return ", ".join(g.name for g in obj.groups.all()) or "—"

    @admin.display(description="What the roles allow")
    def role_summary(self, obj):
        if obj is None or obj.pk is None:
            return "—"
        rows = [(role, "; ".join(role_capabilities(role))) for role in obj.role_names()]
        if not rows:
            return "No role: this user can do nothing."
        return format_html_join("", "<div><strong>{}</strong>: {}</div>", rows)

    @admin.display(description="Granted objects")
    def object_access(self, obj):
        if obj is None or obj.pk is None:
            return "—"
        grants = object_access_of(obj)
        if not grants:
            return "None (Administrators see everything)."
        return format_html_join(
            "", "<div>{} <em>{}</em> ({})</div>", ((o._meta.verbose_name, o, how) for o, how in grants)
        )

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        changed = sorted(f for f in form.changed_data if f != "password")
        audit(
            actor=request.user,
            action="user_changed" if change else "user_created",
            obj=obj,
            summary={"fields": changed},
        )

    inlines = [AppAccessInline]

    def get_inline_instances(self, request, obj=None):
        return super().get_inline_instances(request, obj) if obj is not None else []  # apps once the user exists

    def change_view(self, request, object_id, form_url="", extra_context=None):
        """Those who may not manage users (an owner's or creator's link) get the user's card, read-only."""
        if self.has_view_permission(request):
            return super().change_view(request, object_id, form_url, extra_context)
        if request.method != "GET" or not request.user.role_names():
            raise PermissionDenied("Only an Administrator manages users.")
        person = User.objects.filter(pk=object_id, is_active=True).prefetch_related("groups").first()
        if person is None:
            raise Http404("No such user.")
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": f"{person.get_full_name() or person.get_username()}",
            "person": person,
            "roles": person.role_names(),
        }
        return TemplateResponse(request, "admin/accounts/user/card.html", context)

    def save_formset(self, request, form, formset, change):
        if formset.model is not AppAccessInline.model:
            return super().save_formset(request, form, formset, change)
        user = form.instance
        # The admin's change message reads these; the grants are written by the access services below.
        formset.new_objects, formset.changed_objects, formset.deleted_objects = [], [], []
        for inline_form in formset.forms:
            app = inline_form.cleaned_data.get("content_object") if hasattr(inline_form, "cleaned_data") else None
            if app is None:
                continue
            if inline_form in formset.deleted_forms:
                access_revoke(obj=app, to=user, by=request.user)
            elif inline_form.instance.pk is None:
                access_grant(obj=app, to=user, by=request.user)

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        if "groups" in form.changed_data:
            audit(
                actor=request.user,
                action="roles_changed",
                obj=form.instance,
                summary={"roles": [g.name for g in form.instance.groups.all()]},
            )
        user_roles_given(user=form.instance, by=request.user)


admin.site.unregister(Group)


@admin.register(Group)
class GroupAdmin(AccessAdmin, DjangoGroupAdmin):
    """Groups are roles or teams; a role's permissions come from the roles table in code."""

    def get_readonly_fields(self, request, obj=None):
        if obj is not None and obj.name in ROLES:
            return ("name", "permissions")
        return ()


# --- API keys --------------------------------------------------------------------------------


class ApiKeyAddForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(choices=ApiKey.Scope.choices, widget=forms.CheckboxSelectMultiple)

    class Meta:
        model = ApiKey
        fields = ("user", "name", "scopes", "expires_at")


@admin.register(ApiKey)
class ApiKeyAdmin(AccessAdmin):
    list_display = ("name", "user", "masked", "scope_list", "status", "created_at", "expires_at", "last_used_at")
    search_fields = ("name", "user__username", "prefix")
    actions = ["revoke_keys"]
    readonly_fields = (
        "masked",
        "user",
        "name",
        "scopes",
        "created_at",
        "created_by",
        "expires_at",
        "revoked_at",
        "last_used_at",
    )

    def get_queryset(self, request):
        return api_keys_visible_to(request.user)

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = ApiKeyAddForm
        return super().get_form(request, obj, **kwargs)

    def get_fields(self, request, obj=None):
        if obj is None:
            return ("user", "name", "scopes", "expires_at")
        return self.readonly_fields

    def get_readonly_fields(self, request, obj=None):
        return () if obj is None else self.readonly_fields

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "user":
            # Only users whose role may own a key: never a Viewer or a user without a role.
            kwargs["queryset"] = api_key_owner_choices(request.user)
            if not request.user.has_perm("accounts.manage_others_apikey"):
                kwargs["initial"] = request.user.pk
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def get_changeform_initial_data(self, request):
        return {"user": request.user.pk}

    def has_change_permission(self, request, obj=None):
        return False  # keys are immutable; revoke and create a new one

    def has_delete_permission(self, request, obj=None):
        return False  # revoked keys stay for the record

    def _get_obj_does_not_exist_redirect(self, request, opts, object_id):
        raise Http404("No API key with this id.")

    def save_model(self, request, obj, form, change):
        try:
            key, raw = api_key_create(
                user=form.cleaned_data["user"],
                name=form.cleaned_data["name"],
                scopes=form.cleaned_data["scopes"],
                expires_at=form.cleaned_data.get("expires_at"),
                by=request.user,
            )
        except ValidationError as exc:
            raise PermissionDenied("; ".join(exc.messages)) from exc
        obj.pk = key.pk
        request._pushdesk_new_key = (key, raw)

    def save_related(self, request, form, formsets, change):
        pass  # nothing related; the service saved everything

    def response_add(self, request, obj, post_url_continue=None):
        key, raw = request._pushdesk_new_key
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "key": key,
            "raw_key": raw,
            "title": "API key created",
        }
        response = TemplateResponse(request, "admin/accounts/apikey/created.html", context)
        response["Cache-Control"] = "no-store"
        return response

    @admin.display(description="Key")
    def masked(self, obj):
        return f"pdk_{obj.prefix}_…"

    @admin.display(description="Scopes")
    def scope_list(self, obj):
        return ", ".join(obj.scopes)

    @admin.action(description="Revoke selected API keys", permissions=["revoke_keys"])
    def revoke_keys(self, request, queryset):
        for key in queryset:
            api_key_revoke(key_id=key.pk, by=request.user)
        self.message_user(request, f"{queryset.count()} key(s) revoked.", messages.SUCCESS)

    def has_revoke_keys_permission(self, request):
        return request.user.has_perm("accounts.change_apikey")

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions


# --- audit log --------------------------------------------------------------------------------


@admin.register(AuditEvent)
class AuditEventAdmin(BigTableAdmin):
    """Read-only for everyone, superusers included."""

    list_display = ("created_at", "actor_label", "action", "object_type", "object_label")
    list_filter = ("action", "object_type", ("actor", admin.RelatedOnlyFieldListFilter))
    date_hierarchy = "created_at"
    search_fields = ("object_label", "actor_label", "action")
    list_select_related = ("object_type",)
    fields = ("created_at", "actor_label", "action", "object_type", "object_id", "object_label", "summary")
    readonly_fields = fields

    def get_queryset(self, request):
        return audit_events_visible_to(request.user).select_related("object_type")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_actions(self, request):
        return {}


# --- approvals ----------------------------------------------------------------------------------

CAMPAIGN_KINDS = (("scheduled", "Scheduled"), ("api_triggered", "API-triggered"))
PURPOSES = (("marketing", "Marketing"), ("transactional", "Transactional"))


class ApprovalPolicyForm(forms.ModelForm):
    app_ids = forms.TypedMultipleChoiceField(
        coerce=int, required=False, label="Apps", help_text="Only objects of these apps (none chosen: any app)."
    )
    campaign_kinds = forms.MultipleChoiceField(
        choices=CAMPAIGN_KINDS, required=False, widget=forms.CheckboxSelectMultiple, help_text="None chosen: any kind."
    )
    purposes = forms.MultipleChoiceField(
        choices=PURPOSES, required=False, widget=forms.CheckboxSelectMultiple, help_text="None chosen: any purpose."
    )

    class Meta:
        model = ApprovalPolicy
        fields = (
            "name",
            "description",
            "applies_to_campaigns",
            "applies_to_journeys",
            "app_ids",
            "campaign_kinds",
            "purposes",
            "approver_users",
            "approver_groups",
            "block_self_approval",
        )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        app_model = django_apps.get_model("delivery", "App")
        self.fields["app_ids"].choices = list(app_model.objects.order_by("name").values_list("pk", "name"))

    def clean(self):
        data = super().clean()
        if not (data.get("applies_to_campaigns") or data.get("applies_to_journeys")):
            raise ValidationError("A policy applies to campaigns, journeys, or both.")
        users, groups = data.get("approver_users") or [], data.get("approver_groups") or []
        if users or groups:
            problems = policy_approver_problems(
                users=users,
                groups=groups,
                app_ids=data.get("app_ids") or [],
                campaigns=bool(data.get("applies_to_campaigns")),
                journeys=bool(data.get("applies_to_journeys")),
            )
            if problems:
                raise ValidationError([*problems, "Requests routed to this policy could not be decided."])
        return data


@admin.register(ApprovalPolicy)
class ApprovalPolicyAdmin(AccessAdmin):
    form = ApprovalPolicyForm
    list_display = (
        "name",
        "is_active",
        "activated_at",
        "applies_to_campaigns",
        "applies_to_journeys",
        "block_self_approval",
    )
    filter_horizontal = ("approver_users", "approver_groups")
    actions = ["activate", "deactivate"]

    def has_change_permission(self, request, obj=None):
        if obj is not None and obj.is_active:
            return False  # an active policy is not edited: deactivate it first
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        if obj is not None and obj.is_active:
            return False
        return super().has_delete_permission(request, obj)

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        audit(actor=request.user, action="approval_policy_changed" if change else "approval_policy_created", obj=obj)

    @admin.action(description="Activate selected policies", permissions=["change"])
    def activate(self, request, queryset):
        for policy in queryset:
            try:
                approval_policy_activate(policy_id=policy.pk, by=request.user)
            except ValidationError as exc:
                self.message_user(request, f"{policy}: {' '.join(exc.messages)}", messages.ERROR)
            else:
                self.message_user(
                    request, f"Activated “{policy}”: it routes the requests it matches.", messages.SUCCESS
                )

    @admin.action(description="Deactivate selected policies", permissions=["change"])
    def deactivate(self, request, queryset):
        for policy in queryset:
            approval_policy_deactivate(policy_id=policy.pk, by=request.user)
            self.message_user(
                request,
                f"Deactivated “{policy}”: new requests no longer go to it (pending ones keep their approvers).",
                messages.SUCCESS,
            )


class _InboxFilter(admin.SimpleListFilter):
    title = "show"
    parameter_name = "show"

    def lookups(self, request, model_admin):
        return (("mine_to_decide", "Waiting for my approval"), ("my_requests", "My requests"), ("all", "All I can see"))

    def choices(self, changelist):
        value = self.value() or "mine_to_decide"
        for lookup, title in self.lookup_choices:
            yield {
                "selected": value == lookup,
                "query_string": changelist.get_query_string({self.parameter_name: lookup}),
                "display": title,
            }

    def queryset(self, request, queryset):
        value = self.value() or "mine_to_decide"
        if value == "mine_to_decide":
            return queryset.filter(pk__in=[r.pk for r in approvals_waiting_for(request.user)])
        if value == "my_requests":
            return queryset.filter(requested_by=request.user)
        return queryset


class ApprovalDecisionForm(forms.Form):
    comment = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False)


@admin.register(ApprovalRequest)
class ApprovalRequestAdmin(AccessAdmin):
    """The approvers' inbox ("Waiting for my approval") and the requesters' view of decisions."""

    list_display = ("what", "subject_type", "state", "requested_by", "requested_at", "decided_by", "comment")
    list_display_links = None
    show_facets = admin.ShowFacets.NEVER
    list_filter = (_InboxFilter, "status")
    list_select_related = ("requested_by", "decided_by", "subject_type")
    readonly_fields = (
        "subject_type",
        "subject_label",
        "status",
        "message",
        "requested_by",
        "requested_at",
        "policy",
        "decided_by",
        "decided_at",
        "comment",
        "fingerprint",
    )
    fields = readonly_fields

    def get_queryset(self, request):
        return approval_requests_visible_to(request.user)

    def get_urls(self):
        return [
            path(
                "<int:request_id>/review/",
                self.admin_site.admin_view(self.review_view),
                name="accounts_approvalrequest_review",
            ),
            *super().get_urls(),
        ]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def _get_obj_does_not_exist_redirect(self, request, opts, object_id):
        raise Http404("No such approval request.")

    @admin.display(description="Status", ordering="status")
    def state(self, obj):
        if approval_request_stuck(obj):
            return format_html(
                '<strong class="stuck">{}</strong>', "Stuck: nobody may decide it (ask an Administrator)"
            )
        return obj.get_status_display()

    @admin.display(description="What", ordering="subject_label")
    def what(self, obj):
        # Pending requests open the review (approvers decide there); decided ones their record.
        if obj.status == ApprovalRequest.Status.PENDING:
            url = reverse("admin:accounts_approvalrequest_review", args=[obj.pk])
        else:
            url = reverse("admin:accounts_approvalrequest_change", args=[obj.pk])
        return format_html('<a href="{}">{}</a>', url, obj.subject_label)

    def review_view(self, request, request_id):
        approval = self.get_queryset(request).filter(pk=request_id).first()
        if approval is None:
            raise Http404("No such approval request.")
        handler = approval_subject_for(approval.subject_type.model_class())
        if handler is None:
            raise Http404("Nothing can review this kind of object.")
        subject = approval.subject
        allowed, reason = approver_standing(request.user, approval)
        form = ApprovalDecisionForm(request.POST or None)
        if request.method == "POST":
            if not allowed:
                raise PermissionDenied(reason)
            if form.is_valid():
                comment = form.cleaned_data["comment"]
                try:
                    if "_approve" in request.POST:
                        handler.approve(subject_id=subject.pk, by=request.user, comment=comment)
                        self.message_user(request, f"Approved and activated: {subject}.", messages.SUCCESS)
                    elif "_request_changes" in request.POST:
                        handler.request_changes(subject_id=subject.pk, by=request.user, comment=comment)
                        self.message_user(
                            request,
                            f"Changes requested on {subject}: the requester sees your comment.",
                            messages.SUCCESS,
                        )
                    else:
                        raise PermissionDenied("Choose approve or request changes.")
                except ValidationError as exc:
                    form.add_error(None, exc)
                else:
                    return HttpResponseRedirect(reverse("admin:accounts_approvalrequest_changelist"))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": f"Review: {approval.subject_label}",
            "approval": approval,
            "review": handler.review_html(subject, request=approval, user=request.user),
            "form": form,
            "may_decide": allowed,
            "reason": reason,
        }
        return TemplateResponse(request, "admin/accounts/approvalrequest/review.html", context)


# --- objects with a lifecycle (campaigns, journeys) -------------------------------------------------

# The admin instance is shared by every request; the request whose page is being drawn lives here,
# so that readonly fields (which see only the object) can draw the buttons for that user.
_drawing_for: contextvars.ContextVar = contextvars.ContextVar("lifecycle_admin_request", default=None)


class LifecycleAdminMixin:
    """State-aware action buttons on an object's page, each POSTing to one transition view.

    Subclasses name the buttons the user may use now (``lifecycle_actions``) and what each does
    (``lifecycle_handlers``: name → callable; a callable may return ``(message, url)`` to say
    something else or go elsewhere). A refused step (TransitionError, ValidationError) comes back
    as an error message on the object's page; a role or access refusal is a 403 / 404.
    """

    lifecycle_button_name = "lifecycle_action"

    def lifecycle_actions(self, user, obj) -> list[tuple[str, str]]:
        raise NotImplementedError

    def lifecycle_handlers(self, request, object_id: int) -> dict:
        raise NotImplementedError

    def _transition_url_name(self) -> str:
        opts = self.model._meta
        return f"{opts.app_label}_{opts.model_name}_transition"

    @admin.display(description="Actions")
    def lifecycle_buttons(self, obj):
        request = _drawing_for.get()
        if obj is None or obj.pk is None or request is None:
            return "—"
        actions = self.lifecycle_actions(request.user, obj)
        if not actions:
            return "Nothing you can do in this state."
        return format_html_join(
            " ",
            '<button type="submit" formaction="{}" formnovalidate class="button" name="{}" value="{}">{}</button>',
            (
                (
                    reverse(f"admin:{self._transition_url_name()}", args=[obj.pk, name]),
                    self.lifecycle_button_name,
                    name,
                    label,
                )
                for name, label in actions
            ),
        )

    def change_view(self, request, object_id, form_url="", extra_context=None):
        token = _drawing_for.set(request)
        try:
            response = super().change_view(request, object_id, form_url, extra_context)
            if getattr(response, "is_rendered", True) is False:
                response.render()  # while the request is known to the readonly fields
            return response
        finally:
            _drawing_for.reset(token)

    def get_urls(self):
        return [
            path(
                "<int:object_id>/transition/<str:action>/",
                self.admin_site.admin_view(self.transition_view),
                name=self._transition_url_name(),
            ),
            *super().get_urls(),
        ]

    def transition_view(self, request, object_id, action):
        from accounts.services import TransitionError

        if request.method != "POST":
            raise Http404("Transitions are POSTed.")
        handlers = self.lifecycle_handlers(request, object_id)
        if action not in handlers:
            raise Http404("Unknown action.")
        opts = self.model._meta
        target = reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[object_id])
        try:
            outcome = handlers[action]()
        except (TransitionError, ValidationError) as exc:
            self.message_user(request, " ".join(getattr(exc, "messages", [str(exc)])), messages.ERROR)
            return HttpResponseRedirect(target)
        message, url = outcome if isinstance(outcome, tuple) else (f"Done: {action.replace('_', ' ')}.", None)
        self.message_user(request, message, messages.SUCCESS)
        return HttpResponseRedirect(url or target)


class ActiveStatusFilter(admin.SimpleListFilter):
    """A status filter whose default shows what is being worked on (``active_statuses``)."""

    title = "status"
    parameter_name = "status"
    active_statuses: tuple[str, ...] = ()
    active_label = "Being worked on"

    def lookups(self, request, model_admin):
        return (("active", self.active_label), *model_admin.model.Status.choices, ("all", "All"))

    def choices(self, changelist):
        value = self.value() or "active"
        for lookup, title in self.lookup_choices:
            yield {
                "selected": value == str(lookup),
                "query_string": changelist.get_query_string({self.parameter_name: lookup}),
                "display": title,
            }

    def queryset(self, request, queryset):
        value = self.value() or "active"
        if value == "active":
            return queryset.filter(status__in=self.active_statuses)
        if value == "all":
            return queryset
        return queryset.filter(status=value)
