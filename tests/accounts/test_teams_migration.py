"""The migration that clears the permissions a team was given on its page before it stopped offering
them: they gave its members nothing since (``accounts.backends``), and would only mislead."""

import importlib

import pytest
from django.apps import apps
from django.contrib.auth.models import Group, Permission
from django.db import connection

pytestmark = pytest.mark.django_db

forwards = importlib.import_module("accounts.migrations.0008_teams_without_permissions").teams_without_permissions


class _Editor:
    connection = connection


def test_a_team_s_permissions_are_cleared_and_a_role_s_kept():
    team = Group.objects.create(name="Shop deciders")
    team.permissions.set(Permission.objects.filter(codename__in=["decide_approvalrequest", "approve_campaign"]))
    approver = Group.objects.get(name="Approver")
    held = set(approver.permissions.values_list("pk", flat=True))
    assert held

    forwards(apps, _Editor())

    assert not team.permissions.exists()
    assert set(approver.permissions.values_list("pk", flat=True)) == held
