"""The admin of users and roles (groups)."""

from django import forms
from django.apps import apps as django_apps
from django.contrib import admin, messages
from django.contrib.admin.actions import delete_selected as django_delete_selected
from django.contrib.admin.widgets import FilteredSelectMultiple
from django.contrib.auth.admin import GroupAdmin as DjangoGroupAdmin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.forms import UserChangeForm as DjangoUserChangeForm
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import router, transaction
from django.db.models import Q
from django.http import Http404, HttpResponseRedirect
from django.template.defaultfilters import pluralize
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from accounts.admin.bases import AccessAdmin, RowsChoiceField, row_id
from accounts.models import User
from accounts.roles import ROLES, role_capabilities
from accounts.selectors import (
    has_every_scope,
    object_access_of,
    user_known_to,
)
from accounts.services import (
    POLICY_DECIDER_FIX,
    access_grant,
    access_revoke,
    approval_policies_kept_decidable,
    approval_policies_lock,
    audit,
    group_delete,
    team_members_change,
    team_members_change_refused,
    user_delete,
    user_roles_change,
    user_roles_given,
)
from config.db import ROW_IDS
from config.digits import ascii_int


class ShownRowsInput(forms.MultipleHiddenInput):
    """The ids a many-to-many field showed when its page was drawn, posted back with the page (as
    ``initial-<name>``, the field's ``show_hidden_initial``), so that its save applies what the page
    changed (``rows_shown``). An empty one is always among them: a page that showed none says so."""

    def format_value(self, value):
        return [*super().format_value(value), ""]

    def value_from_datadict(self, data, files, name):
        values = super().value_from_datadict(data, files, name) or []
        return [value for value in values if value != ""]


def rows_shown_posted(form: forms.Form, name: str, shown: list[int] | None = None) -> None:
    """Make the many-to-many field ``name`` post back the ids it shows (``ShownRowsInput``), ``shown``
    its initial (None: the form's own), read by ``rows_shown_cleaned``. Call in the form's ``__init__``."""
    field = form.fields[name]
    field.show_hidden_initial = True
    field.hidden_widget = ShownRowsInput
    if shown is not None:
        form.initial[name] = shown
    rows_shown_by_default(form, name)


def rows_shown_by_default(form: forms.Form, name: str) -> None:
    """Read a post that does not say what the field ``name`` showed (a client that posts the field
    alone) as showing what it holds now (the form's initial): its save then makes the field what
    was posted. Call in the form's ``__init__``, once the initial is set."""
    key = form.add_initial_prefix(name)
    if form.is_bound and key not in form.data:
        form.data = form.data.copy()
        shown = [*(str(value) for value in form.initial.get(name, [])), ""]
        if hasattr(form.data, "setlist"):
            form.data.setlist(key, shown)
        else:
            form.data[key] = shown


def rows_shown(form: forms.Form, name: str) -> set[int]:
    """The ids the field ``name`` showed when its page was drawn (``ShownRowsInput``,
    ``rows_shown_by_default``). Raises ValidationError naming the field when an id is no row's."""
    key = form.add_initial_prefix(name)
    shown = set()
    for value in ShownRowsInput().value_from_datadict(form.data, form.files, key):
        try:
            number = ascii_int(value) if isinstance(value, str) else int(value)
        except (TypeError, ValueError):
            number = None
        if number is None or number not in ROW_IDS:  # None: a range asked of it walks every id
            raise ValidationError(f"The {name} the page showed are ids of rows: {str(value)[:20]!r} is none.")
        shown.add(number)
    return shown


def rows_shown_cleaned(form: forms.Form, name: str) -> set[int] | None:
    """``rows_shown`` in a form's ``clean``: None, the error said under the field, when an id is no row's."""
    try:
        return rows_shown(form, name)
    except ValidationError as exc:
        form.add_error(name, exc)
        return None


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
        return (
            super()
            .get_queryset(request)
            .filter(permission__codename="view_app")
            .select_related("content_object", "granted_by")
        )

    def has_view_permission(self, request, obj=None):
        return request.user.has_perm("accounts.manage_object_access")

    def has_add_permission(self, request, obj=None):
        return request.user.has_perm("accounts.manage_object_access")

    def has_change_permission(self, request, obj=None):
        return False  # a grant is added or removed, never edited

    def has_delete_permission(self, request, obj=None):
        return request.user.has_perm("accounts.manage_object_access")

    def get_formset(self, request, obj=None, **kwargs):
        kwargs["labels"] = {"content_object": "App"}  # the column's header as well as the field's label
        # A user has at most one row per app: the page's posted count of rows builds no more (Django's
        # default builds up to two thousand, each shown again with its error).
        apps = self.model._meta.get_field("content_object").related_model
        kwargs["max_num"] = kwargs["absolute_max"] = apps.objects.count()
        return super().get_formset(request, obj, **kwargs)

    @admin.display(description="Granted")
    def granted(self, obj):
        if obj is None or obj.pk is None or obj.granted_at is None:
            return "—"
        when = timezone.localtime(obj.granted_at)
        by = obj.granted_by.get_username() if obj.granted_by is not None else "the system"
        return f"by {by} on {when:%Y-%m-%d %H:%M} {when.tzname()}"


class UserChangeForm(DjangoUserChangeForm):
    """The user page's form. Its roles field (the model's groups) offers the roles alone: the user's
    other groups (teams, which an approval policy may name) are left as they are by a save, neither
    read as taken away nor removed unseen. The roles the page showed are posted back with it, and its
    save gives and takes what it changed against them."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if "groups" in self.fields:
            roles = None if self.instance.pk is None else [g.pk for g in self.instance.groups.all() if g.name in ROLES]
            rows_shown_posted(self, "groups", roles)

    def clean(self):
        cleaned = super().clean()
        if "groups" in self.fields and (shown := rows_shown_cleaned(self, "groups")) is not None:
            cleaned["roles_shown"] = shown
        return cleaned

    def _save_m2m(self):
        # The roles are given and taken as the page changed them (``user_roles_change``, the admin's
        # save_related), never set whole: a role or a team given since the page was drawn stays.
        groups = self.cleaned_data.pop("groups", None)
        try:
            super()._save_m2m()
        finally:
            if groups is not None:
                self.cleaned_data["groups"] = groups


class PoliciesKeptDecidable:
    """An admin of users or groups, whose changes may leave an active approval policy with no one to
    decide, which the services refuse (``approval_policies_kept_decidable``).

    A refused part of a save (a deactivation, new roles, an app revoke, a team's members) refuses the
    whole save, as a refused save of an object with a lifecycle does: every write of it is undone and
    the page says why, never that the object was changed. Objects are deleted through
    ``delete_kept_decidable`` (``user_delete``, ``group_delete``): a refused deletion is said on the
    object's page, nothing deleted; *Delete selected* deletes the others and names each one kept,
    with why."""

    def _changeform_view(self, request, object_id, form_url, extra_context):
        try:
            with transaction.atomic(using=router.db_for_write(self.model)):
                if request.method == "POST":  # before the save's row locks (``approval_policies_lock``)
                    approval_policies_lock()
                return super()._changeform_view(request, object_id, form_url, extra_context)
        except ValidationError as exc:
            self.message_user(request, f"{' '.join(exc.messages)} Your changes were not saved.", messages.ERROR)
        return HttpResponseRedirect(request.path)

    def delete_kept_decidable(self, obj, *, by):
        raise NotImplementedError

    def delete_model(self, request, obj):
        self.delete_kept_decidable(obj, by=request.user)

    def delete_view(self, request, object_id, extra_context=None):
        try:
            return super().delete_view(request, object_id, extra_context)
        except ValidationError as exc:
            self.message_user(request, " ".join(exc.messages), messages.ERROR)
            opts = self.model._meta
            return HttpResponseRedirect(reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[object_id]))

    actions = ["delete_selected"]

    @admin.action(permissions=["delete"], description="Delete selected %(verbose_name_plural)s")
    def delete_selected(self, request, queryset):
        """Django's own (its question, and its refusal of an object one may not delete), each object
        then deleted alone through ``delete_kept_decidable``."""
        if not request.POST.get("post"):
            return django_delete_selected(self, request, queryset)
        _, _, perms_needed, protected = self.get_deleted_objects(queryset, request)
        if perms_needed or protected:
            return django_delete_selected(self, request, queryset)
        deleted = 0
        for obj in queryset.order_by("pk"):
            try:
                with transaction.atomic(using=router.db_for_write(self.model)):
                    self.delete_kept_decidable(obj, by=request.user)
                    self.log_deletions(request, [obj])
                deleted += 1
            except ValidationError as exc:
                self.message_user(request, f"{obj}: {' '.join(exc.messages)}", messages.ERROR)
        if deleted:
            opts = self.model._meta
            kind = opts.verbose_name if deleted == 1 else opts.verbose_name_plural
            self.message_user(request, f"{deleted} {kind} deleted.", messages.SUCCESS)
        return None


@admin.register(User)
class UserAdmin(PoliciesKeptDecidable, AccessAdmin, DjangoUserAdmin):
    form = UserChangeForm
    list_display = (
        "username",
        "email",
        "roles",
        "teams",
        "is_active",
        "is_staff",
        "is_service_account",
        "last_login",
    )
    list_filter = ("groups", "is_active", "is_staff", "is_service_account")
    readonly_fields = ("last_login", "date_joined", "role_summary", "teams", "object_access")
    fieldsets = (
        (None, {"fields": ("username", "password")}),
        ("Personal info", {"fields": ("first_name", "last_name", "email")}),
        ("Role", {"fields": ("groups", "role_summary", "teams"), "description": "A role says what one may do."}),
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

    @staticmethod
    def _superuser_out_of_reach(request, obj) -> bool:
        """Whether ``obj`` is a superuser's account and the request's user is not one: a password,
        an email to reset it through, roles, a username or the active flag set by someone else would
        hand the account (and what only a superuser may do) to them."""
        return obj is not None and obj.is_superuser and not request.user.is_superuser

    def has_change_permission(self, request, obj=None):
        # Also the password page's check (Django's user_change_password asks it of the user).
        return super().has_change_permission(request, obj) and not self._superuser_out_of_reach(request, obj)

    def has_delete_permission(self, request, obj=None):
        return super().has_delete_permission(request, obj) and not self._superuser_out_of_reach(request, obj)

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if self._superuser_out_of_reach(request, obj):
            self.message_user(
                request, "Only a superuser changes a superuser's account: this page is read-only.", messages.WARNING
            )
        return super().render_change_form(request, context, add, change, form_url, obj)

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        formfield = super().formfield_for_dbfield(db_field, request, **kwargs)
        if db_field.name == "is_staff" and formfield is not None:
            # Django's "can log into this admin site" reads as the switch; user_roles_given sets it back.
            formfield.help_text = (
                "Set while the user has a role (a role lets one sign in); to stop a sign-in, untick Active."
            )
        return formfield

    def formfield_for_manytomany(self, db_field, request, **kwargs):
        if db_field.name == "groups":
            kwargs["queryset"] = Group.objects.filter(name__in=ROLES).order_by("name")
            kwargs["help_text"] = "The user's role(s): " + ", ".join(ROLES) + "."
        return super().formfield_for_manytomany(db_field, request, **kwargs)

    @admin.display(description="Roles")
    def roles(self, obj):
        return ", ".join(g.name for g in obj.groups.all() if g.name in ROLES) or "—"

    @admin.display(description="Teams")
    def teams(self, obj):
        """The user's teams (groups that are no roles), each linking its page, where its members are set."""
        teams = [g for g in obj.groups.all() if g.name not in ROLES] if obj is not None and obj.pk else []
        if not teams:
            return "—"
        return format_html_join(
            ", ", '<a href="{}">{}</a>', ((reverse("admin:auth_group_change", args=[g.pk]), g.name) for g in teams)
        )

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
        if not grants and obj.is_superuser:
            return "None needed: as a superuser, this user sees everything."
        if not grants and has_every_scope(obj):
            return "None needed: as an Administrator, this user sees everything."
        if not grants:
            return (
                "None: this user sees no app or object until given access (the Access to apps rows below, or an "
                "object's manage access link)."
            )
        return format_html_join(
            "", "<div>{} <em>{}</em> ({})</div>", ((o._meta.verbose_name, o, how) for o, how in grants)
        )

    _POLICY_FIX = POLICY_DECIDER_FIX

    def save_model(self, request, obj, form, change):
        if change and "is_active" in form.changed_data and not obj.is_active:
            with approval_policies_kept_decidable(
                doing=f"Deactivating {obj.get_username()}", fix=self._POLICY_FIX, undone="the user was not deactivated"
            ):
                super().save_model(request, obj, form, change)
        else:
            super().save_model(request, obj, form, change)
        changed = sorted(f for f in form.changed_data if f != "password")
        audit(
            actor=request.user,
            action="user_changed" if change else "user_created",
            obj=obj,
            summary={"fields": changed},
        )

    def delete_kept_decidable(self, obj, *, by):
        user_delete(user_id=obj.pk, by=by)

    def user_change_password(self, request, id, form_url=""):
        """Django's password page saves outside the change form: audit it like any change."""
        return self._audited_view(super().user_change_password, request, id, form_url)

    inlines = [AppAccessInline]

    def get_inline_instances(self, request, obj=None):
        return super().get_inline_instances(request, obj) if obj is not None else []  # apps once the user exists

    def change_view(self, request, object_id, form_url="", extra_context=None):
        """Those who may not manage users (an owner's or creator's link) get the user's card, read-only."""
        if self.has_view_permission(request):
            return super().change_view(request, object_id, form_url, extra_context)
        if not request.user.role_names():
            raise Http404("No such user.")
        if request.method != "GET":
            raise PermissionDenied("Only an Administrator manages users.")
        person = User.objects.filter(pk=row_id(User, object_id), is_active=True).prefetch_related("groups").first()
        if person is None or not user_known_to(request.user, person):
            raise Http404("No such user.")  # a missing user and one outside one's work answer alike
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
        # A granted row shows its app read-only, so a row ticked Delete posts only its id: the formset
        # found the user's grant by it, and the app revoked is that grant's, never one posted with it.
        deleted = [f.instance.pk for f in formset.deleted_forms if f.instance.pk is not None]
        for grant in formset.get_queryset().filter(pk__in=deleted):
            # A revoke that would leave an approval policy with no one to decide raises ValidationError:
            # the whole save is refused (``_changeform_view``).
            access_revoke(obj=grant.content_object, to=user, by=request.user)
        for inline_form in formset.extra_forms:
            app = getattr(inline_form, "cleaned_data", {}).get("content_object")
            if app is not None and inline_form not in formset.deleted_forms:
                access_grant(obj=app, to=user, by=request.user)

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        if "groups" not in form.changed_data:
            user_roles_given(user=form.instance, by=request.user)
            return
        wanted, shown = set(form.cleaned_data["groups"]), form.cleaned_data["roles_shown"]
        given = [group for group in wanted if group.pk not in shown]
        taken = list(Group.objects.filter(pk__in=shown - {group.pk for group in wanted}, name__in=ROLES))
        names = ", ".join(sorted(g.name for g in wanted)) or "none"
        with approval_policies_kept_decidable(
            doing=f"Changing {form.instance.get_username()}'s roles to {names}",
            fix=self._POLICY_FIX,
            undone="the roles were not changed",
        ):
            changed = user_roles_change(user_id=form.instance.pk, add=given, remove=taken, by=request.user)
        user = User.objects.get(pk=form.instance.pk)  # its roles as the change left them, not as the page read them
        if changed:
            audit(actor=request.user, action="roles_changed", obj=user, summary={"roles": user.role_names()})
        user_roles_given(user=user, by=request.user)


admin.site.unregister(Group)


class GroupForm(forms.ModelForm):
    """The group page's form. A team's (a group that is no role) members are set here, among the
    active users with a role and the team's own members; a role's are set on users' pages (the role
    page shows its members read-only, the field taken from its form). A team carries no
    permissions (``accounts.backends``): its page offers none; a role's are shown read-only. The
    members the page showed are posted back with it, and its save adds and takes out what it
    changed against them (``team_members_change``)."""

    by = None  # the user saving the page (GroupAdmin.get_form), asked whose membership they may change

    members = RowsChoiceField(
        queryset=User.objects.none(),
        required=False,
        widget=FilteredSelectMultiple("members", is_stacked=False),
        help_text="The team's members: each gets what the team was granted, and decides for the approval "
        "policies naming it as their role allows.",
    )

    class Meta:
        model = Group
        fields = ("name",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if "members" in self.fields:
            held = User.objects.filter(groups=self.instance) if self.instance.pk is not None else User.objects.none()
            with_role = User.objects.filter(is_active=True, groups__name__in=ROLES)
            self.fields["members"].queryset = User.objects.filter(
                Q(pk__in=with_role.values("pk")) | Q(pk__in=held.values("pk"))
            ).order_by("username")
            rows_shown_posted(self, "members", list(held.values_list("pk", flat=True)))

    def clean(self):
        cleaned = super().clean()
        if "members" in self.fields and (shown := rows_shown_cleaned(self, "members")) is not None:
            cleaned["members_shown"] = shown
            if "members" in cleaned and self.by is not None:
                added, removed = self.members_changed()
                if problem := team_members_change_refused(by=self.by, changed=[*added, *removed]):
                    self.add_error("members", problem)
        return cleaned

    def members_changed(self) -> tuple[list[User], list[User]]:
        """The members the page added and those it took out, against those it showed."""
        wanted, shown = set(self.cleaned_data["members"]), self.cleaned_data["members_shown"]
        added = [user for user in wanted if user.pk not in shown]
        removed = list(User.objects.filter(pk__in=shown - {user.pk for user in wanted}))
        return added, removed


@admin.register(Group)
class GroupAdmin(PoliciesKeptDecidable, AccessAdmin, DjangoGroupAdmin):
    """Groups are roles or teams; a role's permissions come from the roles table in code, its members
    are set on users' pages; a team's members are changed on its page (``team_members_change``)."""

    form = GroupForm

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change=change, **kwargs)
        return type(form.__name__, (form,), {"by": request.user})

    def get_readonly_fields(self, request, obj=None):
        if obj is not None and obj.name in ROLES:
            return ("name", "permissions", "members")
        return ("team_permissions",)

    @admin.display(description="Permissions")
    def team_permissions(self, obj):
        """What a team's members may do: what their roles allow, the team saying only where."""
        return "None: a team's members do what their roles allow, on what the team was granted."

    @admin.display(description="Members")
    def members(self, obj):
        """A role's members, read-only: the users list of those holding it."""
        count = obj.user_set.count()
        url = reverse("admin:accounts_user_changelist") + f"?groups__id__exact={obj.pk}"
        return format_html(
            '<a href="{}">{} user{}</a> (a role is given on each user\'s page, under Role)',
            url,
            count,
            pluralize(count),
        )

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        if not change and "members" in form.changed_data:
            added, removed = form.members_changed()
            team_members_change(group_id=form.instance.pk, add=added, remove=removed, by=request.user)

    def save_model(self, request, obj, form, change):
        if change and "members" in form.changed_data:
            # Changed before a rename, so a refusal names the team as it is. A removal that would
            # leave an active approval policy with no one to decide raises ValidationError: the
            # whole save is refused (``_changeform_view``).
            added, removed = form.members_changed()
            team_members_change(group_id=obj.pk, add=added, remove=removed, by=request.user)
        super().save_model(request, obj, form, change)

    def delete_kept_decidable(self, obj, *, by):
        group_delete(group_id=obj.pk, by=by)
