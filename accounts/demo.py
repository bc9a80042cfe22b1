"""Demo users: one per role. Passwords are random, printed once when the user is created."""

import secrets

from django.contrib.auth.models import Group
from django.db import transaction

from accounts.models import User
from accounts.roles import ADMINISTRATOR, APPROVER, MANAGER, VIEWER
from accounts.services import audit

DEMO_USERS = (
    ("admin", ADMINISTRATOR),
    ("approver", APPROVER),
    ("manager", MANAGER),
    ("viewer", VIEWER),
)


def populate(*, stdout) -> None:
    created = []
    with transaction.atomic():
        for username, role in DEMO_USERS:
            if User.objects.filter(username=username).exists():
                continue
            password = secrets.token_urlsafe(12)
            user = User.objects.create_user(username=username, password=password, is_staff=True)
            user.groups.add(Group.objects.get(name=role))
            audit(actor=None, action="user_created", obj=user, summary={"role": role, "demo": True})
            created.append((username, role, password))
    if created:
        stdout.write("Demo users (passwords are shown only now; keep them):")
        for username, role, password in created:
            stdout.write(f"  {role:<14} {username:<10} {password}")
    else:
        stdout.write(
            "Demo users already exist (their passwords were printed when they were created; "
            "to set a new one: .venv/bin/python manage.py changepassword admin)."
        )
