"""POST /api/v1/campaigns/{id}/trigger/: recipients, contexts, idempotency, rate limit, bad input."""

import pytest

from accounts.services import access_grant
from campaigns.models import TriggerRequest
from campaigns.services.lifecycle import campaign_create
from delivery.models import Delivery, Dispatch
from tests.factories import DeviceFactory, ProfileFactory, PushContentFactory, SegmentFactory


def _url(campaign):
    return f"/api/v1/campaigns/{campaign.pk}/trigger/"


def test_trigger_sends_to_each_recipient_with_their_context(
    live_trigger, trigger_client, pushsim, pushsim_app, django_capture_on_commit_callbacks
):
    zoe = ProfileFactory(external_id="zoe", attributes={"first_name": "Zoé"})
    max_ = ProfileFactory(external_id="max")
    zoe_phone = DeviceFactory(profile=zoe, app=pushsim_app, platform="ios")
    max_phone = DeviceFactory(profile=max_, app=pushsim_app, platform="android")
    body = {
        "recipients": [{"external_id": "zoe", "context": {"order_id": "A-1"}}, {"external_id": "max"}],
        "context": {"order_id": "shared"},
    }
    with django_capture_on_commit_callbacks(execute=True):
        response = trigger_client.post(_url(live_trigger), body, format="json")
    assert response.status_code == 202, response.json()
    answer = response.json()
    assert answer["queued"] == 2 and answer["problems"] == []
    assert answer["accepted"] == answer["queued"]  # its first name, kept for the integrations that read it
    dispatch = Dispatch.objects.get(pk=answer["dispatch"])
    assert dispatch.kind == "api_trigger" and dispatch.source_id == live_trigger.pk
    assert set(Delivery.objects.filter(dispatch=dispatch).values_list("status", flat=True)) == {"accepted"}
    received = {r["token"]: r for r in pushsim.state.recent(limit=10)}
    assert received[zoe_phone.token]["title"] == "Order A-1"
    assert received[zoe_phone.token]["body"] == "Hi Zoé"
    assert received[max_phone.token]["title"] == "Order shared"


def test_unknown_profiles_and_unreachable_ones_are_reported(live_trigger, trigger_client, pushsim_app):
    """Each unreachable recipient's problem says what its rows say: no device, or none opted in."""
    ProfileFactory(external_id="no-phone")
    mute = ProfileFactory(external_id="mute")
    DeviceFactory(profile=mute, app=pushsim_app, push_enabled=False)
    DeviceFactory(profile=mute, app=pushsim_app, push_enabled=False)
    half = ProfileFactory(external_id="half")  # one phone muted, one not: reached
    DeviceFactory(profile=half, app=pushsim_app, push_enabled=False)
    DeviceFactory(profile=half, app=pushsim_app)
    names = ["ghost", "no-phone", "ghost", "mute", "half", "mute"]
    response = trigger_client.post(
        _url(live_trigger), {"recipients": [{"external_id": name} for name in names]}, format="json"
    )
    assert response.status_code == 202
    answer = response.json()
    codes = [(p["index"], p["code"]) for p in answer["problems"]]
    assert codes == [(0, "unknown_profile"), (1, "no_device"), (2, "duplicate"), (3, "not_opted_in"), (5, "duplicate")]
    assert sorted((d["external_id"], d["status"], d["reason"]) for d in answer["deliveries"]) == [
        ("half", "queued", ""),
        ("half", "skipped", "not_opted_in"),
        ("mute", "skipped", "not_opted_in"),
        ("mute", "skipped", "not_opted_in"),
        ("no-phone", "skipped", "no_device"),
    ]
    assert answer["queued"] == 1


def test_same_key_and_body_replays_the_first_answer(live_trigger, trigger_client, pushsim_app):
    ProfileFactory(external_id="zoe")
    body = {"recipients": [{"external_id": "zoe"}]}
    first = trigger_client.post(_url(live_trigger), body, format="json", HTTP_IDEMPOTENCY_KEY="order-1")
    again = trigger_client.post(_url(live_trigger), body, format="json", HTTP_IDEMPOTENCY_KEY="order-1")
    assert first.status_code == again.status_code == 202
    assert first.json() == again.json()
    assert again["Idempotent-Replayed"] == "true"
    assert Dispatch.objects.filter(kind="api_trigger").count() == 1


def test_same_key_with_another_body_is_422(live_trigger, trigger_client):
    ProfileFactory(external_id="zoe")
    ProfileFactory(external_id="max")
    trigger_client.post(
        _url(live_trigger), {"recipients": [{"external_id": "zoe"}]}, format="json", HTTP_IDEMPOTENCY_KEY="k"
    )
    other = trigger_client.post(
        _url(live_trigger), {"recipients": [{"external_id": "max"}]}, format="json", HTTP_IDEMPOTENCY_KEY="k"
    )
    assert other.status_code == 422
    assert other.json()["code"] == "idempotency_key_reused"
    assert Dispatch.objects.count() == 1


def test_same_key_still_running_is_409(live_trigger, trigger_client, manager_alice):
    import hashlib
    import json

    body = {"recipients": [{"external_id": "zoe"}]}
    key = manager_alice.api_keys.get()
    TriggerRequest.objects.create(
        api_key=key,
        user=key.user,
        idempotency_key="busy",
        campaign=live_trigger,
        body_hash=hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest(),
    )
    response = trigger_client.post(_url(live_trigger), body, format="json", HTTP_IDEMPOTENCY_KEY="busy")
    assert response.status_code == 409
    assert response.json()["code"] == "idempotency_in_progress"
    assert not Dispatch.objects.exists()


def test_a_retry_under_the_user_s_rotated_key_replays_the_first_answer(
    live_trigger, trigger_client, manager_alice, api_key_for
):
    """An integrator rotating keys (a new key for the same user, the old one revoked) retries the
    call in flight at the switch with its Idempotency-Key: the user's keys share the keys, nothing
    is sent twice, and another body under the new key is refused as under the old one."""
    from accounts.services import api_key_revoke

    ProfileFactory(external_id="zoe")
    ProfileFactory(external_id="max")
    body = {"recipients": [{"external_id": "zoe"}]}
    first = trigger_client.post(_url(live_trigger), body, format="json", HTTP_IDEMPOTENCY_KEY="order-1")
    assert first.status_code == 202
    rows = Delivery.objects.count()
    rotated = api_key_for(manager_alice, scopes=["trigger", "read"])
    api_key_revoke(key_id=manager_alice.api_keys.order_by("created_at", "pk").first().pk, by=manager_alice)
    again = rotated.post(_url(live_trigger), body, format="json", HTTP_IDEMPOTENCY_KEY="order-1")
    assert again.status_code == 202 and again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true"
    other = rotated.post(
        _url(live_trigger), {"recipients": [{"external_id": "max"}]}, format="json", HTTP_IDEMPOTENCY_KEY="order-1"
    )
    assert other.status_code == 422 and other.json()["code"] == "idempotency_key_reused"
    assert Delivery.objects.count() == rows and TriggerRequest.objects.count() == 1


def test_another_user_s_call_with_the_same_key_runs_apart(live_trigger, trigger_client, pushsim_app, api_key_for):
    from tests.factories import UserFactory

    colleague = UserFactory(username="manager_colleague", role="Manager")
    access_grant(obj=pushsim_app, to=colleague, by=None)
    ProfileFactory(external_id="zoe")
    body = {"recipients": [{"external_id": "zoe"}]}
    first = trigger_client.post(_url(live_trigger), body, format="json", HTTP_IDEMPOTENCY_KEY="order-1")
    theirs = api_key_for(colleague, scopes=["trigger"]).post(
        _url(live_trigger), body, format="json", HTTP_IDEMPOTENCY_KEY="order-1"
    )
    assert first.status_code == theirs.status_code == 202
    assert not theirs.has_header("Idempotent-Replayed")
    assert TriggerRequest.objects.count() == 2


@pytest.mark.parametrize("key", ["a\x00b", "a\x01b", "a\x7fb", "a\tb", "k" * 201])
def test_an_idempotency_key_with_a_control_character_or_too_long_is_400_naming_the_header(
    live_trigger, trigger_client, key
):
    ProfileFactory(external_id="zoe")
    body = {"recipients": [{"external_id": "zoe"}]}
    response = trigger_client.post(_url(live_trigger), body, format="json", HTTP_IDEMPOTENCY_KEY=key)
    assert response.status_code == 400, response.content[:300]
    assert [error["field"] for error in response.json()["errors"]] == ["Idempotency-Key"]
    assert not TriggerRequest.objects.exists() and not Dispatch.objects.exists()


@pytest.mark.parametrize("key", ["", "   "])
def test_an_empty_idempotency_key_is_400_naming_the_header(live_trigger, trigger_client, key):
    """A header sent empty (a variable left unset) is no key: the call, run as one without the
    header, would send again on a retry."""
    ProfileFactory(external_id="zoe")
    body = {"recipients": [{"external_id": "zoe"}]}
    response = trigger_client.post(_url(live_trigger), body, format="json", HTTP_IDEMPOTENCY_KEY=key)
    assert response.status_code == 400, response.content[:300]
    assert response.json()["errors"] == [
        {
            "field": "Idempotency-Key",
            "code": "invalid",
            "detail": "Empty: send printable text, or leave the header out.",
        }
    ]
    assert not TriggerRequest.objects.exists() and not Dispatch.objects.exists()


def test_an_idempotency_key_of_printable_text_beyond_ascii_is_taken(live_trigger, trigger_client):
    ProfileFactory(external_id="zoe")
    body = {"recipients": [{"external_id": "zoe"}]}
    response = trigger_client.post(_url(live_trigger), body, format="json", HTTP_IDEMPOTENCY_KEY=" commande-é ")
    assert response.status_code == 202, response.content[:300]
    assert TriggerRequest.objects.get().idempotency_key == "commande-é"


def test_bad_json_is_400(live_trigger, trigger_client):
    response = trigger_client.post(_url(live_trigger), "{not json", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["code"] == "parse_error"


def test_more_than_1000_recipients_is_refused(live_trigger, trigger_client):
    response = trigger_client.post(
        _url(live_trigger), {"recipients": [{"external_id": f"u{i}"} for i in range(1001)]}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "recipients"
    assert not Dispatch.objects.exists()


def test_context_too_large_for_the_payload_is_refused_naming_it(live_trigger, trigger_client, pushsim_app):
    ProfileFactory(external_id="zoe")
    response = trigger_client.post(
        _url(live_trigger), {"recipients": [{"external_id": "zoe", "context": {"order_id": "x" * 5000}}]}, format="json"
    )
    assert response.status_code == 400
    error = response.json()["errors"][0]
    assert error["field"] == "recipients[0].context"
    assert "over the 4096-byte limit" in error["detail"]
    assert not Dispatch.objects.exists()


@pytest.mark.parametrize("campaign", ["live_trigger", "context_trigger", "lookup_trigger"])
def test_a_shared_context_too_large_for_the_payload_is_refused_naming_it(campaign, trigger_client, request):
    """The shared context was named as each recipient's own (``recipients[0].context``), which they did not send."""
    campaign = request.getfixturevalue(campaign)
    ProfileFactory(external_id="zoe")
    ProfileFactory(external_id="yan")
    response = trigger_client.post(
        _url(campaign),
        {"recipients": [{"external_id": "zoe"}, {"external_id": "yan"}], "context": {"order_id": "x" * 5000}},
        format="json",
    )
    assert response.status_code == 400, response.content[:300]
    (error,) = response.json()["errors"]
    assert error["field"] == "context"
    assert "over the 4096-byte limit" in error["detail"]
    assert not Dispatch.objects.exists()


def test_a_context_value_that_breaks_a_filter_is_refused_naming_it(
    pushsim_app, manager_alice, approver_bob, trigger_client
):
    from tests.campaigns.conftest import _live_trigger

    campaign = _live_trigger(
        pushsim_app, manager_alice, approver_bob, title="Total {{ context.total | round }}", body="Thanks"
    )
    ProfileFactory(external_id="zoe")
    response = trigger_client.post(
        _url(campaign), {"recipients": [{"external_id": "zoe", "context": {"total": "nan"}}]}, format="json"
    )
    assert response.status_code == 400
    error = response.json()["errors"][0]
    assert error["field"] == "recipients[0].context"
    assert "a filter failed on a value (ValueError)" in error["detail"]
    assert not Dispatch.objects.exists()


def test_a_profile_too_large_for_the_payload_is_refused_naming_the_recipient_not_the_context(
    live_trigger, trigger_client, pushsim_app
):
    ProfileFactory(external_id="zoe", attributes={"first_name": "x" * 5000})
    response = trigger_client.post(
        _url(live_trigger), {"recipients": [{"external_id": "zoe", "context": {"order_id": "A-1"}}]}, format="json"
    )
    assert response.status_code == 400
    error = response.json()["errors"][0]
    assert error["field"] == "recipients[0]"
    assert error["detail"].startswith("With this recipient's profile the iOS payload is ")
    assert not Dispatch.objects.exists()


def test_unknown_campaign_is_404(trigger_client, db):
    response = trigger_client.post(
        "/api/v1/campaigns/999999/trigger/", {"recipients": [{"external_id": "a"}]}, format="json"
    )
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


def test_draft_campaign_cannot_be_triggered(pushsim_app, manager_alice, trigger_client):
    access_grant(obj=pushsim_app, to=manager_alice, by=None)
    content = PushContentFactory(app=pushsim_app)
    draft = campaign_create(by=manager_alice, name="Draft", app=pushsim_app, kind="api_triggered", content=content)
    response = trigger_client.post(_url(draft), {"recipients": [{"external_id": "a"}]}, format="json")
    assert response.status_code == 409
    assert response.json()["code"] == "campaign_not_live"


def test_scheduled_campaign_cannot_be_triggered(pushsim_app, manager_alice, trigger_client):
    access_grant(obj=pushsim_app, to=manager_alice, by=None)
    segment = SegmentFactory(created_by=manager_alice)
    access_grant(obj=segment, to=manager_alice, by=None)
    campaign = campaign_create(
        by=manager_alice, name="Weekly", app=pushsim_app, segment=segment, content=PushContentFactory(app=pushsim_app)
    )
    response = trigger_client.post(_url(campaign), {"recipients": [{"external_id": "a"}]}, format="json")
    assert response.status_code == 409
    assert response.json()["code"] == "not_api_triggered"


def test_key_without_trigger_scope_is_403(live_trigger, api_key_for, manager_alice):
    response = api_key_for(manager_alice, scopes=["read"]).post(
        _url(live_trigger), {"recipients": [{"external_id": "a"}]}, format="json"
    )
    assert response.status_code == 403
    assert response.json()["code"] == "insufficient_scope"


def test_manager_without_access_to_the_app_gets_404(live_trigger, api_key_for, manager_mallory):
    response = api_key_for(manager_mallory, scopes=["trigger"]).post(
        _url(live_trigger), {"recipients": [{"external_id": "a"}]}, format="json"
    )
    assert response.status_code == 404


def test_rate_limit_per_key_answers_429_with_retry_after(live_trigger, trigger_client, settings):
    settings.PUSHDESK_TRIGGER_RATE_PER_KEY = 1
    statuses = [
        trigger_client.post(_url(live_trigger), {"recipients": [{"external_id": "a"}]}, format="json") for _ in range(3)
    ]
    limited = [r for r in statuses if r.status_code == 429]
    assert limited, [r.status_code for r in statuses]
    assert int(limited[0]["Retry-After"]) >= 1
    assert limited[0].json()["code"] == "throttled"
    # The body says when too, as a number: a client that does not read headers had only the words.
    assert limited[0].json()["retry_after"] == int(limited[0]["Retry-After"])


def test_a_trigger_rate_of_0_limits_nothing(live_trigger, trigger_client, settings):
    """0 is no limit, as for the ingest calls' rate: the settings accept it, and the limiter divided by it."""
    settings.PUSHDESK_TRIGGER_RATE_PER_KEY = 0
    statuses = [
        trigger_client.post(_url(live_trigger), {"recipients": [{"external_id": "a"}]}, format="json").status_code
        for _ in range(3)
    ]
    assert statuses == [202, 202, 202]


def test_campaigns_are_listed_and_reported_through_the_api(live_trigger, trigger_client, api_key_for, manager_mallory):
    listing = trigger_client.get("/api/v1/campaigns/")
    assert [c["id"] for c in listing.json()["results"]] == [live_trigger.pk]
    assert trigger_client.get(f"/api/v1/campaigns/{live_trigger.pk}/").json()["status"] == "live"
    report = trigger_client.get(f"/api/v1/campaigns/{live_trigger.pk}/report/").json()
    assert report["targeted"] == 0 and report["open_rate"] is None
    assert api_key_for(manager_mallory, scopes=["read"]).get("/api/v1/campaigns/").json()["results"] == []


TRIGGER_BODIES = [
    # the usual bodies: the shortcut takes them
    {"recipients": [{"external_id": "a"}]},
    {"recipients": [{"external_id": "a", "context": {"order": "A-1"}}], "context": {"shop": "x"}},
    {"recipients": [{"external_id": " a "}, {"external_id": "b", "context": {}}], "extra": 1},
    {"recipients": [{"external_id": "a", "extra": 1, "context": {"n": {"m": [1, None, 2.5, True]}}}]},
    # the rest goes to the serializer
    {"recipients": [{"external_id": 7}]},  # a number: refused, not read as text
    {"recipients": [{"external_id": ""}]},
    {"recipients": [{"external_id": "   "}]},
    {"recipients": [{"external_id": "a" * 256}]},
    {"recipients": [{"external_id": "a\x00"}]},
    {"recipients": [{"external_id": "a\ud800"}]},
    {"recipients": [{"external_id": "a", "context": None}]},
    {"recipients": [{"external_id": "a", "context": [1]}]},
    {"recipients": [{"external_id": "a", "context": {"k": "v\x00"}}]},
    {"recipients": [{"external_id": "a", "context": {"k": float("inf")}}]},
    {"recipients": [{"external_id": "a", "context": {"k": "v" * 70000}}]},
    {"recipients": [{"external_id": "a"}], "context": None},
    {"recipients": [{"external_id": "a"}], "context": "x"},
    {"recipients": [{"external_id": "a"}], "context": {"k": "\udfff"}},
    {"recipients": [{}]},
    {"recipients": ["a"]},
    {"recipients": []},
    {"recipients": [{"external_id": str(i)} for i in range(1001)]},
    {"recipients": {"external_id": "a"}},
    {"context": {}},
    [],
    "x",
]


@pytest.mark.parametrize(
    ("recipients", "said"),
    [([], "Send at least one recipient."), ([{"external_id": "a"}] * 1001, "Send at most 1000 recipients a call.")],
)
def test_a_recipient_list_out_of_bounds_is_refused_in_words(live_trigger, trigger_client, recipients, said):
    """Not DRF's "Ensure this field has at least 1 elements."."""
    response = trigger_client.post(_url(live_trigger), {"recipients": recipients}, format="json")
    assert response.status_code == 400
    assert response.json()["errors"] == [
        {"field": "recipients", "code": "min_length" if not recipients else "max_length", "detail": said}
    ]


@pytest.mark.parametrize("body", TRIGGER_BODIES)
def test_the_trigger_shortcut_agrees_with_the_serializer(body):
    from campaigns.api import TriggerInSerializer, _trigger_validated
    from tests.shortcuts import assert_shortcut_agrees

    def plain(validated):
        return {"recipients": [dict(r) for r in validated["recipients"]], "context": validated["context"]}

    assert_shortcut_agrees(_trigger_validated, TriggerInSerializer, body, plain=plain)


def test_the_trigger_shortcut_takes_the_usual_bodies():
    from campaigns.api import _trigger_validated

    assert [_trigger_validated(body) is not None for body in TRIGGER_BODIES[:4]] == [True] * 4


def test_a_key_refused_while_the_campaign_was_not_live_runs_when_retried_once_it_is(
    make_campaign, manager_alice, approver_bob, trigger_client, pushsim_app
):
    """A refusal by the campaign's state is not the body's answer: the integrator's retry with the
    same key, once the campaign is live, sends (it replayed the 409 for good). Bad input stays
    replayed."""
    from campaigns.services.lifecycle import campaign_approve, campaign_submit
    from tests.factories import DeviceFactory

    campaign = make_campaign(kind="api_triggered", segment=None)
    zoe = ProfileFactory(external_id="zoe")
    DeviceFactory(profile=zoe, app=campaign.app, platform="ios")
    body = {"recipients": [{"external_id": "zoe"}]}
    early = trigger_client.post(_url(campaign), body, format="json", HTTP_IDEMPOTENCY_KEY="order-1")
    assert early.status_code == 409 and early.json()["code"] == "campaign_not_live"
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_approve(campaign_id=campaign.pk, by=approver_bob)
    retried = trigger_client.post(_url(campaign), body, format="json", HTTP_IDEMPOTENCY_KEY="order-1")
    assert retried.status_code == 202 and "Idempotent-Replayed" not in retried
    assert retried.json()["queued"] == 1
    again = trigger_client.post(_url(campaign), body, format="json", HTTP_IDEMPOTENCY_KEY="order-1")
    assert again["Idempotent-Replayed"] == "true" and again.json() == retried.json()

    bad = {"recipients": [{"external_id": 5}]}
    first = trigger_client.post(_url(campaign), bad, format="json", HTTP_IDEMPOTENCY_KEY="bad-1")
    replayed = trigger_client.post(_url(campaign), bad, format="json", HTTP_IDEMPOTENCY_KEY="bad-1")
    assert first.status_code == replayed.status_code == 400
    assert replayed["Idempotent-Replayed"] == "true"


def test_a_user_granted_the_campaign_but_not_its_app_may_not_trigger_it(live_trigger, api_key_for, pushsim_app):
    """A trigger answers with the deliveries it made, read through the campaign's app: a key whose
    user was granted the campaign alone would get ids it could not look up. Refused, saying why."""
    from accounts.services import access_grant
    from tests.factories import UserFactory

    outsider = UserFactory(username="campaign_only", role="Manager")
    access_grant(obj=live_trigger, to=outsider, by=None)
    client = api_key_for(outsider, scopes=["trigger", "read"])
    ProfileFactory(external_id="zoe")
    refused = client.post(_url(live_trigger), {"recipients": [{"external_id": "zoe"}]}, format="json")
    assert refused.status_code == 403 and "access to its app" in refused.json()["detail"]
    assert not Dispatch.objects.exists()
    access_grant(obj=pushsim_app, to=outsider, by=None)
    answered = client.post(_url(live_trigger), {"recipients": [{"external_id": "zoe"}]}, format="json")
    assert answered.status_code == 202
    (delivery,) = answered.json()["deliveries"]
    assert client.get(f"/api/v1/deliveries/{delivery['id']}/").status_code == 200


def test_a_body_that_is_not_an_object_is_refused_as_the_body_and_an_unknown_format_is_400(
    live_trigger, trigger_client, manager_alice, api_key_for
):
    """The whole body's error names no field (``null``, as the error schema says), not DRF's
    ``non_field_errors``; a ``?format=`` the API does not answer in is refused naming it (a list,
    a trigger on either path: nothing sent), never DRF's 404 for an unknown format."""
    for path in (_url(live_trigger), "/api/v1/profiles/", "/api/v1/devices/"):
        answer = api_key_for(manager_alice, scopes=["trigger", "ingest", "read"]).post(path, [1], format="json")
        assert answer.status_code == 400, (path, answer.content)
        assert [e["field"] for e in answer.json()["errors"]] == [None], (path, answer.json())
    listed = trigger_client.get("/api/v1/campaigns/", {"format": "csv"})
    assert listed.status_code == 400 and [e["field"] for e in listed.json()["errors"]] == ["format"]
    ProfileFactory(external_id="zoe")
    for content_type in ("application/json", "application/json; x=1"):  # the API's route, then DRF's view
        answer = trigger_client.post(
            _url(live_trigger) + "?format=csv",
            '{"recipients": [{"external_id": "zoe"}]}',
            content_type=content_type,
        )
        assert answer.status_code == 400, (content_type, answer.content)
        assert [e["field"] for e in answer.json()["errors"]] == ["format"]
        answer = trigger_client.post(
            _url(live_trigger) + "?format=json",
            '{"recipients": [{"external_id": "zoe"}]}',
            content_type=content_type,
        )
        assert answer.status_code == 202, (content_type, answer.content)
    assert Dispatch.objects.count() == 1


def test_same_key_on_another_campaign_is_422_naming_the_campaign_it_triggered(
    live_trigger, context_trigger, trigger_client
):
    ProfileFactory(external_id="zoe")
    body = {"recipients": [{"external_id": "zoe"}]}
    first = trigger_client.post(_url(live_trigger), body, format="json", HTTP_IDEMPOTENCY_KEY="order-9")
    assert first.status_code == 202
    other = trigger_client.post(_url(context_trigger), body, format="json", HTTP_IDEMPOTENCY_KEY="order-9")
    assert other.status_code == 422 and other.json()["code"] == "idempotency_key_reused"
    assert f"to trigger campaign {live_trigger.pk}" in other.json()["detail"]
    assert Dispatch.objects.count() == 1


def test_an_approved_content_the_settings_no_longer_allow_refuses_the_call_naming_the_field(
    pushsim_app, manager_alice, approver_bob, trigger_client, settings
):
    """The deep link's scheme was allowed when the content was approved; the operator has since
    taken it off the list. As a scheduled occurrence is, the call is refused (409, the field and
    the rule) with nothing written, and its Idempotency-Key is freed: the integrator's retry runs
    once the content passes again."""
    settings.PUSHDESK_DEEP_LINK_SCHEMES = ["https", "shop"]
    content = PushContentFactory(
        app=pushsim_app, title="Shipped", tap_action="deep_link", tap_url="shop://orders/{{ context.order_id }}"
    )
    campaign = _approved_trigger(pushsim_app, manager_alice, approver_bob, contents=[content])
    DeviceFactory(profile=ProfileFactory(external_id="zoe"), app=pushsim_app)
    settings.PUSHDESK_DEEP_LINK_SCHEMES = ["https"]
    body = {"recipients": [{"external_id": "zoe", "context": {"order_id": "A-1"}}]}

    refused = trigger_client.post(_url(campaign), body, format="json", HTTP_IDEMPOTENCY_KEY="order-1")
    assert refused.status_code == 409, refused.json()
    answer = refused.json()
    assert answer["code"] == "content_refused"
    assert "tap_url: URL scheme 'shop' is not allowed; use one of: https." in answer["detail"]
    assert not Dispatch.objects.exists() and not Delivery.objects.exists()
    assert not TriggerRequest.objects.exists()

    settings.PUSHDESK_DEEP_LINK_SCHEMES = ["https", "shop"]
    retried = trigger_client.post(_url(campaign), body, format="json", HTTP_IDEMPOTENCY_KEY="order-1")
    assert retried.status_code == 202 and retried.json()["queued"] == 1


def test_a_variant_the_settings_no_longer_allow_refuses_the_call_naming_the_variant(
    pushsim_app, manager_alice, approver_bob, trigger_client, settings
):
    settings.PUSHDESK_URL_SCHEMES = ["https", "http"]
    plain = PushContentFactory(app=pushsim_app, title="Shipped")
    linked = PushContentFactory(app=pushsim_app, title="Shipped", tap_action="url", tap_url="http://example.com/o")
    campaign = _approved_trigger(pushsim_app, manager_alice, approver_bob, contents=[plain, linked])
    ProfileFactory(external_id="zoe")
    settings.PUSHDESK_URL_SCHEMES = ["https"]

    refused = trigger_client.post(_url(campaign), {"recipients": [{"external_id": "zoe"}]}, format="json")
    assert refused.status_code == 409, refused.json()
    assert refused.json()["code"] == "content_refused"
    assert "variant B: tap_url: URL scheme 'http' is not allowed" in refused.json()["detail"]
    assert not Dispatch.objects.exists()


def _approved_trigger(app, manager, approver, *, contents):
    """A live API-triggered campaign sending these contents (two or more: as variants, in equal shares)."""
    from campaigns.services.lifecycle import campaign_approve, campaign_submit
    from campaigns.services.variants import VariantInput, campaign_variants_set

    for user in (manager, approver):
        access_grant(obj=app, to=user, by=None)
    campaign = campaign_create(by=manager, name="Order shipped", app=app, kind="api_triggered", content=contents[0])
    if len(contents) > 1:
        share = 100 // len(contents)
        campaign_variants_set(
            campaign_id=campaign.pk,
            by=manager,
            variants=[VariantInput(content_id=c.pk, share=share) for c in contents],
        )
    campaign_submit(campaign_id=campaign.pk, by=manager)
    campaign_approve(campaign_id=campaign.pk, by=approver)
    return campaign


def test_a_trigger_of_an_app_whose_credentials_cannot_be_decrypted_is_refused_and_queues_nothing(
    live_trigger, trigger_client, pushsim_app, settings, caplog, apns_credentials
):
    """A database restored under another key: the call is told it cannot be sent now (no 500), the
    operator's log names the app and each credential, and no secret is in either."""
    from cryptography.fernet import Fernet

    zoe = ProfileFactory(external_id="zoe")
    DeviceFactory(profile=zoe, app=pushsim_app, platform="ios")
    settings.PUSHDESK_ENCRYPTION_KEY = Fernet.generate_key().decode()

    response = trigger_client.post(_url(live_trigger), {"recipients": [{"external_id": "zoe"}]}, format="json")
    assert response.status_code == 503
    assert response.json() == {
        "code": "credentials_undecryptable",
        "detail": "'Order shipped' cannot be triggered now: its app's credentials cannot be decrypted on this "
        "server, so nothing was queued. An operator must set the encryption key they were stored under.",
    }
    assert not Delivery.objects.exists() and not Dispatch.objects.filter(kind="api_trigger").exists()
    said = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert said[0].startswith(
        f"Campaign {live_trigger.pk} cannot be triggered: app '{pushsim_app.name}' (id {pushsim_app.pk}): "
        "the APNs .p8 key cannot be decrypted with this PUSHDESK_ENCRYPTION_KEY"
    )
    key_line = apns_credentials.private_key_pem.splitlines()[1]
    assert key_line not in response.content.decode() and key_line not in caplog.text
    # The integrator's traffic goes on being refused; the operator's log says it once, not per call.
    for _ in range(3):
        again = trigger_client.post(_url(live_trigger), {"recipients": [{"external_id": "zoe"}]}, format="json")
        assert again.status_code == 503
    assert len([r for r in caplog.records if r.name == "campaigns.services.triggers"]) == 1


class _Clock:
    """The log's clock, moved on by the test."""

    def __init__(self):
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def test_a_trigger_refused_for_credentials_is_said_again_every_hour_and_at_once_after_a_mend(
    live_trigger, trigger_client, pushsim_app, settings, monkeypatch, caplog
):
    """A web process serves for weeks: a campaign whose calls stay refused is named again each hour
    (with the calls refused since the last line), not once in the process's life; its key put back is
    said, and its key lost again is said at once."""
    from cryptography.fernet import Fernet

    from campaigns.services import triggers
    from config import reporting

    clock = _Clock()
    monkeypatch.setattr(reporting, "time", clock)
    settings.PUSHDESK_CACHE_SECONDS = 0  # each call loads the campaign, as the first after the cache's time does
    zoe = ProfileFactory(external_id="zoe")
    DeviceFactory(profile=zoe, app=pushsim_app, platform="ios")
    old = settings.PUSHDESK_ENCRYPTION_KEY
    new = Fernet.generate_key().decode()
    settings.PUSHDESK_ENCRYPTION_KEY = new

    def said_at(seconds: float, status: int = 503) -> list[str]:
        clock.now = 1000.0 + seconds
        caplog.clear()
        response = trigger_client.post(_url(live_trigger), {"recipients": [{"external_id": "zoe"}]}, format="json")
        assert response.status_code == status, response.content
        return [r.getMessage() for r in caplog.records if r.name == triggers.__name__]

    refused = f"Campaign {live_trigger.pk} cannot be triggered: app '{pushsim_app.name}' (id {pushsim_app.pk}): "
    first = said_at(0)
    assert len(first) == 1 and first[0].startswith(refused) and "(a different key" in first[0]
    assert [said_at(seconds) for seconds in (1, 60, 3599)] == [[]] * 3
    assert said_at(3600) == [first[0] + " (4 calls refused since the last line)"]
    assert said_at(3601) == []

    settings.PUSHDESK_ENCRYPTION_KEY = f"{new},{old}"
    assert said_at(3602, 202) == [
        f"Campaign {live_trigger.pk} can be triggered again: its app's credentials can be decrypted"
    ]
    assert said_at(3603, 202) == []
    settings.PUSHDESK_ENCRYPTION_KEY = new
    assert said_at(3604) == first  # at once, not an hour after the last line


def test_a_calls_context_naming_the_campaign_is_refused_and_its_phones_show_the_approved_name(
    pushsim_app, manager_alice, approver_bob, trigger_client, pushsim, django_capture_on_commit_callbacks
):
    """Every send gives its content ``context.campaign`` (its id and the name its approved version
    was approved with); a call's context laid over it made the phones show whatever name the call
    gave, which no approver read. A call naming ``campaign`` in its context, shared or a recipient's,
    is refused naming it, and nothing is written; a call without it sends the approved name."""
    from tests.campaigns.conftest import _live_trigger

    campaign = _live_trigger(
        pushsim_app, manager_alice, approver_bob, title="{{ context.campaign.name }}", body="It is on its way"
    )
    zoe = ProfileFactory(external_id="zoe")
    phone = DeviceFactory(profile=zoe, app=pushsim_app, platform="ios")
    forged = {"campaign": {"id": campaign.pk, "name": "Everything free, today only"}}
    shared = trigger_client.post(
        _url(campaign), {"recipients": [{"external_id": "zoe"}], "context": forged}, format="json"
    )
    own = trigger_client.post(
        _url(campaign), {"recipients": [{"external_id": "zoe", "context": forged}]}, format="json"
    )
    assert shared.status_code == own.status_code == 400
    assert shared.json()["errors"][0]["field"] == "context.campaign"
    assert own.json()["errors"][0]["field"] == "recipients[0].context.campaign"
    assert "the name its approved version sends" in own.json()["errors"][0]["detail"]
    assert not Delivery.objects.exists()

    with django_capture_on_commit_callbacks(execute=True):
        sent = trigger_client.post(_url(campaign), {"recipients": [{"external_id": "zoe"}]}, format="json")
    assert sent.status_code == 202
    assert [push["title"] for push in pushsim.state.recent(token=phone.token)] == [campaign.name]


def test_a_context_too_large_beside_the_campaigns_own_name_is_refused_at_the_call_not_failed_at_send(
    pushsim_app, manager_alice, approver_bob, trigger_client, django_capture_on_commit_callbacks
):
    """Every send gives its content ``context.campaign`` (its id and approved name); the call's size
    check rendered without it, so a call whose context fits only without the campaign's long name
    answered 202 and its push failed at send as too large. It is refused at the call, naming the
    context, and nothing is written: on the first call, which looks each profile up, and once the
    campaign's stream is open, where the call is appended in one statement."""
    from tests.campaigns.conftest import _live_trigger

    campaign = _live_trigger(
        pushsim_app,
        manager_alice,
        approver_bob,
        name="N" * 200,
        title="{{ context.campaign.name }}{{ context.order_id }}",
        body="x" * 3500,
    )
    zoe = ProfileFactory(external_id="zoe")
    DeviceFactory(profile=zoe, app=pushsim_app, platform="android")
    too_large = {"recipients": [{"external_id": "zoe", "context": {"order_id": "A" * 300}}]}

    first = trigger_client.post(_url(campaign), too_large, format="json")
    assert first.status_code == 400, first.json()
    (error,) = first.json()["errors"]
    assert error["field"] == "recipients[0].context"
    assert "over the 4096-byte limit" in error["detail"]
    assert not Delivery.objects.exists()

    with django_capture_on_commit_callbacks(execute=True):
        fits = trigger_client.post(
            _url(campaign), {"recipients": [{"external_id": "zoe", "context": {"order_id": "A-1"}}]}, format="json"
        )
    assert fits.status_code == 202, fits.json()
    assert Delivery.objects.count() == 1

    again = trigger_client.post(_url(campaign), too_large, format="json")
    assert again.status_code == 400, again.json()
    assert again.json()["errors"][0]["field"] == "recipients[0].context"
    assert Delivery.objects.count() == 1
