"""The delivery rules' page in a browser: the quiet hours are times of day, chosen from the clock or typed."""

import pytest

pytestmark = pytest.mark.browser


def test_the_quiet_hours_offer_the_clocks_times_of_day_but_not_now(login, page, live_server, admin_erin):
    """'Now' beside the quiet hours' start and end filled in the browser's time of day, which tells
    nothing of when a profile's quiet hours start in its own zone; the clock's times stay."""
    login(admin_erin)
    page.goto(f"{live_server.url}/admin/delivery/deliveryrules/add/")
    page.wait_for_selector(".field-quiet_end .datetimeshortcuts .clock-icon")
    for name in ("quiet_start", "quiet_end"):
        shortcuts = page.locator(f".field-{name} .datetimeshortcuts")
        assert shortcuts.inner_text().strip() == "", shortcuts.inner_text()  # the clock's icon alone
        shortcuts.locator(".clock-icon").click()
        clock = page.locator(".clockbox:visible")
        assert clock.locator(".timelist a").all_inner_texts() == ["Midnight", "6 a.m.", "Noon", "6 p.m."]
        clock.get_by_text("6 p.m.").click()
        assert page.input_value(f"#id_{name}").startswith("18:00")


@pytest.mark.browser_context_args(timezone_id="Asia/Tokyo")
def test_the_quiet_hours_say_nothing_of_the_browsers_offset_from_the_server(login, page, live_server, admin_erin):
    """Django's 'Note: You are 9 hours ahead of server time.' beside the quiet hours read as though
    they were the server's hours; they are each profile's own, in its zone (the page says so)."""
    login(admin_erin)
    page.goto(f"{live_server.url}/admin/delivery/deliveryrules/add/")
    page.wait_for_selector(".field-quiet_end .datetimeshortcuts .clock-icon")
    page.wait_for_load_state("load")
    assert page.locator(".field-quiet_start .timezonewarning, .field-quiet_end .timezonewarning").count() == 0
    assert "server time" not in page.locator(".field-quiet_start, .field-quiet_end").all_inner_texts()[0]
