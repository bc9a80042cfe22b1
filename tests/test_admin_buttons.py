"""Every admin button is pressed by a test.

A button is an admin action (``ModelAdmin.get_actions``), a transition button of an object with a
lifecycle (``LifecycleAdminMixin.lifecycle_handlers``), or a custom admin URL (``get_urls()``
beyond changelist / add / change / delete / history, and any view added to the admin site):
object tools and the pages they link to. Each has a key:

- ``app_label.model:<action>`` for an action, e.g. ``delivery.device:mark_test``;
- ``app_label.model:transition/<name>`` for a transition button, e.g. ``campaigns.campaign:transition/duplicate``;
- ``app_label.model:<url name>`` for a custom URL, the URL name without its ``app_label_model_``
  prefix, e.g. ``campaigns.campaign:report_csv``;
- ``admin:<url name>`` for a view of the admin site itself.

A test presses a button as a role allowed to, checks the effect in the database, and presses it
as a role that is not, checking the refusal (403, or 404 outside one's access); it says so with
``@pytest.mark.presses("<key>", ...)``. This test lists every button and fails naming each one no
test presses, and each key a test names that is no button (a renamed or removed one).
"""

import importlib
import pkgutil
from pathlib import Path

import pytest
from django.contrib import admin
from django.test import RequestFactory
from django.urls import URLPattern

import tests

# On SQLite too: the embedded mode's admin has a page of its own (the ORM broker's queue).
pytestmark = pytest.mark.embedded

STANDARD_MODEL_URLS = ("changelist", "add", "change", "delete", "history")
STANDARD_SITE_URLS = {
    "index",
    "login",
    "logout",
    "password_change",
    "password_change_done",
    "autocomplete",
    "jsi18n",
    "view_on_site",
    "app_list",
}


def _superuser_request():
    from accounts.models import User

    request = RequestFactory().get("/admin/")
    request.user = User(username="button-census", is_superuser=True, is_staff=True, is_active=True)
    return request


def admin_buttons(site=admin.site, request=None) -> set[str]:
    """The key of every button the admin site offers (to ``request.user``; to a superuser by default)."""
    from accounts.admin.lifecycle import LifecycleAdminMixin

    request = request or _superuser_request()
    buttons = set()
    for model, model_admin in site._registry.items():
        label, opts = model._meta.label_lower, model._meta
        prefix = f"{opts.app_label}_{opts.model_name}_"
        buttons.update(f"{label}:{name}" for name in model_admin.get_actions(request))
        if isinstance(model_admin, LifecycleAdminMixin):
            buttons.update(f"{label}:transition/{name}" for name in model_admin.lifecycle_handlers(request, 0))
            transition = model_admin._transition_url_name()
        else:
            transition = None
        for pattern in model_admin.get_urls():
            name = getattr(pattern, "name", None)
            if not isinstance(pattern, URLPattern) or name is None or name == transition:
                continue  # the transition view is pressed through its buttons
            short = name.removeprefix(prefix)
            if short not in STANDARD_MODEL_URLS:
                buttons.add(f"{label}:{short}")
    for pattern in site.get_urls():
        name = getattr(pattern, "name", None)
        if isinstance(pattern, URLPattern) and name is not None and name not in STANDARD_SITE_URLS:
            buttons.add(f"admin:{name}")
    return buttons


def _test_modules():
    root = Path(tests.__file__).parent
    for info in pkgutil.walk_packages([str(root)], prefix="tests."):
        if info.name.rsplit(".", 1)[-1].startswith("test_"):
            yield importlib.import_module(info.name)


def _marks(obj) -> list:
    marks = getattr(obj, "pytestmark", [])
    marks = marks if isinstance(marks, list | tuple) else [marks]  # a module's may be one decorator
    return [mark for mark in (getattr(m, "mark", m) for m in marks) if mark.name == "presses"]


def pressed_buttons() -> dict[str, list[str]]:
    """Every key named by a ``presses`` mark in the test modules → the tests naming it."""
    pressed: dict[str, list[str]] = {}

    def record(marks, where):
        for mark in marks:
            for key in mark.args:
                pressed.setdefault(key, []).append(where)

    for module in _test_modules():
        record(_marks(module), module.__name__)
        for name, obj in vars(module).items():
            if name.startswith("test_") and callable(obj):
                record(_marks(obj), f"{module.__name__}::{name}")
            elif name.startswith("Test") and isinstance(obj, type):
                record(_marks(obj), f"{module.__name__}::{name}")
                for attr, method in vars(obj).items():
                    if attr.startswith("test_"):
                        record(_marks(method), f"{module.__name__}::{name}::{attr}")
    return pressed


@pytest.fixture(scope="module")
def census():
    return admin_buttons(), pressed_buttons()


def test_every_admin_button_is_pressed_by_a_test(census):
    buttons, pressed = census
    unpressed = sorted(buttons - set(pressed))
    assert not unpressed, "No test presses these admin buttons (add @pytest.mark.presses(...)):\n" + "\n".join(
        unpressed
    )


def test_every_pressed_button_exists(census):
    buttons, pressed = census
    unknown = {key: where for key, where in pressed.items() if key not in buttons}
    assert not unknown, "These tests press buttons the admin no longer has:\n" + "\n".join(
        f"{key}: {', '.join(where)}" for key, where in sorted(unknown.items())
    )


def test_the_census_sees_actions_transitions_and_custom_urls(census):
    buttons, _ = census
    for key in (
        "delivery.device:mark_test",
        "campaigns.campaign:transition/duplicate",
        "campaigns.campaign:report_csv",
        "accounts.approvalrequest:review",
    ):
        assert key in buttons
