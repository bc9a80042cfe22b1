"""The list actions every admin shares: "Delete selected …" on each list that offers it, and the task
queue's "Resubmit". An Administrator (a superuser for the task queue's pages) presses each and the
rows are gone (or resubmitted); a Viewer who can see the same rows presses it and nothing changes."""

import uuid

import pytest
from django.contrib import admin
from django.contrib.auth.models import Group
from django.contrib.contenttypes.models import ContentType
from django.urls import reverse
from django.utils import timezone
from django_q.models import OrmQ

from accounts.models import AuditEvent
from accounts.services import access_grant
from tests.factories import AppFactory, DeviceFactory, ProfileFactory, PushContentFactory, UserFactory


def _task(success: bool):
    from django_q.models import Task

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


def _schedule(app, admin):
    from django_q.models import Schedule

    return Schedule.objects.create(name="nightly", func="math.floor", args="1.5", schedule_type="D")


def _campaign(app, admin):
    from campaigns.services.lifecycle import campaign_create

    content = PushContentFactory(app=app)
    return campaign_create(by=admin, name="Flash sale", app=app, kind="api_triggered", content=content)


def _journey(app, admin):
    from journeys.services.lifecycle import journey_create

    graph = {
        "steps": [{"id": "start", "type": "wait", "seconds": 3600, "next": "done"}, {"id": "done", "type": "exit"}]
    }
    return journey_create(by=admin, name="Welcome", app=app, graph=graph, entry_kind="event", entry_event="signed_up")


def _policy(app, admin):
    from accounts.models import ApprovalPolicy

    return ApprovalPolicy.objects.create(name="Shop policy")


def _rules(app, admin):
    from delivery.models import DeliveryRules

    return DeliveryRules.objects.create(app=app)


# label → (how to make one row of it in the app everyone works on, whether only a superuser may press)
def _event_replay(app, admin):
    from django.utils import timezone

    from audiences.models import EventReplay

    return EventReplay.objects.create(listener="x.y", event_ids=[1], next_attempt_at=timezone.now())


DELETABLE = {
    "accounts.user": (lambda app, admin: UserFactory(username="leaver", role="Viewer"), False),
    "auth.group": (lambda app, admin: Group.objects.create(name="Temporary"), False),
    "accounts.approvalpolicy": (_policy, False),
    "audiences.profile": (lambda app, admin: ProfileFactory(external_id="gone-1"), False),
    "audiences.eventreplay": (_event_replay, False),
    "delivery.app": (lambda app, admin: app, False),
    "delivery.pushcontent": (lambda app, admin: PushContentFactory(app=app), False),
    "delivery.device": (lambda app, admin: DeviceFactory(app=app), False),
    "delivery.deliveryrules": (_rules, False),
    "campaigns.campaign": (_campaign, False),
    "journeys.journey": (_journey, False),
    "django_q.schedule": (_schedule, True),
    "django_q.success": (lambda app, admin: _task(True), True),
    "django_q.failure": (lambda app, admin: _task(False), True),
}


def _queued(app, admin):
    from django_q.brokers import get_broker

    return OrmQ.objects.get(pk=get_broker().enqueue("a task waiting in the queue"))


# The queue's own page, with django-q2's ORM broker only (the embedded mode: no Redis).
if admin.site.is_registered(OrmQ):
    DELETABLE["django_q.ormq"] = (_queued, True)


@pytest.fixture
def superuser(db):
    return UserFactory(username="root_rita", is_superuser=True)


def _changelist(label: str) -> str:
    app_label, model_name = label.split(".")
    return reverse(f"admin:{app_label}_{model_name}_changelist")


def _model(label: str):
    from django.apps import apps

    return apps.get_model(label)


def _press(client, label, action, obj):
    return client.post(_changelist(label), {"action": action, "_selected_action": [obj.pk], "post": "yes"})


@pytest.mark.presses(*(f"{label}:delete_selected" for label in DELETABLE))
@pytest.mark.parametrize(
    "label",
    [pytest.param(label, marks=pytest.mark.embedded) if label == "django_q.ormq" else label for label in DELETABLE],
)
def test_delete_selected_deletes_for_an_administrator_and_nothing_for_a_viewer(
    client, admin_erin, viewer_carol, superuser, label
):
    make, superuser_only = DELETABLE[label]
    app = AppFactory(name="Shop")
    access_grant(obj=app, to=viewer_carol, by=None)
    obj = make(app, admin_erin)
    model = _model(label)

    started = AuditEvent.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
    client.force_login(viewer_carol)
    refused = _press(client, label, "delete_selected", obj)
    assert refused.status_code in (200, 302, 403), refused.status_code
    assert model.objects.filter(pk=obj.pk).exists(), "a Viewer deleted it"
    if refused.status_code == 200:  # the list is open to a Viewer, with no action to use
        assert b'value="delete_selected"' not in refused.content
    elif refused.status_code == 302:  # the list offers other actions, not this one
        assert "No action selected." in [m.message for m in refused.wsgi_request._messages]

    actor = superuser if superuser_only else admin_erin
    client.force_login(actor)
    answer = _press(client, label, "delete_selected", obj)
    assert answer.status_code == 302, answer.content[:2000]
    assert not model.objects.filter(pk=obj.pk).exists()
    content_type = ContentType.objects.get_for_model(model, for_concrete_model=False)
    deleted = AuditEvent.objects.filter(pk__gt=started, actor=actor, object_type=content_type, object_id=str(obj.pk))
    assert deleted.filter(action__endswith="_deleted").exists(), list(deleted.values_list("action", flat=True))
    assert not AuditEvent.objects.filter(pk__gt=started, actor=viewer_carol).exists()


@pytest.mark.presses("django_q.success:resubmit_task", "django_q.failure:resubmit_task")
@pytest.mark.parametrize("label", ["django_q.success", "django_q.failure"])
def test_resubmit_runs_a_task_again_for_a_superuser_and_not_for_a_viewer(
    client, viewer_carol, superuser, label, django_capture_on_commit_callbacks
):
    from django_q.models import Task

    task = _task(label == "django_q.success")
    client.force_login(viewer_carol)
    assert _press(client, label, "resubmit_task", task).status_code == 403
    assert list(Task.objects.values_list("pk", flat=True)) == [task.pk]

    client.force_login(superuser)
    with django_capture_on_commit_callbacks(execute=True):
        pressed = _press(client, label, "resubmit_task", task)
    assert pressed.status_code == 302
    assert [m.message for m in pressed.wsgi_request._messages] == ["1 task queued again."]
    again = Task.objects.exclude(pk=task.pk).get()  # run again (in-process in tests)
    assert (again.func, again.success, again.result) == ("math.floor", True, 2)
    # A resubmitted failure leaves the failures list; a success stays where it was.
    assert Task.objects.filter(pk=task.pk).exists() is (label == "django_q.success")
