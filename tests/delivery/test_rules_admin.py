"""The delivery rules' admin: what a save is refused for, and what it warns of."""

import pytest

from delivery.models import DeliveryRules
from tests.factories import AppFactory

ADD = "/admin/delivery/deliveryrules/add/"


@pytest.fixture
def app(db):
    return AppFactory(name="Shop")


def _form(app, **typed) -> dict:
    return {
        "app": app.pk,
        "frequency_cap": 1,
        "frequency_window_hours": 24,
        "quiet_mode": "delay",
        "default_timezone": "UTC",
        **typed,
    }


def _field_errors(page: str, field: str) -> str:
    return page[page.index(f"field-{field}") :][:900]


def test_a_cap_counting_further_back_than_deliveries_are_kept_is_refused_naming_both(client, app, admin_erin, settings):
    settings.PUSHDESK_RETENTION_DELIVERY_DAYS = 7
    client.force_login(admin_erin)
    answer = client.post(ADD, _form(app, frequency_window_hours=720))
    assert answer.status_code == 200
    said = _field_errors(answer.content.decode(), "frequency_window_hours")
    assert "errorlist" in said
    assert "720 hours" in said and "PUSHDESK_RETENTION_DELIVERY_DAYS=7 (168 hours)" in said, said
    assert not DeliveryRules.objects.filter(app=app).exists()

    assert client.post(ADD, _form(app, frequency_window_hours=168)).status_code == 302
    assert DeliveryRules.objects.get(app=app).frequency_window_hours == 168


def test_a_long_window_without_a_cap_or_with_deliveries_kept_forever_is_saved(client, app, admin_erin, settings):
    settings.PUSHDESK_RETENTION_DELIVERY_DAYS = 7
    client.force_login(admin_erin)
    assert client.post(ADD, _form(app, frequency_cap="", frequency_window_hours=720)).status_code == 302
    DeliveryRules.objects.all().delete()
    settings.PUSHDESK_RETENTION_DELIVERY_DAYS = 0  # kept forever
    assert client.post(ADD, _form(app, frequency_window_hours=720)).status_code == 302
    assert DeliveryRules.objects.get(app=app).frequency_window_hours == 720


def test_a_cap_saved_before_retention_was_lowered_is_warned_of_when_other_fields_change(
    client, app, admin_erin, settings
):
    rules = DeliveryRules.objects.create(app=app, frequency_cap=1, frequency_window_hours=720)
    settings.PUSHDESK_RETENTION_DELIVERY_DAYS = 7  # lowered since
    change = f"/admin/delivery/deliveryrules/{rules.pk}/change/"
    client.force_login(admin_erin)

    page = client.post(
        change, _form(app, frequency_window_hours=720, quiet_start="22:00", quiet_end="07:00"), follow=True
    )
    assert page.status_code == 200
    rules.refresh_from_db()
    assert rules.quiet_start is not None  # an urgent change of quiet hours is not blocked
    warnings = [str(m) for m in page.context["messages"] if m.level_tag == "warning"]
    assert len(warnings) == 1 and "720 hours" in warnings[0] and "=7 (168 hours)" in warnings[0], warnings

    answer = client.post(change, _form(app, frequency_cap=2, frequency_window_hours=720))  # the cap changed: refused
    assert answer.status_code == 200 and "errorlist" in _field_errors(answer.content.decode(), "frequency_window_hours")
    rules.refresh_from_db()
    assert rules.frequency_cap == 1


@pytest.mark.parametrize("hours", [0, 8785, 2147483647])
def test_a_window_of_no_hours_or_of_more_than_a_year_is_refused(client, app, admin_erin, settings, hours):
    """Millions of hours made every send of the app fail (a date before year 1)."""
    settings.PUSHDESK_RETENTION_DELIVERY_DAYS = 0
    client.force_login(admin_erin)
    answer = client.post(ADD, _form(app, frequency_window_hours=hours))
    assert answer.status_code == 200
    assert "1 to 8,784 hours" in _field_errors(answer.content.decode(), "frequency_window_hours")
    assert not DeliveryRules.objects.filter(app=app).exists()


def test_a_cap_of_no_push_is_refused_saying_empty_means_no_cap(client, app, admin_erin):
    client.force_login(admin_erin)
    answer = client.post(ADD, _form(app, frequency_cap=0))
    said = _field_errors(answer.content.decode(), "frequency_cap")
    assert "errorlist" in said and "leave it empty for no cap" in said, said
    assert not DeliveryRules.objects.filter(app=app).exists()


def test_the_migration_brings_rules_saved_before_their_bounds_within_them(db):
    """A window of millions of hours made every send of the app fail; a cap of 0 was read as none."""
    import importlib

    from django.apps import apps

    bounded = importlib.import_module("delivery.migrations.0028_delivery_rules_bounds").bounded
    shop, bank, news = AppFactory(name="Shop"), AppFactory(name="Bank"), AppFactory(name="News")
    DeliveryRules.objects.create(app=shop, frequency_cap=3, frequency_window_hours=5_000_000)
    DeliveryRules.objects.create(app=bank, frequency_cap=0, frequency_window_hours=48)
    DeliveryRules.objects.create(app=news, frequency_cap=2, frequency_window_hours=8_784)

    bounded(apps, None)

    kept = DeliveryRules.objects.values_list("app__name", "frequency_cap", "frequency_window_hours")
    assert set(kept) == {("Shop", 3, 8_784), ("Bank", None, 48), ("News", 2, 8_784)}


def test_the_list_says_in_which_zone_the_quiet_hours_are_read(client, app, admin_erin):
    """The list showed quiet hours as '10 p.m.' and '8 a.m.' without a zone: an administrator in New
    York could not tell 22:00 where from 22:00 UTC. They read as typed, in each profile's zone, and
    name the app's zone for profiles without one."""
    import datetime as dt

    DeliveryRules.objects.create(
        app=app, quiet_start=dt.time(22, 0), quiet_end=dt.time(8, 0), default_timezone="Europe/Paris"
    )
    other = AppFactory(name="Games")
    DeliveryRules.objects.create(app=other, frequency_cap=2)
    client.force_login(admin_erin)
    page = client.get("/admin/delivery/deliveryrules/").content.decode()
    assert (
        '<td class="field-quiet_hours">22:00–08:00 in each profile&#x27;s time zone (Europe/Paris for profiles '
        "without one)</td>" in page
    ), page
    assert '<td class="field-quiet_hours">none</td>' in page
    assert "10 p.m." not in page


def test_the_list_says_no_window_and_no_quiet_mode_for_rules_that_have_none(client, app, admin_erin):
    """An app without a cap read '-' beside a window of 24 hours, and one without quiet hours 'none'
    beside 'hold until the quiet hours end', as though a window or a mode applied: the cap reads
    with its window in one column, and the mode only beside quiet hours."""
    import datetime as dt

    DeliveryRules.objects.create(app=app, frequency_cap=3, frequency_window_hours=48)
    other = AppFactory(name="Games")
    DeliveryRules.objects.create(app=other, quiet_start=dt.time(22, 0), quiet_end=dt.time(8, 0), quiet_mode="discard")
    client.force_login(admin_erin)
    page = client.get("/admin/delivery/deliveryrules/").content.decode()
    rows = {name: page[page.index(f">{name}</a>") :][:900] for name in ("Shop", "Games")}
    shop, games = (rows[name][: rows[name].index("</tr>")] for name in ("Shop", "Games"))
    assert '<td class="field-frequency">at most 3 marketing pushes a profile per 48 hours</td>' in shop
    assert '<td class="field-quiet_hours">none</td>' in shop
    assert '<td class="field-quiet_mode_shown">—</td>' in shop and "hold until" not in shop
    assert '<td class="field-frequency">none</td>' in games
    assert '<td class="field-quiet_mode_shown">skip the push</td>' in games
