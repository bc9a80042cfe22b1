"""Browser tests: Playwright drives the system's Chromium, headless, against pytest-django's live server."""

import os
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"

# Playwright's sync API keeps an event loop running in the test thread; the ORM calls the tests
# make to arrange data are still plain synchronous calls.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    if not Path(CHROMIUM).exists():
        message = f"{CHROMIUM} is missing: install Debian's chromium to run the browser tests"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return {
        **browser_type_launch_args,
        "executable_path": CHROMIUM,
        "headless": True,
        "args": [
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-quic",
        ],
    }


@pytest.fixture(scope="session")
def _browsers():
    """The browsers this process launched: closed at its end."""
    launched = []
    yield launched
    for browser in launched:
        if browser.is_connected():
            browser.close()


@pytest.fixture
def browser(launch_browser, _browsers):
    """pytest-playwright's browser, one for the process as its own is, but launched again when the
    last one is gone: a Chromium that crashed or was killed fails the test it happened in (which
    runs once more, see below), not every browser test after it in the process."""
    if not _browsers or not _browsers[-1].is_connected():
        _browsers.append(launch_browser())
    return _browsers[-1]


# Chromium itself closing under a test ("Target page, context or browser has been closed"): the
# test runs once more, in a browser launched again. Any other failure counts as it is.
BROWSER_GONE = r"TargetClosedError: .*(Target page, context or browser has been closed|Browser closed)"


def pytest_collection_modifyitems(items):
    for item in items:
        if item.get_closest_marker("browser") is not None:
            item.add_marker(pytest.mark.flaky(reruns=1, only_rerun=[BROWSER_GONE]))


@pytest.fixture
def screenshot(page):
    """Save a full-page screenshot under test-artifacts/screenshots/<name>.png."""

    def take(name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take


@pytest.fixture
def login(page, live_server):
    """Sign in through the admin's login form, as a person would."""
    from tests.factories import TEST_PASSWORD

    def sign_in(user):
        page.context.clear_cookies()
        page.goto(f"{live_server.url}/admin/login/")
        page.fill("#id_username", user.get_username())
        page.fill("#id_password", TEST_PASSWORD)
        page.click("input[type=submit]")
        page.wait_for_url(f"{live_server.url}/admin/")
        return page

    return sign_in
