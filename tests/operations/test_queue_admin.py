"""Administrators (not only superusers) watch the task queue: failed tasks, schedules, occurrences."""

import uuid

import pytest
from django.utils import timezone
from django_q.models import Schedule, Task


@pytest.fixture
def failed_task(db):
    now = timezone.now()
    return Task.objects.create(
        id=uuid.uuid4().hex,
        name="alpha-bravo-charlie",
        func="delivery.tasks.dispatch_send_task",
        started=now,
        stopped=now,
        success=False,
        result="Traceback: ConnectionError",
    )


PAGES = ["/admin/django_q/failure/", "/admin/django_q/success/", "/admin/django_q/schedule/"]


@pytest.mark.parametrize("page", PAGES)
def test_administrator_reads_the_task_queue_pages(client, admin_erin, failed_task, page):
    assert not admin_erin.is_superuser
    client.force_login(admin_erin)
    response = client.get(page)
    assert response.status_code == 200


@pytest.mark.parametrize("page", PAGES)
@pytest.mark.parametrize("query", ["name__regex=(", "started__year=0", "id__range=10000"])
def test_a_task_queue_page_refuses_a_query_lookup_that_fails_as_it_is_read(
    client, admin_erin, failed_task, page, query
):
    # As every other list does (accounts.admin.bases.BoundedLookupsMixin): these answered 500.
    client.force_login(admin_erin)
    assert client.get(f"{page}?{query}").status_code == 400


def test_administrator_reads_a_failed_task_and_the_beat(client, admin_erin, failed_task, beat):
    client.force_login(admin_erin)
    failure = client.get(f"/admin/django_q/failure/{failed_task.pk}/change/")
    assert failure.status_code == 200 and "ConnectionError" in failure.text
    schedules = client.get("/admin/django_q/schedule/")
    assert "campaigns tick" in schedules.text and "delivery watchdog" in schedules.text


def test_administrator_cannot_change_the_beat(client, admin_erin, beat):
    client.force_login(admin_erin)
    schedule = Schedule.objects.get(name="campaigns tick")
    response = client.post(f"/admin/django_q/schedule/{schedule.pk}/change/", {"name": "hijacked", "func": "os.system"})
    assert response.status_code == 403
    assert Schedule.objects.get(pk=schedule.pk).func != "os.system"


@pytest.mark.parametrize("role", ["manager_alice", "approver_bob", "viewer_carol", "outsider_dave"])
@pytest.mark.parametrize("page", PAGES)
def test_other_roles_are_refused_the_task_queue(client, request, failed_task, role, page):
    client.force_login(request.getfixturevalue(role))
    assert client.get(page).status_code == 403


def test_administrator_sees_a_campaign_s_occurrences(client, admin_erin, make_campaign, approve):
    from campaigns.services.scheduling import campaigns_tick

    campaign = approve(make_campaign(schedule_kind="at", send_at=timezone.now() + timezone.timedelta(minutes=5)))
    campaigns_tick(now=campaign.next_occurrence_at)
    client.force_login(admin_erin)
    page = client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/")
    assert page.status_code == 200
    assert "occurrence_set-0" in page.text or "occurrences-0" in page.text
