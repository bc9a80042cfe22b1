"""Every admin button that writes leaves an audit event naming its actor and its object.

The buttons are those ``tests.test_admin_buttons.admin_buttons`` lists (actions, transition buttons,
custom admin URLs). Each one that writes has a press here, by an Administrator (by a superuser for
the few the role is not offered); each one that does not write says why. A new button fails this
walk until it is listed in one or the other.
"""

import uuid

import pytest
from django.contrib.contenttypes.models import ContentType
from django.core.files.base import ContentFile
from django.test import RequestFactory
from django.urls import reverse
from django.utils import timezone
from django_q.models import Failure, Success, Task

from accounts.models import ApprovalPolicy, ApprovalRequest, AuditEvent
from accounts.services import access_grant, api_key_create
from audiences.models import EventReplay, Import
from delivery.models import Dispatch
from tests.campaigns.test_permissions import _campaign
from tests.factories import (
    AppFactory,
    DeviceFactory,
    PushContentFactory,
    SegmentFactory,
    UserFactory,
)
from tests.journeys.conftest import simple_graph
from tests.test_admin_buttons import admin_buttons

pytestmark = pytest.mark.django_db

# Buttons that write nothing a person would look for in the audit log, and why.
READ_ONLY = {
    "admin:models": "lists the models",
    "audiences.import:status": "reports an import's progress",
    "audiences.import:errors": "downloads an import's rejected rows",
    "audiences.segment:count": "a count: keeps the reach it counted on the segment, changes no definition",
    "audiences.segment:count_reach": "a count: keeps the reach it counted for the list, changes no definition",
    "audiences.segment:preview": "a count and a sample of a saved segment",
    "audiences.segment:preview_rules": "a count and a sample of rules being edited, saved nowhere",
    "campaigns.campaign:count_audience": "a count: keeps the reach it counted on the segment, changes no definition",
    "campaigns.campaign:report_csv": "an export of the campaign's report",
    "delivery.pushcontent:live_preview": "renders the content being edited as phones show it",
    "delivery.pushcontent:live_preview_new": "renders the content being written as phones show it",
}
# The admin's own "Delete selected" logs its deletions, audited as the delete pages walked in test_admin_audit.py are.
WALKED_ELSEWHERE = "delete_selected"


def _changelist(model, name: str, obj) -> tuple[str, dict]:
    opts = model._meta
    return reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"), {
        "action": name,
        "_selected_action": [obj.pk],
        "post": "yes",  # the answer of an action that asks again (a dispatch's Stop), as Django's delete takes it
    }


def _action(name: str, make, audited=None):
    """A list action pressed on the one object ``make(by)`` returns; the event names it, or what ``audited()`` returns."""

    def press(by):
        obj = make(by)
        url, data = _changelist(type(obj), name, obj)
        return url, data, audited or (lambda: obj)

    return press


def _confirmed(press, *, once: str = ""):
    """A list action that asks again first: pressed with its confirmation. One that acts once per
    question (``asks_again(once=...)``, its ``once`` purpose given) answers with the question's token."""

    def confirmed(by):
        from accounts.form_tokens import form_token_issue, form_token_subject

        url, data, audited = press(by)
        data = {**data, "post": "yes"}
        if once:
            subject = form_token_subject(data["_selected_action"])
            data["form_token"] = form_token_issue(user=by, purpose=once, subject=subject)
        return url, data, audited

    return confirmed


def _app_of(by, app):
    from accounts.services import access_grant

    access_grant(obj=app, to=by, by=None)
    return app


def _transition(name: str, make, audited=None):
    """A transition button pressed on ``make(by)``; the event names it, or what ``audited()`` returns."""

    def press(by):
        obj = make(by)
        opts = obj._meta
        url = reverse(f"admin:{opts.app_label}_{opts.model_name}_transition", args=[obj.pk, name])
        data = {"confirmed": "yes"}  # the answer of the page asking again (Stop, Test send)
        if name == "test_send":  # acts once per question drawn: with the question's one-time token
            from accounts.form_tokens import form_token_issue

            data["form_token"] = form_token_issue(user=by, purpose=f"{opts.label_lower}:{name}", subject=str(obj.pk))
        return url, data, audited or (lambda: obj)

    return press


def _world():
    return {"approver": UserFactory(username="approver_ann", role="Approver")}


def _campaign_in(state):
    """A campaign in ``state``, owned by a Manager: the Administrator presses on someone else's work."""

    def make(by):
        owner, app = UserFactory(username="manager_owen", role="Manager"), AppFactory(name="Shop")
        access_grant(obj=app, to=owner, by=None)
        DeviceFactory(app=app, is_test=True)  # what a test send goes to
        return _campaign(_world(), owner=owner, app=app, state=state)

    return make


def _content_with_a_test_device():
    content = PushContentFactory(name="Sale")
    DeviceFactory(app=content.app, is_test=True)  # what a test send goes to
    return content


def _journey_in(state):
    def make(by):
        from journeys.models import Journey
        from journeys.services.lifecycle import (
            journey_approve,
            journey_create,
            journey_pause,
            journey_stop,
            journey_submit,
            journey_version_edit,
        )

        app = AppFactory(name=f"Journeys {state}")
        approver = UserFactory(username="approver_jo", role="Approver")
        access_grant(obj=app, to=approver, by=None)
        everyone = SegmentFactory(name="Everyone")
        graph = simple_graph(condition_segment=SegmentFactory(name="VIPs").pk, content=PushContentFactory(app=app).pk)
        journey = journey_create(
            by=by, name="Onboarding", app=app, graph=graph, entry_kind="segment", entry_segment=everyone
        )
        if state != "draft":
            journey_submit(journey_id=journey.pk, by=by)
        if state in ("live", "stopped", "live_with_draft", "paused"):
            journey_approve(journey_id=journey.pk, by=approver)
        if state == "paused":
            journey_pause(journey_id=journey.pk, by=by)
        if state == "stopped":
            journey_stop(journey_id=journey.pk, by=by)
        if state == "live_with_draft":
            journey_version_edit(journey_id=journey.pk, by=by, exit_event="purchase")
        return Journey.objects.get(pk=journey.pk)

    return make


def _access(make):
    def press(by):
        obj = make(by)
        opts = obj._meta
        url = reverse(f"admin:{opts.app_label}_{opts.model_name}_access", args=[obj.pk])
        return url, {"user": UserFactory(username="viewer_vic", role="Viewer").pk}, lambda: obj

    return press


def _policy_with_an_approver(by):
    policy = ApprovalPolicy.objects.create(name="Marketing")
    policy.approver_users.set([UserFactory(username="approver_ann", role="Approver")])
    return policy


def _api_key(by):
    key, _ = api_key_create(user=by, name="Deploys", scopes=["trigger"], by=by)
    return key


def _stalled_import(by):
    record = Import(created_by=by, status=Import.Status.RUNNING)
    record.heartbeat_at = timezone.now() - timezone.timedelta(hours=1)
    record.file.save("people.csv", ContentFile(b"external_id\nu1\n"), save=False)
    record.save()
    return record


def _running_dispatch(by):
    from delivery.services.contents import pushcontent_test_send

    content = PushContentFactory()
    DeviceFactory(app=content.app, is_test=True)
    return pushcontent_test_send(content_id=content.pk, by=by)


def _review(by):
    campaign = _campaign_in("in_review")(by)
    request = ApprovalRequest.objects.get(subject_id=str(campaign.pk), status="pending")
    url = reverse("admin:accounts_approvalrequest_review", args=[request.pk])
    return url, {"_approve": "1", "comment": "fine"}, lambda: campaign


def _password_change(by):
    user = UserFactory(username="forgetful_fay", role="Viewer")
    url = reverse("admin:auth_user_password_change", args=[user.pk])
    new = "A-new-long-passphrase-42"
    return url, {"password1": new, "password2": new, "usable_password": "true"}, lambda: user


def _finished_task(by, *, success: bool):
    now = timezone.now()
    return Task.objects.create(
        id=uuid.uuid4().hex,
        name=f"task-{uuid.uuid4().hex[:8]}",
        func="math.floor",
        args=(2.5,),
        kwargs={},
        started=now,
        stopped=now,
        success=success,
        result=2 if success else "boom",
    )


def _resubmit(model, *, success: bool):
    def press(by):
        task = _finished_task(by, success=success)
        url, data = _changelist(model, "resubmit_task", task)
        return url, data, lambda: task

    return press


def _device_token_shown(by):
    device = DeviceFactory()
    return reverse("admin:delivery_device_token", args=[device.pk]), {}, lambda: device


def _latest_dispatch():
    return Dispatch.objects.latest("pk")


def _latest_campaign():
    from campaigns.models import Campaign

    return Campaign.objects.latest("pk")


PRESSES = {
    "accounts.apikey:revoke_keys": _action("revoke_keys", _api_key),
    "accounts.approvalpolicy:activate": _action("activate", _policy_with_an_approver),
    "accounts.approvalpolicy:deactivate": _action(
        "deactivate",
        lambda by: ApprovalPolicy.objects.create(name="Marketing", is_active=True, activated_at=timezone.now()),
    ),
    "accounts.approvalrequest:review": _review,
    "accounts.user:auth_user_password_change": _password_change,
    "audiences.import:restart_imports": _action("restart_imports", _stalled_import),
    "audiences.segment:delete_segments": _action("delete_segments", lambda by: SegmentFactory(name="Old")),
    "audiences.segment:access": _access(lambda by: SegmentFactory(name="Shared")),
    "campaigns.campaign:access": _access(_campaign_in("draft")),
    "campaigns.campaign:transition/submit": _transition("submit", _campaign_in("draft")),
    "campaigns.campaign:transition/cancel_request": _transition("cancel_request", _campaign_in("in_review")),
    "campaigns.campaign:transition/stop": _transition("stop", _campaign_in("live")),
    "campaigns.campaign:transition/archive": _transition("archive", _campaign_in("stopped")),
    "campaigns.campaign:transition/duplicate": _transition("duplicate", _campaign_in("draft"), _latest_campaign),
    "campaigns.campaign:transition/test_send": _transition("test_send", _campaign_in("draft"), _latest_dispatch),
    "delivery.app:access": _access(lambda by: AppFactory(name="Shared app")),
    "delivery.app:test_connection": _action("test_connection", lambda by: AppFactory(name="No credentials")),
    "delivery.app:rotate_identity_secret": _confirmed(
        _action("rotate_identity_secret", lambda by: _app_of(by, AppFactory(name="Verified app"))),
        once="delivery.app:rotate_identity_secret",
    ),
    "delivery.device:mark_test": _action("mark_test", lambda by: DeviceFactory(is_test=False)),
    "delivery.device:unmark_test": _action("unmark_test", lambda by: DeviceFactory(is_test=True)),
    "delivery.device:token": _device_token_shown,
    "delivery.dispatch:stop": _action("stop", _running_dispatch),
    "delivery.pushcontent:access": _access(lambda by: PushContentFactory(name="Shared content")),
    "delivery.pushcontent:send_test": _confirmed(
        _action("send_test", lambda by: _content_with_a_test_device(), _latest_dispatch),
        once="delivery.pushcontent:send_test",
    ),
    "audiences.eventreplay:replay_now": _action(
        "replay_now",
        lambda by: EventReplay.objects.create(listener="gone.listener", event_ids=[1], next_attempt_at=timezone.now()),
    ),
    "django_q.success:resubmit_task": _resubmit(Success, success=True),
    "django_q.failure:resubmit_task": _resubmit(Failure, success=False),
    "journeys.journey:access": _access(_journey_in("draft")),
    "journeys.journey:transition/submit": _transition("submit", _journey_in("draft")),
    "journeys.journey:transition/cancel_request": _transition("cancel_request", _journey_in("in_review")),
    "journeys.journey:transition/stop": _transition("stop", _journey_in("live")),
    "journeys.journey:transition/pause": _transition("pause", _journey_in("live")),
    "journeys.journey:transition/resume": _transition("resume", _journey_in("paused")),
    "journeys.journey:transition/discard_draft": _transition("discard_draft", _journey_in("live_with_draft")),
    "journeys.journey:transition/archive": _transition("archive", _journey_in("stopped")),
}


def _buttons(user=None) -> set[str]:
    """The buttons offered to ``user`` (to a superuser by default), but the delete action."""
    request = None
    if user is not None:
        request = RequestFactory().get("/admin/")
        request.user = user
    return {key for key in admin_buttons(request=request) if not key.endswith(f":{WALKED_ELSEWHERE}")}


def _events(actor, obj):
    content_type = ContentType.objects.get_for_model(obj, for_concrete_model=False)
    return AuditEvent.objects.filter(actor=actor, object_type=content_type, object_id=str(obj.pk))


def test_every_admin_button_is_pressed_here_or_said_to_write_nothing():
    buttons = _buttons()
    assert not set(PRESSES) & set(READ_ONLY)
    assert buttons == set(PRESSES) | set(READ_ONLY), (
        "Add each new button to PRESSES (it writes) or READ_ONLY (say why it does not): "
        f"{sorted(buttons - set(PRESSES) - set(READ_ONLY))}; gone: {sorted((set(PRESSES) | set(READ_ONLY)) - buttons)}"
    )


@pytest.mark.parametrize("button", sorted(PRESSES))
def test_each_admin_button_that_writes_audits_its_actor_and_object(client, admin_erin, button):
    actor = admin_erin if button in _buttons(admin_erin) else UserFactory(username="root_rita", is_superuser=True)
    url, data, audited = PRESSES[button](actor)
    started = AuditEvent.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
    client.force_login(actor)
    response = client.post(url, data)
    assert response.status_code in (200, 302), (button, response.status_code)
    assert _events(actor, audited()).filter(pk__gt=started).exists(), (
        button,
        list(AuditEvent.objects.filter(pk__gt=started).values_list("action", "object_label")),
    )


def test_the_administrator_role_reads_the_task_queue_and_does_not_resubmit(client, admin_erin):
    task = _finished_task(admin_erin, success=False)
    assert not any(key.endswith(":resubmit_task") for key in _buttons(admin_erin))
    client.force_login(admin_erin)
    url, data = _changelist(Failure, "resubmit_task", task)
    assert client.get(url).status_code == 200
    client.post(url, data)
    assert Task.objects.filter(pk=task.pk).exists()
    assert not AuditEvent.objects.filter(action="task_resubmitted").exists()
