"""Two worlds. ``world``: objects that manager_alice works on; manager_mallory (a Manager) and
outsider_dave were granted none of it. ``crawl_world``: manager_mallory's objects, each named with
MARKER, and manager_alice's own naming some of them, for the crawls of the admin and the API."""

import datetime as dt

import pytest
from django.contrib import admin
from django.core.files.uploadedfile import SimpleUploadedFile

from accounts.services import access_grant, access_revoke
from tests.factories import DeviceFactory, ProfileFactory, SegmentFactory


@pytest.fixture
def world(pushsim_app, manager_alice, approver_bob, django_capture_on_commit_callbacks):
    """One object of every kind an admin page, action, export or API view shows, all in alice's scope."""
    run_queued = django_capture_on_commit_callbacks
    from accounts.models import ApiKey, ApprovalRequest, AuditEvent
    from accounts.services import api_key_create
    from audiences.models import Import
    from audiences.services.imports import import_create
    from campaigns.services.lifecycle import campaign_create, campaign_submit
    from campaigns.services.scheduling import campaign_test_send
    from delivery.models import Delivery, Dispatch, PushContent
    from delivery.services.contents import pushcontent_save
    from journeys.models import Enrollment
    from journeys.services.lifecycle import journey_approve, journey_create, journey_submit

    for user in (manager_alice, approver_bob):
        access_grant(obj=pushsim_app, to=user, by=None)
    segment = SegmentFactory(
        name="Alice's segment",
        created_by=manager_alice,
        rules={"all": [{"field": "external_id", "op": "eq", "value": "zoe"}]},
    )
    access_grant(obj=segment, to=manager_alice, by=None)
    profile = ProfileFactory(external_id="zoe", attributes={"plan": "pro"})
    device = DeviceFactory(profile=profile, app=pushsim_app, platform="ios", is_test=True)
    content = pushcontent_save(
        content=PushContent(app=pushsim_app, name="Spring", title="Hi", body="Sale"), by=manager_alice
    )
    campaign = campaign_create(
        by=manager_alice, name="Spring sale", app=pushsim_app, segment=segment, content=content, kind="scheduled"
    )
    with run_queued(execute=True):
        campaign_test_send(campaign_id=campaign.pk, by=manager_alice)
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    journey = journey_create(
        by=manager_alice,
        name="Onboarding",
        app=pushsim_app,
        entry_kind="segment",
        entry_segment=segment,
        graph={
            "steps": [
                {"id": "start", "type": "wait", "seconds": 3600, "next": "done"},
                {"id": "done", "type": "exit"},
            ]
        },
    )
    journey_submit(journey_id=journey.pk, by=manager_alice)
    with run_queued(execute=True):
        journey_approve(journey_id=journey.pk, by=approver_bob)
    upload = SimpleUploadedFile("people.csv", b"external_id,plan\nann,pro\n,broken\n", content_type="text/csv")
    with run_queued(execute=True):
        record = import_create(upload=upload, by=manager_alice, target="new_segment", segment_name="Imported by alice")
    api_key_create(user=manager_alice, name="alice's key", scopes=["read"], by=manager_alice)
    dispatch = Dispatch.objects.filter(deliveries__isnull=False).latest("pk")
    enrollment = Enrollment.objects.filter(journey=journey).first()
    return {
        "delivery.app": pushsim_app,
        "audiences.segment": segment,
        "audiences.import": Import.objects.get(pk=record.pk),
        "delivery.device": device,
        "delivery.pushcontent": content,
        "delivery.dispatch": dispatch,
        "delivery.delivery": Delivery.objects.filter(dispatch=dispatch).first(),
        "campaigns.campaign": campaign,
        "journeys.journey": journey,
        "journeys.enrollment": enrollment,
        "accounts.approvalrequest": ApprovalRequest.objects.order_by("pk").first(),
        "accounts.apikey": ApiKey.objects.get(name="alice's key"),
        "accounts.auditevent": AuditEvent.objects.latest("pk"),
        "profile": profile,
    }


# --- the crawls' world (test_admin_crawl.py, test_api_crawl.py) ---------------------------------------

MARKER = "ZQXSECRET"
# The text of mallory's pushes: what a campaign or a journey sends is read by whoever was granted it.
TEXT = "ZQXWORDS"
T0 = dt.datetime(2030, 3, 1, 9, 0, tzinfo=dt.UTC)


def _graph(*, condition_segment: int, contents: list[int]) -> dict:
    """wait → condition on a segment → push → push → exit, every other profile → exit."""
    return {
        "steps": [
            {"id": "start", "type": "wait", "seconds": 3600, "next": "check"},
            {
                "id": "check",
                "type": "condition",
                "branches": [
                    {"label": "Members", "segment": condition_segment, "next": "first"},
                    {"label": "Rule", "rules": {"all": [{"segment": condition_segment}]}, "next": "done"},
                ],
                "else": "done",
            },
            {"id": "first", "type": "push", "content": contents[0], "next": "second"},
            {"id": "second", "type": "push", "content": contents[1], "next": "done"},
            {"id": "done", "type": "exit"},
        ]
    }


@pytest.fixture
def viewer_vic(db):
    from tests.factories import UserFactory

    return UserFactory(username="viewer_vic", role="Viewer")


@pytest.fixture
def crawl_world(
    pushsim,
    apns_credentials,
    fcm_credentials,
    manager_alice,
    manager_mallory,
    approver_bob,
    viewer_carol,
    viewer_vic,
    django_capture_on_commit_callbacks,
):
    """mallory's objects, every name carrying MARKER, and alice's own naming some of them (see the crawls)."""
    from audiences.services.imports import import_create
    from audiences.services.segments import segment_create, segment_members_change
    from campaigns.models import Campaign
    from campaigns.services.conversions import campaign_conversion_set
    from campaigns.services.lifecycle import campaign_approve, campaign_create, campaign_submit, campaign_update
    from campaigns.services.scheduling import campaign_fire_due, campaign_test_send
    from campaigns.services.triggers import campaign_trigger
    from campaigns.services.variants import VariantInput, campaign_variants_set
    from campaigns.services.winner import WinnerInput, campaign_winner_set
    from delivery.models import PushContent
    from delivery.services.contents import pushcontent_save
    from journeys.services.conversions import journey_conversion_set
    from journeys.services.lifecycle import journey_approve, journey_create, journey_submit, journey_version_edit
    from tests.factories import DeviceFactory, ProfileFactory
    from tests.fakes.pushsim import simulated_app

    run_queued = django_capture_on_commit_callbacks

    def app(name):
        return simulated_app(name, pushsim, apns_credentials, fcm_credentials)

    def content(app, name, by, title="Hello"):
        return pushcontent_save(content=PushContent(app=app, name=name, title=title, body="Today only"), by=by)

    def approve(campaign, by):
        campaign_submit(campaign_id=campaign.pk, by=by)
        return campaign_approve(campaign_id=campaign.pk, by=approver_bob, now=T0 - dt.timedelta(hours=1))

    # --- mallory's: every name carries the marker ----------------------------------------------
    before = _last_rows()
    secret_app = app(f"{MARKER} app")
    for user in (manager_mallory, approver_bob):
        access_grant(obj=secret_app, to=user, by=None)
    for i in range(6):
        profile = ProfileFactory(external_id=f"zed-{i}")
        DeviceFactory(profile=profile, app=secret_app, platform="ios" if i % 2 else "android", is_test=i == 0)
    static = segment_create(name=f"{MARKER} static list", by=manager_mallory, kind="static")
    segment_members_change(segment_id=static.pk, by=manager_mallory, add=["zed-0", "zed-1"])
    rules = segment_create(
        name=f"{MARKER} rules",
        by=manager_mallory,
        rules={"any": [{"field": "external_id", "op": "starts_with", "value": "zed-"}, {"segment": static.pk}]},
    )
    contents = [content(secret_app, f"{MARKER} content {x}", manager_mallory, f"{TEXT} {x}") for x in "ABC"]
    scheduled = campaign_create(
        by=manager_mallory,
        name=f"{MARKER} scheduled",
        app=secret_app,
        kind="scheduled",
        segment=rules,
        content=contents[0],
        schedule_kind="recurring",
        recurrence="cron",
        cron="0 9 * * *",
        send_at=T0,
        time_zone="UTC",
    )
    campaign_conversion_set(campaign_id=scheduled.pk, by=manager_mallory, event=f"{MARKER}_purchase")
    with run_queued(execute=True):
        campaign_test_send(campaign_id=scheduled.pk, by=manager_mallory)
    approve(scheduled, manager_mallory)
    campaign_fire_due(campaign_id=scheduled.pk, now=T0)
    campaign_fire_due(campaign_id=scheduled.pk, now=T0 + dt.timedelta(days=1))

    winner = campaign_create(
        by=manager_mallory,
        name=f"{MARKER} winner",
        app=secret_app,
        kind="scheduled",
        segment=rules,
        content=contents[0],
        schedule_kind="at",
        send_at=T0,
    )
    campaign_variants_set(
        campaign_id=winner.pk,
        by=manager_mallory,
        variants=[VariantInput(content_id=c.pk, share=s) for c, s in zip(contents, (30, 30, 30), strict=True)],
        holdout_share=10,
    )
    campaign_winner_set(
        campaign_id=winner.pk,
        by=manager_mallory,
        settings=WinnerInput(sample_share=40, wait_minutes=120, metric="open_rate", confidence=95),
    )
    approve(winner, manager_mallory)
    campaign_fire_due(campaign_id=winner.pk, now=T0)

    receipt = content(secret_app, f"{MARKER} receipt", manager_mallory)
    trigger = campaign_create(
        by=manager_mallory,
        name="Order shipped",  # granted to carol: its own name she reads
        app=secret_app,
        kind="api_triggered",
        purpose="transactional",
        content=receipt,
    )
    approve(trigger, manager_mallory)
    campaign_trigger(
        campaign_id=trigger.pk, by=manager_mallory, recipients=[{"external_id": "zed-0"}, {"external_id": "zed-1"}],
        context={},
    )  # fmt: skip
    campaign_update(campaign_id=trigger.pk, by=manager_mallory, purpose="marketing")
    campaign_submit(campaign_id=trigger.pk, by=manager_mallory)  # a revision waits for bob; the stream sends on
    access_grant(obj=Campaign.objects.get(pk=trigger.pk), to=viewer_carol, by=None)

    draft = campaign_create(
        by=manager_mallory, name=f"{MARKER} draft", app=secret_app, kind="scheduled", segment=static,
        content=contents[1],
    )  # fmt: skip
    campaign_submit(campaign_id=draft.pk, by=manager_mallory)  # waits for bob

    with run_queued(execute=True):
        segment_journey = journey_create(
            by=manager_mallory,
            name=f"{MARKER} journey",
            app=secret_app,
            entry_kind="segment",
            entry_segment=rules,
            graph=_graph(condition_segment=static.pk, contents=[contents[1].pk, contents[2].pk]),
        )
        journey_conversion_set(journey_id=segment_journey.pk, by=manager_mallory, event=f"{MARKER}_signup")
        journey_submit(journey_id=segment_journey.pk, by=manager_mallory)
        journey_approve(journey_id=segment_journey.pk, by=approver_bob)
    event_journey = journey_create(
        by=manager_mallory,
        name=f"{MARKER} event journey",
        app=secret_app,
        entry_kind="event",
        entry_event="app_open",
        graph=_graph(condition_segment=rules.pk, contents=[contents[0].pk, contents[2].pk]),
    )
    journey_submit(journey_id=event_journey.pk, by=manager_mallory)

    with run_queued(execute=True):
        flow = journey_create(
            by=manager_mallory,
            name="Welcome flow",  # granted to vic: its own name he reads
            app=secret_app,
            entry_kind="segment",
            entry_segment=static,
            graph=_graph(condition_segment=rules.pk, contents=[contents[0].pk, receipt.pk]),
        )
        journey_submit(journey_id=flow.pk, by=manager_mallory)
        journey_approve(journey_id=flow.pk, by=approver_bob)
    journey_version_edit(journey_id=flow.pk, by=manager_mallory, exit_event="unsubscribed")
    journey_submit(journey_id=flow.pk, by=manager_mallory)  # version 2 waits for bob; version 1 runs on
    access_grant(obj=flow, to=viewer_vic, by=None)

    upload = SimpleUploadedFile(f"{MARKER}.csv", b"external_id,plan\nzed-0,pro\n,broken\n", content_type="text/csv")
    with run_queued(execute=True):
        import_create(upload=upload, by=manager_mallory, target="new_segment", segment_name=f"{MARKER} imported")

    secret_rows = _rows_since(before)

    # --- alice's: her own app, naming mallory's segments (granted once, revoked since) ------------
    own_app = app("Harbor app")
    for user in (manager_alice, approver_bob):
        access_grant(obj=own_app, to=user, by=None)
    welcome = content(own_app, "Harbor welcome", manager_alice)
    later = content(own_app, "Harbor later", manager_alice)
    for segment in (rules, static):
        access_grant(obj=segment, to=manager_alice, by=None)
    nested = segment_create(
        name="Harbor regulars",
        by=manager_alice,
        rules={"all": [{"segment": rules.pk}, {"segment": static.pk, "member": False}]},
    )
    harbor = campaign_create(
        by=manager_alice, name="Harbor sale", app=own_app, kind="scheduled", segment=rules, content=welcome
    )
    own_journey = journey_create(
        by=manager_alice,
        name="Harbor onboarding",
        app=own_app,
        entry_kind="segment",
        entry_segment=nested,
        graph=_graph(condition_segment=static.pk, contents=[welcome.pk, later.pk]),
    )
    upload = SimpleUploadedFile("regulars.csv", b"external_id\nzed-2\n", content_type="text/csv")
    with run_queued(execute=True):
        import_create(upload=upload, by=manager_alice, target="add_to_segment", segment_id=static.pk)
    for segment in (rules, static):
        access_revoke(obj=segment, to=manager_alice, by=None)
    campaign_submit(campaign_id=harbor.pk, by=manager_alice)
    upload = SimpleUploadedFile("harbor.csv", b"external_id\nzed-0\n", content_type="text/csv")
    with run_queued(execute=True):
        import_create(upload=upload, by=manager_alice, target="new_segment", segment_name="Harbor imported")

    return {
        "secret": {
            "delivery.app": [secret_app],
            "delivery.pushcontent": [*contents, receipt],
            "audiences.segment": [rules, static],
            "campaigns.campaign": [scheduled, winner, draft],
            "journeys.journey": [segment_journey, event_journey],
        },
        "alice": {"app": own_app, "segment": nested, "campaign": harbor, "journey": own_journey},
        "granted": trigger,
        "granted_journey": flow,
        "secret_rows": secret_rows,
    }


# Rows every Manager and Viewer reads, whoever wrote them: profiles and their events.
SHARED = {"audiences.profile", "audiences.event"}


def _last_rows() -> dict[str, int]:
    return {
        model._meta.label_lower: model._default_manager.order_by("-pk").values_list("pk", flat=True).first() or 0
        for model in admin.site._registry
        if model._meta.label_lower not in SHARED and model._meta.pk.get_internal_type() in _INTEGER_KEYS
    }


_INTEGER_KEYS = {"AutoField", "BigAutoField", "IntegerField", "BigIntegerField"}


def _rows_since(before: dict[str, int]) -> dict[str, list[int]]:
    """The rows of each admin's model written since ``before``: (label, pks)."""
    rows = {}
    for model in admin.site._registry:
        label = model._meta.label_lower
        if label in before:
            pks = list(model._default_manager.filter(pk__gt=before[label]).order_by("pk").values_list("pk", flat=True))
            if pks:
                rows[label] = pks
    return rows
