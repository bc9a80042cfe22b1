"""A trigger to an open stream in one statement: when nothing is decided per profile before its
rows are made (content that fits whatever the profile, or whose growth the statement bounds from
the attributes it shows; variants it assigns; no quiet hours), the append looks the profiles up
itself, and the answer is read off the rows it made. It must answer exactly as the lookup
followed by the append does."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from audiences.models import Profile
from campaigns.services.triggers import _payload_problem
from delivery.models import Delivery, DeliveryRules, Dispatch
from delivery.payloads import APNS_LIMIT, payload_sizes, profile_bound_budget, spec_profile_bound, spec_reads
from delivery.personalization import template_attribute_outputs, template_reads, template_reads_profile
from tests.campaigns.conftest import _live_trigger
from tests.factories import DeviceFactory, ProfileFactory

LOOKUP = "FROM audiences_profile p WHERE p.external_id"

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
@pytest.mark.parametrize("content", ["context_trigger", "live_trigger"])
def test_a_call_to_an_open_stream_is_one_statement_and_answers_as_the_lookup_and_the_append_do(
    content, request, trigger_client, cast
):
    """Content rendered from the context alone, and content showing a profile attribute (Hi
    {{ profile.attributes.first_name }}), whose size the statement bounds from the attribute."""
    campaign = request.getfixturevalue(content)
    first, first_queries = _post(trigger_client, campaign)  # opens the stream: the lookup, then the append
    second, second_queries = _post(trigger_client, campaign)
    assert first.status_code == second.status_code == 202
    assert any(LOOKUP in sql for sql in first_queries)
    assert len(second_queries) == 1 and "INSERT INTO delivery_delivery" in second_queries[0], second_queries
    assert _without_ids(second.json()) == _without_ids(first.json())
    answer = second.json()
    assert [(p["index"], p["code"]) for p in answer["problems"]] == [
        (1, "unknown_profile"),
        (3, "no_device"),
        (4, "duplicate"),
        (5, "not_opted_in"),
    ]
    assert [(d["external_id"], d["status"], d["reason"]) for d in answer["deliveries"]] == [
        ("zoe", "queued", ""),
        ("max", "queued", ""),
        ("max", "queued", ""),
        ("no-phone", "skipped", "no_device"),
        ("mute", "skipped", "not_opted_in"),
    ]
    assert answer["queued"] == 3
    # The rows are the same too: their devices aside, which are the same ones.
    assert [row[:1] + row[2:] for row in _rows(second.json())] == [row[:1] + row[2:] for row in _rows(first.json())]
    assert _rows(answer)[0][4] == {"order_id": "A-1"}  # its own context over the shared one


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "body",
    ["Hi {{ profile.attributes.first_name | upcase }}", "Hi {{ profile.external_id }}", "{{ profile.attributes.a.b }}"],
)
def test_content_reading_the_profile_otherwise_is_still_looked_up_first(
    body, trigger_client, cast, pushsim_app, manager_alice, approver_bob
):
    campaign = _live_trigger(pushsim_app, manager_alice, approver_bob, title="Order", body=body)
    _post(trigger_client, campaign)
    second, queries = _post(trigger_client, campaign)
    assert second.status_code == 202
    assert len(queries) == 2 and LOOKUP in queries[0], queries


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("personalized", [True, False])
def test_variants_and_the_holdout_are_assigned_by_the_statement_as_the_lookup_assigns_them(
    personalized, trigger_client, pushsim_app, manager_alice, approver_bob, monkeypatch
):
    from campaigns.services.lifecycle import campaign_approve, campaign_submit
    from campaigns.services.variants import VariantInput, campaign_variants_set
    from delivery.variants import variant_for
    from tests.factories import PushContentFactory

    greeting = "Hi {{ profile.attributes.first_name }}" if personalized else "Hi"
    campaign = _live_trigger(pushsim_app, manager_alice, approver_bob, title="Order A", body=greeting)
    b = PushContentFactory(app=pushsim_app, title="Order B", body=f"{greeting}, it is on its way")
    campaign_variants_set(
        campaign_id=campaign.pk,
        by=manager_alice,
        variants=[VariantInput(content_id=campaign.content_id, share=45), VariantInput(content_id=b.pk, share=35)],
        holdout_share=20,
    )
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_approve(campaign_id=campaign.pk, by=approver_bob)
    for n in range(40):
        profile = ProfileFactory(external_id=f"v-{n}", attributes={"first_name": f"N{n}"})
        if n % 5:  # every fifth has no device, in the holdout or not
            DeviceFactory(profile=profile, app=pushsim_app, push_enabled=n % 7 != 0)
    calls = [
        {"recipients": [{"external_id": f"v-{n}"} for n in range(k, k + 20)] + [{"external_id": "nobody"}]}
        for k in (0, 20)
    ]
    first, first_queries = _post(trigger_client, campaign, calls[0])  # opens the stream: the lookup first
    assert any(LOOKUP in sql for sql in first_queries)
    second, second_queries = _post(trigger_client, campaign, calls[1])
    assert first.status_code == second.status_code == 202, second.json()
    assert len(second_queries) == 1, second_queries
    # The same call by the two statements (the lookup forced) answers and writes the same.
    second_ids = [r["external_id"] for r in calls[1]["recipients"]]
    Delivery.objects.filter(dispatch_id=second.json()["dispatch"], profile__external_id__in=second_ids).delete()
    monkeypatch.setattr("campaigns.services.triggers._appends_by_external_id", lambda entry: False)
    looked_up, queries = _post(trigger_client, campaign, calls[1])
    assert any(LOOKUP in sql for sql in queries)
    assert _without_ids(looked_up.json()) == _without_ids(second.json())
    rows = Delivery.objects.filter(dispatch_id=second.json()["dispatch"]).select_related("profile", "device")
    assert {r.variant for r in rows} == {0, 1, 2}
    frozen = Dispatch.objects.get(pk=second.json()["dispatch"]).variants
    for row in rows:
        assert row.variant == variant_for(row.profile_id, salt=campaign.pk, variants=frozen, holdout_share=20)
        if row.variant == 0:
            # The holdout takes the phones a push could reach; the others keep their own reason.
            reason = "no_device" if row.device is None else "holdout" if row.device.push_enabled else "not_opted_in"
            assert (row.status, row.reason) == ("skipped", reason)
    held = {r.profile.external_id for r in rows if r.reason == "holdout"}
    unreachable = ("no_device", "not_opted_in")
    reported = {p["external_id"] for p in second.json()["problems"] if p["code"] in unreachable}
    assert reported == {r.profile.external_id for r in rows if r.reason in unreachable} & set(second_ids)
    assert not reported & held  # the holdout is not reported unreachable


@pytest.mark.django_db(transaction=True)
def test_content_not_reading_the_context_is_not_rendered_per_call(
    trigger_client, cast, pushsim_app, manager_alice, approver_bob, monkeypatch
):
    campaign = _live_trigger(
        pushsim_app, manager_alice, approver_bob, title="Shipped", body="Hi {{ profile.attributes.first_name }}"
    )
    _post(trigger_client, campaign)  # opens the stream, and reckons the room once

    def rendered(*args, **kwargs):
        raise AssertionError("rendered per call")

    monkeypatch.setattr("delivery.payloads.profile_bound_budget", rendered)
    answer, queries = _post(trigger_client, campaign)
    assert answer.status_code == 202 and len(queries) == 1, queries


def _first_name(external_id: str, value) -> None:
    Profile.objects.filter(external_id=external_id).update(attributes={"first_name": value})


@pytest.mark.django_db(transaction=True)
def test_attributes_that_might_not_fit_are_rendered_one_by_one_and_nothing_is_written_twice(
    live_trigger, trigger_client, cast
):
    _post(trigger_client, live_trigger, {"recipients": [{"external_id": "zoe"}]})  # the stream is open
    rows = Delivery.objects.count()
    both = {"recipients": [{"external_id": "max"}, {"external_id": "zoe"}], "context": {"order_id": "A-1"}}
    _first_name("zoe", "x" * 700)  # fits (about 800 bytes), but six times 700 bytes might not
    fitting, queries = _post(trigger_client, live_trigger, both)
    assert fitting.status_code == 202, fitting.json()
    assert len(queries) == 3 and LOOKUP in queries[1], queries  # the statement wrote nothing, then the lookup
    assert [(d["external_id"], d["status"]) for d in fitting.json()["deliveries"]] == [
        ("max", "queued"),
        ("max", "queued"),
        ("zoe", "queued"),
    ]
    assert Delivery.objects.count() == rows + 3
    _first_name("zoe", "x" * 5000)
    refused, _ = _post(trigger_client, live_trigger, both)
    assert refused.status_code == 400
    assert refused.json()["errors"][0]["field"] == "recipients[1]"  # her profile, whatever the context
    assert "over the 4096-byte limit" in refused.json()["errors"][0]["detail"]
    assert Delivery.objects.count() == rows + 3
    _first_name("zoe", "Zoé")
    assert len(_post(trigger_client, live_trigger, both)[1]) == 1  # one statement again


@pytest.mark.django_db(transaction=True)
def test_a_profile_whose_message_the_statement_lets_through_always_fits(live_trigger, trigger_client, cast):
    """Hostile values near the limit: whenever the statement alone appends, the message rendered
    for the profile fits; and the bound turns away no more than it must to stay safe."""
    _post(trigger_client, live_trigger, {"recipients": [{"external_id": "zoe"}]})
    spec = Dispatch.objects.filter(kind="api_trigger").get().content_spec
    values = []
    for size in (10, 300, 560, 640, 700, 2000, 3900, 4200):
        values += ["\x01" * size, "\U0001f600" * (size // 4), "é" * (size // 2), "x" * size, '\\"' * (size // 2)]
    values += [10**300, 1e-300, True, None, "", [1.5] * 300, {"k": "\x1f" * 600}, ["a"] * 1000]
    values += [{"k": "\U000e0001" * 300}]  # shown as Python writes it: ten characters each
    paths = {"alone": 0, "rendered and sent": 0, "refused": 0}
    for value in values:
        _first_name("zoe", value)
        response, queries = _post(trigger_client, live_trigger, {"recipients": [{"external_id": "zoe"}]})
        zoe = {"locale": "", "attributes": {"first_name": value}}
        problem = _payload_problem(spec, profile=zoe, context={})
        assert response.status_code == (400 if problem else 202), (repr(value)[:40], response.json())
        if len(queries) == 1:
            assert problem is None, repr(value)[:40]
        paths["alone" if len(queries) == 1 else "refused" if problem else "rendered and sent"] += 1
    assert paths == {"alone": 25, "rendered and sent": 14, "refused": 10}, paths


def test_the_bound_counts_each_place_an_attribute_shows_and_every_locale():
    spec = {"title": "{{ profile.attributes.name }}", "body": "Hi {{ profile.attributes.name | default: 'you' }}"}
    bound = spec_profile_bound(spec)
    assert bound.times == {"name": 12} and bound.slack == 2 * 6 * 3 and bound.locales == ("",)
    assert not bound.reads_context  # its room is the same for every call: reckoned once
    image = spec_profile_bound({"title": "T", "body": "B", "image_url": "https://x/{{ profile.attributes.pic }}"})
    assert image.times == {"pic": 6}  # once in each payload
    long = {**spec, "variants": {"de": {"body": "Hallo " + "x" * 3000 + " {{ profile.attributes.name }}"}}}
    plain = profile_bound_budget(spec, bound, context={})
    german = profile_bound_budget(long, spec_profile_bound(long), context={})
    assert german < plain - 3000  # the longest locale decides
    one = payload_sizes(spec, profile={"attributes": {"name": "x"}}, context={})
    assert plain == min(APNS_LIMIT - one[0], 4096 - one[1]) - bound.slack
    assert spec_profile_bound({"title": "{{ profile.locale }}", "body": "B"}) is None
    assert spec_profile_bound({"title": "{{ profile.attributes.name | upcase }}", "body": "B"}) is None
    assert spec_profile_bound({"title": "{{ context.order }}", "body": "B"}).times == {}
    assert spec_profile_bound({"title": "{% if context.x %}x{% endif %}", "body": "B"}).reads_context
    assert template_attribute_outputs("Plain") == []
    assert template_attribute_outputs("{% if context.x %}{{ context.x }}{% endif %}") == []
    assert template_attribute_outputs('{{ profile.attributes.a | default: "b" }} {{ context.c }}') == [("a", "b")]
    assert template_attribute_outputs("{% if profile.attributes.a %}x{% endif %}") is None


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
            "queued": 0,
            "accepted": 0,  # the same count under its first name, for integrations that read it
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
    assert not any(LOOKUP in sql for sql in queries)
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
    assert refused.json()["errors"][0]["field"] == "recipients[0].context"
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
    assert second.status_code == 202 and second.json()["queued"] == 1
    assert second.json()["dispatch"] != first.json()["dispatch"]
    assert Dispatch.objects.get(pk=second.json()["dispatch"]).status == "sending"


@pytest.mark.django_db(transaction=True)
def test_the_frequency_cap_applies_and_a_capped_profile_is_not_reported_unreachable(
    context_trigger, trigger_client, cast, pushsim_app, manager_alice, approver_bob
):
    _marketing(context_trigger, manager_alice, approver_bob)
    DeliveryRules.objects.create(app=pushsim_app, frequency_cap=1, frequency_window_hours=24)
    one = {"recipients": [{"external_id": "zoe"}]}
    assert _post(trigger_client, context_trigger, one)[0].json()["queued"] == 1  # on its way: counts
    capped, queries = _post(trigger_client, context_trigger, one)
    assert not any(LOOKUP in sql for sql in queries)
    assert capped.json()["queued"] == 0 and capped.json()["problems"] == []
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
    assert any(LOOKUP in sql for sql in queries)
    row = Delivery.objects.get(pk=held.json()["deliveries"][0]["id"])
    assert row.status == "queued" and row.next_attempt_at > now  # held until the quiet hours end
    assert held.json()["problems"] == []
    # Quiet hours that discard skip the row: a rule held it back, the recipient is reachable.
    rules = DeliveryRules.objects.get(app=pushsim_app)
    rules.quiet_mode = DeliveryRules.QuietMode.DISCARD
    rules.save()
    discarded, _ = _post(trigger_client, context_trigger, one)
    assert [(d["status"], d["reason"]) for d in discarded.json()["deliveries"]] == [("skipped", "quiet_hours")]
    assert discarded.json()["problems"] == [] and discarded.json()["queued"] == 0


def test_which_templates_read_the_profile():
    assert not template_reads_profile("Plain text")
    assert not template_reads_profile("Order {{ context.order_id | default: '?' }}")
    assert template_reads_profile("Hi {{ profile.attributes.first_name }}")
    assert template_reads_profile("{% if profile.locale == 'fr' %}Salut{% endif %}")
    assert template_reads_profile("{{ broken")  # unreadable: assume it does
    assert not spec_reads({"title": "Order {{ context.id }}", "body": "On its way", "data": {"k": "v"}}, "profile")
    assert spec_reads({"title": "Hi", "body": "On its way", "data": {"who": "{{ profile.external_id }}"}}, "profile")
    # The call's context, read the same way (the room a content leaves is reckoned once without it).
    assert template_reads("Order {{ context.order_id }}", "context")
    assert not template_reads("Hi {{ profile.attributes.first_name }}", "context")
    assert template_reads("{{ broken", "context")
    assert spec_reads({"title": "Order {{ context.id }}", "body": "On its way", "data": {"k": "v"}}, "context")
    assert not spec_reads({"title": "Hi", "body": "{{ profile.attributes.name }}", "data": {}}, "context")


@pytest.mark.django_db(transaction=True)
def test_the_connection_plans_the_one_statement_once_not_per_call(context_trigger, trigger_client, cast):
    """As the lookup's and the append's (tests/campaigns/test_trigger_stream.py): PostgreSQL runs
    the statement from the plan the connection keeps, instead of planning every call again."""
    for n in range(12):
        response, _ = _post(trigger_client, context_trigger, {"recipients": [{"external_id": "zoe"}]})
        assert response.status_code == 202 and response.json()["queued"] == 1, n
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements")
        statements = cursor.fetchall()
    named = [(generic, custom) for sql, generic, custom in statements if "ON p.external_id = r.external_id" in sql]
    assert len(named) == 1 and named[0][0] + named[0][1] == 11, named
    assert named[0][0] > 0 and named[0][1] <= 5, named
