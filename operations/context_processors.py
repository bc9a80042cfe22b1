"""Template context for the admin's pages."""

from django.db import DatabaseError


def instance(request) -> dict:
    """``pushdesk_instance_problem``: why sending is off on this copy, shown in the admin's banner."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated or not request.path.startswith("/admin/"):
        return {}
    from operations.instance import instance_problem

    try:
        return {"pushdesk_instance_problem": instance_problem()}
    except DatabaseError:
        return {}
