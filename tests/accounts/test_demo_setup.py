"""``manage.py demo_setup`` fills the embedded mode's database with demo data: users with their
passwords printed, an app sending to the simulator, made-up profiles, a live campaign."""

import io

import pytest
from django.core.management import CommandError, call_command

from accounts.models import User

pytestmark = pytest.mark.django_db


def test_demo_setup_refuses_a_production_database_and_adds_nothing(settings):
    """Run there by mistake, it made an Administrator whose password went to the terminal and a live
    API-triggered campaign."""
    settings.PRODUCTION = True
    out = io.StringIO()
    with pytest.raises(CommandError) as refused:
        call_command("demo_setup", stdout=out)
    assert str(refused.value) == (
        "PUSHDESK_MODE is production: the demo data (its users and their passwords, an app sending to the "
        "push simulator, made-up profiles, a live campaign) is not for this database; to add it anyway "
        "(a staging copy), run it with --in-production."
    )
    assert not User.objects.filter(username__in=["admin", "approver", "manager", "viewer"]).exists()
    assert out.getvalue() == ""


def test_demo_setup_in_production_when_asked_to(settings):
    settings.PRODUCTION = True
    out = io.StringIO()
    call_command("demo_setup", "--in-production", stdout=out)
    assert User.objects.filter(username="admin", groups__name="Administrator").exists()
    assert "Demo users" in out.getvalue()
