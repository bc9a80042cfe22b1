"""A trigger to an open stream in one statement: when nothing is decided per profile before its
rows are made (content that does not render from the profile, no variants, no quiet hours), the
append looks the profiles up itself, and the answer is read off the rows it made. It must answer
exactly as the lookup followed by the append does."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from delivery.models import Delivery, DeliveryRules, Dispatch
from delivery.payloads import spec_reads_profile
from delivery.personalization import template_reads_profile
from tests.factories import DeviceFactory, ProfileFactory

pytestmark = pytest.mark.skipif(connection.vendor != "postgresql", reason="one statement on PostgreSQL")

BODY = {
    "recipients": [
        {"external_id": "zoe", "context": {"order_id": "A-1"}},
        {"external_id": "ghost"},
        {"external_id": "max"},
        {"external_id": "no-phone"},
        {"external_id": "zoe", "context": {"order_id": "A-2"}},
        {"external_id": "mute"},
    ],
    "context": {"order_id": "shared"},
}


@pytest.fixture(autouse=True)
def senders_asleep(monkeypatch):
    """The rows stay as the calls made them: no sender is woken (here it would send in the call)."""
    import delivery.services.stream_senders

    monkeypatch.setattr(delivery.services.stream_senders, "streams_wake", lambda dispatch_id: None)


@pytest.fixture
def cast(pushsim_app):
    """Zoé (an iPhone), Max (two devices), Mute (a device not opted in), No-phone (no device)."""
    DeviceFactory(profile=ProfileFactory(external_id="zoe"), app=pushsim_app, platform="ios")
    max_ = ProfileFactory(external_id="max")
    DeviceFactory(profile=max_, app=pushsim_app, platform="android")
    DeviceFactory(profile=max_, app=pushsim_app, platform="ios")
    DeviceFactory(profile=ProfileFactory(external_id="mute"), app=pushsim_app, push_enabled=False)
    ProfileFactory(external_id="no-phone")


def _post(client, campaign, body=BODY, **extra):
    with CaptureQueriesContext(connection) as captured:
        response = client.post(f"/api/v1/campaigns/{campaign.pk}/trigger/", body, format="json", **extra)
    return response, [q["sql"] for q in captured if q["sql"] not in ("BEGIN", "COMMIT")]


def _marketing(campaign, manager, approver) -> None:
    """The campaign made a marketing one, approved: the app's delivery rules apply to it."""
    from campaigns.services.lifecycle import campaign_approve, campaign_submit, campaign_update

    campaign_update(campaign_id=campaign.pk, by=manager, purpose="marketing")
    campaign_submit(campaign_id=campaign.pk, by=manager)
    campaign_approve(campaign_id=campaign.pk, by=approver)


def _without_ids(answer: dict) -> dict:
    return {**answer, "deliveries": [{k: v for k, v in d.items() if k != "id"} for d in answer["deliveries"]]}


def _rows(answer: dict) -> list[tuple]:
    by_id = {
        row[0]: row[1:]
        for row in Delivery.objects.filter(pk__in=[d["id"] for d in answer["deliveries"]]).values_list(
            "id", "profile__external_id", "device_id", "status", "reason", "context", "finished_at"
        )
    }
    return [(*by_id[d["id"]][:5], by_id[d["id"]][5] is not None) for d in answer["deliveries"]]


@pytest.mark.django_db(transaction=True)
def test_a_call_to_an_open_stream_is_one_statement_and_answers_as_the_lookup_and_the_append_do(
    context_trigger, trigger_client, cast
):
    first, first_queries = _post(trigger_client, context_trigger)  # opens the stream: the lookup, then the append
    second, second_queries = _post(trigger_client, context_trigger)
    assert first.status_code == second.status_code == 202
    assert any("FROM audiences_profile p WHERE p.external_id" in sql for sql in first_queries)
    assert len(second_queries) == 1 and "INSERT INTO delivery_delivery" in second_queries[0], second_queries
    assert _without_ids(second.json()) == _without_ids(first.json())
    answer = second.json()
    assert [(p["index"], p["code"]) for p in answer["problems"]] == [
        (1, "unknown_profile"),
        (3, "no_device"),
        (4, "duplicate"),
        (5, "no_device"),
    ]
    assert [(d["external_id"], d["status"], d["reason"]) for d in answer["deliveries"]] == [
        ("zoe", "queued", ""),
        ("max", "queued", ""),
        ("max", "queued", ""),
        ("no-phone", "skipped", "no_device"),
        ("mute", "skipped", "not_opted_in"),
    ]
    assert answer["accepted"] == 3
    # The rows are the same too: their devices aside, which are the same ones.
    assert [row[:1] + row[2:] for row in _rows(second.json())] == [row[:1] + row[2:] for row in _rows(first.json())]
    assert _rows(answer)[0][4] == {"order_id": "A-1"}  # its own context over the shared one


@pytest.mark.django_db(transaction=True)
def test_content_that_renders_from_the_profile_is_still_looked_up_first(live_trigger, trigger_client, cast):
    _post(trigger_client, live_trigger)
    second, queries = _post(trigger_client, live_trigger)
    assert second.status_code == 202
    assert len(queries) == 2 and "FROM audiences_profile p WHERE p.external_id" in queries[0], queries


@pytest.mark.django_db(transaction=True)
def test_a_call_naming_only_unknown_profiles_writes_nothing_and_is_replayed(context_trigger, trigger_client, cast):
    _post(trigger_client, context_trigger, {"recipients": [{"external_id": "zoe"}]})
    rows = Delivery.objects.count()
    body = {"recipients": [{"external_id": "ghost"}, {"external_id": "ghost"}]}
    first, _ = _post(trigger_client, context_trigger, body, HTTP_IDEMPOTENCY_KEY="k-1")
    again, _ = _post(trigger_client, context_trigger, body, HTTP_IDEMPOTENCY_KEY="k-1")
    assert first.status_code == again.status_code == 202
    assert (
        first.json()
        == again.json()
        == {
            "dispatch": None,
            "accepted": 0,
            "problems": [
                {
                    "index": 0,
                    "external_id": "ghost",
                    "code": "unknown_profile",
                    "detail": "No profile has this external id.",
                },
                {"index": 1, "external_id": "ghost", "code": "duplicate", "detail": "Listed twice: sent once."},
            ],
            "deliveries": [],
        }
    )
    assert again["Idempotent-Replayed"] == "true"
    assert Delivery.objects.count() == rows


@pytest.mark.django_db(transaction=True)
def test_an_idempotent_call_stores_its_answer_with_its_rows(context_trigger, trigger_client, cast):
    _post(trigger_client, context_trigger, {"recipients": [{"external_id": "zoe"}]})
    first, queries = _post(trigger_client, context_trigger, HTTP_IDEMPOTENCY_KEY="k-2")
    again, _ = _post(trigger_client, context_trigger, HTTP_IDEMPOTENCY_KEY="k-2")
    assert not any("FROM audiences_profile p WHERE p.external_id" in sql for sql in queries)
    assert first.status_code == again.status_code == 202 and again["Idempotent-Replayed"] == "true"
    assert first.json() == again.json() and len(first.json()["deliveries"]) == 5


@pytest.mark.django_db(transaction=True)
def test_a_context_too_large_is_refused_for_a_known_profile_and_reported_unknown_for_another(
    context_trigger, trigger_client, cast
):
    _post(trigger_client, context_trigger, {"recipients": [{"external_id": "zoe"}]})
    rows = Delivery.objects.count()
    huge = {"order_id": "x" * 5000}
    refused, _ = _post(trigger_client, context_trigger, {"recipients": [{"external_id": "zoe", "context": huge}]})
    assert refused.status_code == 400
    assert refused.json()["errors"][0]["field"] == "recipients.0.context"
    assert "over the 4096-byte limit" in refused.json()["errors"][0]["detail"]
    unknown, _ = _post(trigger_client, context_trigger, {"recipients": [{"external_id": "ghost", "context": huge}]})
    assert unknown.status_code == 202
    assert [p["code"] for p in unknown.json()["problems"]] == ["unknown_profile"]
    assert Delivery.objects.count() == rows


@pytest.mark.django_db(transaction=True)
def test_a_stream_closed_by_hand_is_followed_by_a_new_one(context_trigger, trigger_client, cast, manager_alice):
    from delivery.services.dispatches import dispatch_stop

    first, _ = _post(trigger_client, context_trigger, {"recipients": [{"external_id": "zoe"}]})
    dispatch_stop(dispatch_id=first.json()["dispatch"], by=manager_alice)
    second, _ = _post(trigger_client, context_trigger, {"recipients": [{"external_id": "zoe"}]})
    assert second.status_code == 202 and second.json()["accepted"] == 1
    assert second.json()["dispatch"] != first.json()["dispatch"]
    assert Dispatch.objects.get(pk=second.json()["dispatch"]).status == "sending"


@pytest.mark.django_db(transaction=True)
def test_the_frequency_cap_applies_and_a_capped_profile_is_not_reported_unreachable(
    context_trigger, trigger_client, cast, pushsim_app, manager_alice, approver_bob
):
    _marketing(context_trigger, manager_alice, approver_bob)
    DeliveryRules.objects.create(app=pushsim_app, frequency_cap=1, frequency_window_hours=24)
    one = {"recipients": [{"external_id": "zoe"}]}
    assert _post(trigger_client, context_trigger, one)[0].json()["accepted"] == 1  # on its way: counts
    capped, queries = _post(trigger_client, context_trigger, one)
    assert not any("FROM audiences_profile p WHERE p.external_id" in sql for sql in queries)
    assert capped.json()["accepted"] == 0 and capped.json()["problems"] == []
    assert [(d["status"], d["reason"]) for d in capped.json()["deliveries"]] == [("skipped", "frequency_cap")]


@pytest.mark.django_db(transaction=True)
def test_quiet_hours_of_a_marketing_campaign_need_the_profiles_time_zone_first(
    context_trigger, trigger_client, cast, pushsim_app, manager_alice, approver_bob
):
    import datetime as dt

    _marketing(context_trigger, manager_alice, approver_bob)
    now = dt.datetime.now(dt.UTC)
    start, end = (now - dt.timedelta(hours=1)).time(), (now + dt.timedelta(hours=1)).time()
    DeliveryRules.objects.create(app=pushsim_app, quiet_start=start, quiet_end=end, default_timezone="UTC")
    one = {"recipients": [{"external_id": "zoe"}]}
    _post(trigger_client, context_trigger, one)  # the stream is open
    held, queries = _post(trigger_client, context_trigger, one)
    assert any("FROM audiences_profile p WHERE p.external_id" in sql for sql in queries)
    row = Delivery.objects.get(pk=held.json()["deliveries"][0]["id"])
    assert row.status == "queued" and row.next_attempt_at > now  # held until the quiet hours end


def test_which_templates_read_the_profile():
    assert not template_reads_profile("Plain text")
    assert not template_reads_profile("Order {{ context.order_id | default: '?' }}")
    assert template_reads_profile("Hi {{ profile.attributes.first_name }}")
    assert template_reads_profile("{% if profile.locale == 'fr' %}Salut{% endif %}")
    assert template_reads_profile("{{ broken")  # unreadable: assume it does
    assert not spec_reads_profile({"title": "Order {{ context.id }}", "body": "On its way", "data": {"k": "v"}})
    assert spec_reads_profile({"title": "Hi", "body": "On its way", "data": {"who": "{{ profile.external_id }}"}})


@pytest.mark.django_db(transaction=True)
def test_the_connection_plans_the_one_statement_once_not_per_call(context_trigger, trigger_client, cast):
    """As the lookup's and the append's (tests/campaigns/test_trigger_stream.py): PostgreSQL runs
    the statement from the plan the connection keeps, instead of planning every call again."""
    for n in range(12):
        response, _ = _post(trigger_client, context_trigger, {"recipients": [{"external_id": "zoe"}]})
        assert response.status_code == 202 and response.json()["accepted"] == 1, n
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements")
        statements = cursor.fetchall()
    named = [(generic, custom) for sql, generic, custom in statements if "ON p.external_id = r.external_id" in sql]
    assert len(named) == 1 and named[0][0] + named[0][1] == 11, named
    assert named[0][0] > 0 and named[0][1] <= 5, named
