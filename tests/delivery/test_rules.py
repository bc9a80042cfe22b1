"""Delivery rules are written through one service, which checks them whoever calls it (the admin's
form, a script, an import of settings): a rule it refuses is never stored, so no send reads it."""

import datetime as dt

import pytest
from django.core.exceptions import PermissionDenied, ValidationError

from accounts.models import AuditEvent
from accounts.services import access_grant
from delivery.models import DeliveryRules
from delivery.services.rules import delivery_rules_save
from tests.factories import AppFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def app(db):
    return AppFactory(name="Shop")


@pytest.mark.parametrize(
    ("values", "field", "said"),
    [
        ({"default_timezone": "Paris"}, "default_timezone", "Unknown time zone 'Paris'"),
        ({"default_timezone": ""}, "default_timezone", "Unknown time zone ''"),
        ({"quiet_start": dt.time(22)}, "quiet_end", "Quiet hours need an end too"),
        ({"quiet_end": dt.time(7)}, "quiet_start", "Quiet hours need a start too"),
        ({"quiet_start": dt.time(22), "quiet_end": dt.time(22)}, "quiet_end", "Quiet hours end when they start"),
        ({"quiet_start": "22:00", "quiet_end": dt.time(7)}, "quiet_start", "a time of day"),
        ({"quiet_mode": "skip"}, "quiet_mode", "delay or discard"),
        ({"frequency_cap": 0}, "frequency_cap", "leave it empty for no cap"),
        ({"frequency_cap": -2}, "frequency_cap", "leave it empty for no cap"),
        ({"frequency_window_hours": 0}, "frequency_window_hours", "1 to 8,784 hours"),
        ({"frequency_window_hours": 5_000_000}, "frequency_window_hours", "1 to 8,784 hours"),
        ({"frequency_cap": 1, "frequency_window_hours": 720}, "frequency_window_hours", "=7 (168 hours)"),
    ],
)
def test_rules_the_admin_would_refuse_are_refused_by_the_service_naming_the_field(
    app, admin_erin, settings, values, field, said
):
    settings.PUSHDESK_RETENTION_DELIVERY_DAYS = 7
    with pytest.raises(ValidationError) as exc:
        delivery_rules_save(app_id=app.pk, by=admin_erin, **values)
    messages = exc.value.message_dict[field]
    assert any(said in m for m in messages), messages
    assert not DeliveryRules.objects.exists()


def test_an_administrator_saves_an_apps_rules_and_changes_them_in_place_audited(app, admin_erin):
    rules, warnings = delivery_rules_save(
        app_id=app.pk,
        by=admin_erin,
        frequency_cap=2,
        frequency_window_hours=48,
        quiet_start=dt.time(22),
        quiet_end=dt.time(7),
        quiet_mode="discard",
        default_timezone="Europe/Paris",
    )
    assert warnings == []
    saved = DeliveryRules.objects.get(app=app)
    assert (saved.frequency_cap, saved.frequency_window_hours, saved.quiet_start, saved.quiet_mode) == (
        2,
        48,
        dt.time(22),
        "discard",
    )
    again, _ = delivery_rules_save(app_id=app.pk, by=admin_erin, frequency_cap=3)
    assert again.pk == rules.pk and DeliveryRules.objects.get().frequency_cap == 3
    assert DeliveryRules.objects.get().quiet_start is None  # the rules given are the app's rules
    actions = list(AuditEvent.objects.filter(action="delivery_rules_changed").values_list("summary", flat=True))
    assert [sorted(a["fields"]) for a in actions] == [
        ["default_timezone", "frequency_cap", "frequency_window_hours", "quiet_end", "quiet_mode", "quiet_start"],
        ["default_timezone", "frequency_cap", "frequency_window_hours", "quiet_end", "quiet_mode", "quiet_start"],
    ]


def test_a_cap_saved_before_retention_was_lowered_is_warned_of_when_only_other_rules_change(app, admin_erin, settings):
    DeliveryRules.objects.create(app=app, frequency_cap=1, frequency_window_hours=720)
    settings.PUSHDESK_RETENTION_DELIVERY_DAYS = 7
    _, warnings = delivery_rules_save(
        app_id=app.pk,
        by=admin_erin,
        frequency_cap=1,
        frequency_window_hours=720,
        quiet_start=dt.time(22),
        quiet_end=dt.time(7),
    )
    assert len(warnings) == 1 and "stops retention" in warnings[0]
    assert DeliveryRules.objects.get().quiet_start == dt.time(22)
    with pytest.raises(ValidationError):
        delivery_rules_save(app_id=app.pk, by=admin_erin, frequency_cap=2, frequency_window_hours=720)


def test_only_an_administrator_with_access_to_the_app_sets_its_rules(app, manager_alice, admin_erin):
    access_grant(obj=app, to=manager_alice, by=None)
    with pytest.raises(PermissionDenied):
        delivery_rules_save(app_id=app.pk, by=manager_alice, frequency_cap=1)
    assert not DeliveryRules.objects.exists()
    delivery_rules_save(app_id=app.pk, by=admin_erin, frequency_cap=1)
    assert DeliveryRules.objects.get().frequency_cap == 1
