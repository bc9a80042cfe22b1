"""Django's permission backend, its group permissions read from roles alone.

A role says *what* one may do; a team (any other group) says only *where*, through object access
(``accounts.selectors``): permissions left on a team give its members nothing.
"""

from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import Permission

from accounts.roles import ROLES


class RoleBackend(ModelBackend):
    """``ModelBackend`` (authentication, a user's own permissions, their caching on the user), whose
    group permissions are those of the user's roles: a team's are ignored."""

    def _get_group_permissions(self, user_obj):
        return Permission.objects.filter(group__in=user_obj.groups.filter(name__in=ROLES))
