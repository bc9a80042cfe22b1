"""Django's permission backend, its group permissions read from roles alone.

A role says *what* one may do; a team (any other group) says only *where*, through object access
(``accounts.selectors``): permissions left on a team give its members nothing.
"""

from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import Permission
from django.db.models import Exists, OuterRef, Q

from accounts.roles import ROLES


class RoleBackend(ModelBackend):
    """``ModelBackend`` (authentication, a user's own permissions, their caching on the user), whose
    group permissions are those of the user's roles: a team's are ignored."""

    def _get_group_permissions(self, user_obj):
        return Permission.objects.filter(group__in=user_obj.groups.filter(name__in=ROLES))

    def with_perm(self, perm, is_active=True, include_superusers=True, obj=None):
        """The users who hold ``perm`` as ``has_perm`` reads it (``User.objects.with_perm``): through
        a role or their own permissions, a team's ignored; superusers too unless
        ``include_superusers`` is false. None for an object (object permissions are guardian's)."""
        if isinstance(perm, str):
            try:
                app_label, codename = perm.split(".")
            except ValueError:
                raise ValueError("Permission name should be in the form app_label.permission_codename.") from None
            held = Q(codename=codename, content_type__app_label=app_label)
        elif isinstance(perm, Permission):
            held = Q(pk=perm.pk)
        else:
            raise TypeError("The `perm` argument must be a string or a permission instance.")
        users = get_user_model()._default_manager
        if obj is not None:
            return users.none()
        through_role = Q(group__user=OuterRef("pk"), group__name__in=ROLES)
        user_q = Exists(Permission.objects.filter(held & (through_role | Q(user=OuterRef("pk")))))
        if include_superusers:
            user_q |= Q(is_superuser=True)
        if is_active is not None:
            user_q &= Q(is_active=is_active)
        return users.filter(user_q)
