"""Hostile input posted to every admin form, one field at a time: a NUL, a number past any column or
float, NaN and Infinity, an unknown choice, text past any sensible length, and for a JSON field a
JSON text holding an escaped NUL, a lone surrogate, a number that overflows a float or containers
nested thousands deep. Each answers the form again with its field's error, or saves what was posted:
never a 500, never a half-written row.

tests/security/test_admin_hostile_input.py already sends each number input past its range and each
text input a NUL; here the rest: JSON, choices, dates, over-long text, and numbers typed as text."""

import datetime as dt

import pytest
from django import forms
from django.contrib import admin
from django.urls import reverse

from accounts.encryption import Sealed
from accounts.models import AuditEvent
from tests.pages import page_form

NUL = "a\x00b"
LONG = "x" * 100_000
NUMBERS = ["9" * 30, "1e400", "NaN", "Infinity"]
JSONS = [
    '{"a": "\\u0000"}',
    '{"\\u0000": 1}',
    '{"a": "\\ud800"}',
    '{"a": 1e400}',
    '{"a": 1' + "0" * 400 + "}",
    '{"a": NaN}',
    "[" * 5000 + "]" * 5000,
    NUL,
]

# A date and a time: the calendar's first and last minutes (out of range once moved to UTC from a
# zone ahead or behind), a NUL in either.
SPLIT_DATES = [("9999-12-31", "23:59"), ("0001-01-01", "00:00"), (NUL, "10:00"), ("2026-12-24", NUL)]


def _as_datetime(date: str, time: str) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(f"{date}T{time}").replace(tzinfo=dt.UTC)
    except ValueError:
        return None


def _values(field: forms.Field, *, number_input: bool, text_input: bool) -> list[str]:
    if isinstance(field, forms.JSONField):
        return JSONS
    if isinstance(field, forms.SplitDateTimeField):
        return SPLIT_DATES
    if isinstance(field, forms.BooleanField | forms.NullBooleanField | forms.FileField):
        return []
    if isinstance(field, forms.ModelChoiceField | forms.ModelMultipleChoiceField):
        return ["9" * 30]  # an id past any column
    if isinstance(field, forms.ChoiceField):
        return ["no-such-choice"]
    if isinstance(field, forms.IntegerField | forms.FloatField | forms.DecimalField):
        return ["Infinity"] if number_input else NUMBERS
    if isinstance(field, forms.DateField | forms.TimeField | forms.DateTimeField | forms.DurationField):
        return [NUL, "9" * 30]
    return [LONG] if text_input else [NUL, LONG]


def _row(model, pk) -> dict | None:
    """The stored row (an encrypted secret as its token), or None."""
    row = model._default_manager.filter(pk=pk).values().first() if pk is not None else None
    return row and {k: v.token if isinstance(v, Sealed) else v for k, v in row.items()}


def _pages(objects):
    """(model, url, pk) of each registered admin's form: the change page of ``objects``' one where
    there is one, then the add page (probed when the first had no field to post)."""
    for model in admin.site._registry:
        prefix = f"admin:{model._meta.app_label}_{model._meta.model_name}"
        obj = objects.get(model._meta.label_lower) or objects.get(model._meta.model_name)
        if obj is not None:
            yield model, reverse(f"{prefix}_change", args=[obj.pk]), obj.pk
        yield model, reverse(f"{prefix}_add"), None


def _post(client, url, data, **kwargs):
    try:
        return client.post(url, data, **kwargs)
    except Exception as exc:  # noqa: BLE001 - a view's exception is the 500 it would answer
        return exc


def _judged(model, pk, name, value, answer, before, rows, events) -> str | None:
    """What is wrong with ``answer`` to ``name=value`` posted, or None."""
    if isinstance(answer, Exception):
        return repr(answer)[:300]
    if answer.status_code >= 500:
        return f"{answer.status_code}"
    if pk is None:
        after = (
            model._default_manager.order_by("-pk").values().first() if model._default_manager.count() != rows else None
        )
    else:
        after = _row(model, pk)
    if answer.status_code == 302:
        # Refused with a message (a locked object, a value its state ignores), or saved as posted
        # (text of no set length, taken whole): never saved as something else.
        if after != before and after.get(name) != value:
            return f"saved as { ({k: v for k, v in after.items() if (before or {}).get(k) != v}) }"[:300]
        return None
    if answer.status_code != 200:
        return f"{answer.status_code}"
    if not (answer.context and answer.context.get("errors")):
        return "shown again without an error"
    if after != before or AuditEvent.objects.count() != events:
        return "refused, yet written"
    return None


@pytest.mark.slow
def test_every_field_of_every_admin_form_takes_hostile_values_without_a_500(client, world, admin_erin):
    """Each form is posted as its page shows it (the world's object, a draft campaign's), one field
    replaced by each hostile value of its kind. Saved is only what was posted; refused is refused
    whole: the row as it was, no audit event."""
    draft = _draft(world, admin_erin)
    client.force_login(admin_erin)
    failures, probed, done = {}, set(), set()
    for model, url, pk in _pages({**world, "campaigns.campaign": draft}):
        if model in done:
            continue
        page = client.get(url)
        if page.status_code != 200 or "adminform" not in (page.context or {}):
            continue
        form = page.context["adminform"].form
        shown = page_form(page.content.decode())
        for name, field in form.fields.items():
            if field.disabled or (name[-2:] in ("_2", "_3") and f"{name[:-2]}_1" in form.fields):
                continue  # a form's repeated rows (conversion conditions): the first stands for all
            done.add(model)
            posted = form.add_prefix(name)
            for value in _values(field, number_input=posted in shown.numbers, text_input=posted in shown.texts):
                before, rows, events = _row(model, pk), model._default_manager.count(), AuditEvent.objects.count()
                if isinstance(value, tuple):
                    answer = _post(client, url, {**shown.data, f"{posted}_0": [value[0]], f"{posted}_1": [value[1]]})
                    value = _as_datetime(*value)  # saved, then as this time (the draft's zone is UTC)
                else:
                    answer = _post(client, url, {**shown.data, posted: [value]})
                problem = _judged(model, pk, name, value, answer, before, rows, events)
                if problem:
                    failures[f"{url} {name}={str(value)[:20]!r}"] = problem
                elif pk is not None and answer.status_code == 302 and _row(model, pk) != before:
                    client.post(url, shown.data)  # saved as posted: put back for the next field
                probed.add((model._meta.label_lower, name, type(field).__name__))
    assert not failures, "\n".join(f"{k}: {v}" for k, v in failures.items())
    # The JSON fields stored as jsonb, and forms of every app, were reached.
    assert {
        ("audiences.segment", "rules", "JsonValueFormField"),
        ("delivery.pushcontent", "data", "JsonValueFormField"),
        ("delivery.pushcontent", "variants", "JsonValueFormField"),
        ("journeys.journey", "graph", "JsonValueFormField"),
        ("campaigns.campaign", "segment", "KeptChoiceField"),
        ("accounts.apikey", "scopes", "MultipleChoiceField"),
        ("audiences.import", "columns_text", "CharField"),
        ("delivery.app", "apns_environment", "TypedChoiceField"),
    } <= probed, sorted(probed)
    assert len(probed) > 80, len(probed)


# --- the admin's own views with a form: previews, reviews, access, uploads --------------------------


def _draft(world, by):
    """A draft campaign of the world's app, segment and content: its page is a form (the world's
    own campaign, submitted, is read-only)."""
    from campaigns.services.lifecycle import campaign_create

    campaign = world["campaigns.campaign"]
    return campaign_create(
        by=by, name="Draft", app=campaign.app, segment=campaign.segment, content=campaign.content, kind="scheduled"
    )


def _no_500(client, url, data=None, **kwargs):
    answer = _post(client, url, data, **kwargs)
    assert not isinstance(answer, Exception), (url, data, answer)
    assert answer.status_code < 500, (url, answer.status_code)
    return answer


@pytest.mark.parametrize("text", [*JSONS[:-1], '{"rules": ' + "[" * 5000 + "]" * 5000 + "}"])
def test_the_rule_preview_refuses_hostile_json_naming_what(client, world, manager_alice, text):
    client.force_login(manager_alice)
    body = (
        text
        if text.startswith('{"rules"')
        else '{"rules": {"all": [{"attribute": "plan", "op": "eq", "value": ' + text + "}]}}"
    )
    answer = _no_500(client, reverse("admin:audiences_segment_preview_rules"), body, content_type="application/json")
    assert answer.status_code == 400, answer.content
    assert answer.json()["errors"][0]["message"]


@pytest.mark.parametrize("body", [b"\xff\xfe{}", b'{"rules": {"all": []}, "segment": "' + b"9" * 30 + b'"}', b"\x00"])
def test_the_rule_preview_answers_bytes_that_are_not_json_or_ids_past_any_row_without_a_500(
    client, world, manager_alice, body
):
    client.force_login(manager_alice)
    answer = _no_500(client, reverse("admin:audiences_segment_preview_rules"), body, content_type="application/json")
    assert answer.status_code in (400, 404)


def test_the_content_live_preview_takes_hostile_fields_without_a_500(client, world, manager_alice):
    """The phones are drawn from the form as it stands: a field that does not validate stays as saved."""
    content = world["delivery.pushcontent"]
    client.force_login(manager_alice)
    shown = page_form(client.get(reverse("admin:delivery_pushcontent_change", args=[content.pk])).content.decode())
    url = reverse("admin:delivery_pushcontent_live_preview", args=[content.pk])
    for name, values in [
        ("data", JSONS),
        ("variants", JSONS),
        ("title", [NUL, LONG]),
        ("preview_profile", [NUL, LONG]),
        ("preview_locale", [NUL, LONG]),
        ("ios_badge", NUMBERS),
        ("app", ["9" * 30]),
    ]:
        for value in values:
            answer = _no_500(client, url, {**shown.data, name: [value]})
            assert answer.status_code == 200, (url, name, value[:20])
    assert (
        _no_500(client, reverse("admin:delivery_pushcontent_live_preview_new"), {"data": JSONS[0]}).status_code == 200
    )


def test_an_approval_decision_takes_a_hostile_comment_without_a_500(client, world, approver_bob):
    from accounts.models import ApprovalRequest

    approval = ApprovalRequest.objects.filter(status=ApprovalRequest.Status.PENDING).first()
    url = reverse("admin:accounts_approvalrequest_review", args=[approval.pk])
    client.force_login(approver_bob)
    for decision in ("_approve", "_request_changes", "_no_such_decision"):
        answer = _no_500(client, url, {"comment": NUL, decision: "1"})
        assert answer.status_code in (200, 403), (decision, answer.status_code)
        if answer.status_code == 200:
            assert answer.context["form"].errors["comment"]
    answer = _no_500(client, url, {"comment": LONG, "_request_changes": "1"})
    approval.refresh_from_db()
    assert answer.status_code == 200 and answer.context["form"].errors["comment"] or approval.comment == LONG


@pytest.mark.parametrize(
    "data",
    [
        {"user": "9" * 30},
        {"user": NUL},
        {"group": "no-such-group"},
        {"revoke": "user:" + "9" * 30},
        {"revoke": "user:" + NUL},
        {"revoke": NUL},
        {"revoke": "group:-1"},
    ],
)
def test_an_access_page_takes_hostile_principals_without_a_500(client, world, admin_erin, data):
    segment = world["audiences.segment"]
    client.force_login(admin_erin)
    answer = _no_500(client, reverse("admin:audiences_segment_access", args=[segment.pk]), data)
    assert answer.status_code in (200, 404), answer.status_code
    if answer.status_code == 200:
        assert answer.context["form"].errors


@pytest.mark.parametrize("action", ["submit", NUL, "9" * 30, "approve"])
@pytest.mark.parametrize("model", ["campaigns.campaign", "journeys.journey"])
def test_a_lifecycle_button_takes_hostile_actions_and_confirmations_without_a_500(
    client, world, manager_alice, model, action
):
    obj = world[model]
    client.force_login(manager_alice)
    url = reverse(f"admin:{model.replace('.', '_')}_transition", args=[obj.pk, action])
    answer = _no_500(client, url, {"confirmed": NUL, "comment": NUL})
    assert answer.status_code in (200, 302, 403, 404), answer.status_code


@pytest.mark.parametrize(
    "date,time",
    [(NUL, "10:00"), ("2026-12-24", NUL), ("9" * 30, "10:00"), ("2026-12-24", "99:99"), ("9999-12-31", "23:59:59")],
)
def test_a_new_api_key_takes_a_hostile_expiry_without_a_500(client, world, admin_erin, date, time):
    from accounts.models import ApiKey
    from tests.pages import form_token_of

    client.force_login(admin_erin)
    keys = ApiKey.objects.count()
    add = reverse("admin:accounts_apikey_add")
    data = {"user": str(admin_erin.pk), "name": "k", "scopes": ["read"], "expires_at_0": date, "expires_at_1": time}
    data["form_token"] = form_token_of(client.get(add).content)
    answer = _no_500(client, add, data)
    assert answer.status_code == 200, answer.status_code
    if "admin/accounts/apikey/created.html" in [t.name for t in answer.templates]:
        assert ApiKey.objects.get(name="k").expires_at.year == 9999  # the last day of the calendar, taken
    else:
        assert answer.context["errors"] and ApiKey.objects.count() == keys


@pytest.mark.parametrize(
    "content",
    [
        b"external_id,plan\nann,p\x00ro\nbob,basic\n",
        b"external_id,pl\x00an\nann,pro\n",
        b"external_id,plan\nann,\xff\xfe\xed\xa0\x80\n",
        b"\xef\xbb\xbfexternal_id,plan\nann,pro\n",
        b"external_id,plan\rann,pro\rbob,basic\r",
        b"external_id,plan\r\nann,pro\r\n",
        b"\x00\x00\x00",
        b"",
        b"external_id,n\nann," + b"9" * 400 + b"\nbob,1e400\ncat,NaN\n",
        b"external_id,plan\n" + b"x" * 100_000 + b",pro\n",
    ],
)
def test_a_csv_upload_of_hostile_bytes_is_refused_or_imported_without_a_500(
    client, world, manager_alice, settings, tmp_path, django_capture_on_commit_callbacks, content
):
    """The upload form answers with its error, or the import runs to its end: done (each bad row
    failed with its reason) or failed with a message. Never a 500, never a run stuck midway."""
    from django.core.files.uploadedfile import SimpleUploadedFile

    from audiences.models import Import

    settings.MEDIA_ROOT = tmp_path / "media"
    client.force_login(manager_alice)
    imports = set(Import.objects.values_list("pk", flat=True))
    upload = SimpleUploadedFile("people.csv", content, content_type="text/csv")
    with django_capture_on_commit_callbacks(execute=True):
        answer = _no_500(
            client, reverse("admin:audiences_import_add"), {"file": upload, "encoding": "utf-8", "target": "profiles"}
        )
    created = Import.objects.exclude(pk__in=imports)
    if answer.status_code == 200:
        assert answer.context["errors"] and not created.exists()
        return
    assert answer.status_code == 302, answer.status_code
    record = created.get()
    assert record.status in (Import.Status.DONE, Import.Status.FAILED), record.status
    assert record.status == Import.Status.DONE or record.error
    assert client.get(reverse("admin:audiences_import_change", args=[record.pk])).status_code == 200


@pytest.mark.slow
def test_every_inline_row_and_its_counts_take_hostile_values_without_a_500(client, world, admin_erin, manager_alice):
    """The rows under a form (a campaign's variants, a user's apps), and the counts of rows the
    page posts with them: a count past any or a NUL is answered, never a 500."""
    from tests.factories import AppFactory

    AppFactory()  # an app alice was not granted: her page offers a row for it
    draft = _draft(world, admin_erin)
    counts = ids = ["9" * 30, NUL]
    variant = {
        "variants-TOTAL_FORMS": ["1"],
        "variants-0-content": [str(draft.content_id)],
        "variants-0-share": ["50"],
    }
    probes = [
        (
            reverse("admin:campaigns_campaign_change", args=[draft.pk]),
            variant,
            {
                "variants-TOTAL_FORMS": counts,
                "variants-INITIAL_FORMS": counts,
                "variants-0-content": ids,
                "variants-0-share": ["1e400", "NaN"],
            },
        ),
        (
            reverse("admin:accounts_user_change", args=[manager_alice.pk]),
            {},
            {
                "appuserobjectpermission_set-TOTAL_FORMS": counts,
                "appuserobjectpermission_set-INITIAL_FORMS": counts,
                "appuserobjectpermission_set-0-id": ids,
                "appuserobjectpermission_set-1-content_object": ids,
            },
        ),
    ]
    client.force_login(admin_erin)
    failures, sent = {}, 0
    for url, added, fields in probes:
        shown = page_form(client.get(url).content.decode())
        for name, values in fields.items():
            assert name in {**shown.data, **added}, name
            for value in values:
                answer = _post(client, url, {**shown.data, **added, name: [value]})
                sent += 1
                if isinstance(answer, Exception) or answer.status_code >= 500:
                    failures[f"{url} {name}={value[:20]!r}"] = repr(answer)[:300]
    assert not failures, "\n".join(f"{k}: {v}" for k, v in failures.items())
    assert sent == 16, sent


BIG = 10**30  # a whole number JSON holds, past any bigint column


@pytest.mark.parametrize(
    "step",
    [
        {"id": "start", "type": "wait", "seconds": BIG, "next": "done"},
        {"id": "start", "type": "wait", "seconds": -BIG, "next": "done"},
        {"id": "start", "type": "wait", "seconds": 1e308, "next": "done"},
        {"id": "start", "type": "push", "content": BIG, "next": "done"},
        {"id": "start", "type": "push", "content": "9" * 30, "next": "done"},
        {
            "id": "start",
            "type": "condition",
            "branches": [{"label": "a", "segment": BIG, "next": "done"}],
            "else": "done",
        },
        {
            "id": "start",
            "type": "condition",
            "branches": [{"label": "a", "rules": {"all": [{"segment": BIG}]}, "next": "done"}],
            "else": "done",
        },
        {"id": "start", "type": "wait", "until": "\x00", "next": "done"},
        {"id": "st\x00rt", "type": "exit"},
    ],
)
def test_a_journey_graph_naming_numbers_past_any_column_is_refused_on_the_form(client, world, manager_alice, step):
    """Valid JSON whose numbers name no row (an id past bigint) or no duration: the graph's
    field says so; the journey is as it was."""
    import json

    journey = world["journeys.journey"]
    client.force_login(manager_alice)
    url = reverse("admin:journeys_journey_change", args=[journey.pk])
    page = client.get(url)
    shown = page_form(page.content.decode())
    before = _row(type(journey), journey.pk)
    graph = {"steps": [step, {"id": "done", "type": "exit"}]}
    answer = _no_500(client, url, {**shown.data, "graph": [json.dumps(graph)]})
    assert answer.status_code == 200, answer.status_code
    assert answer.context["adminform"].form.errors
    assert _row(type(journey), journey.pk) == before


@pytest.mark.parametrize(
    "rule",
    [
        {"segment": BIG},
        {"reachable": {"app": BIG}},
        {"event": "open", "min_count": BIG},
        {"event": "open", "within_days": BIG},
        {"event": "open", "within_days": 1e308},
        {"field": "created_at", "op": "gt", "value": {"ago": BIG, "unit": "days"}},
        {"attribute": "age", "op": "gt", "value": BIG},
        {"attribute": "age", "op": "between", "value": [-1e308, 1e308]},
        {"attribute": "a\x00", "op": "eq", "value": 1},
    ],
)
def test_segment_rules_naming_numbers_past_any_column_are_answered_on_the_form(client, world, manager_alice, rule):
    """A rule of valid JSON whose number names no row, no count or no time: refused by the form
    naming the rule, or saved as posted (a number compared is any number): never a 500."""
    import json

    segment = world["audiences.segment"]
    saved = segment.rules
    client.force_login(manager_alice)
    url = reverse("admin:audiences_segment_change", args=[segment.pk])
    shown = page_form(client.get(url).content.decode())
    answer = _no_500(client, url, {**shown.data, "rules": [json.dumps({"all": [rule]})]})
    segment.refresh_from_db()
    if answer.status_code == 302:
        assert segment.rules == {"all": [rule]}
    else:
        assert answer.status_code == 200 and answer.context["adminform"].form.errors["rules"]
        assert segment.rules == saved
    preview = _no_500(
        client,
        reverse("admin:audiences_segment_preview_rules"),
        json.dumps({"rules": {"all": [rule]}}),
        content_type="application/json",
    )
    assert preview.status_code in (200, 400)


@pytest.mark.parametrize("who", ["campaign", "occurrences", "user"])
def test_a_row_count_past_any_builds_no_more_rows_than_the_inline_holds(client, world, admin_erin, manager_alice, who):
    """A page posts how many rows it sends; Django builds that many forms, up to a thousand more
    than the rows allowed, and shows each again with its error (seconds of work for one POST). An
    inline builds at most the rows it may hold: a campaign's variants, the latest occurrences it
    shows, a user's apps."""
    from campaigns.occurrence_admin import LATEST_OCCURRENCES, ROWS_ADDED
    from campaigns.services.variants import MAX_VARIANTS
    from delivery.models import App

    if who in ("campaign", "occurrences"):
        draft = _draft(world, admin_erin)
        url = reverse("admin:campaigns_campaign_change", args=[draft.pk])
        prefix, most = ("variants", MAX_VARIANTS) if who == "campaign" else ("occurrences", LATEST_OCCURRENCES)
    else:
        url, prefix = reverse("admin:accounts_user_change", args=[manager_alice.pk]), "appuserobjectpermission_set"
        most = App.objects.count()
    client.force_login(admin_erin)
    shown = page_form(client.get(url).content.decode())
    answer = client.post(url, {**shown.data, f"{prefix}-TOTAL_FORMS": ["9" * 30]})
    assert answer.status_code == 200
    (formset,) = [f.formset for f in answer.context["inline_admin_formsets"] if f.formset.prefix == prefix]
    assert len(formset.forms) <= most, len(formset.forms)
    if who == "occurrences":  # no row is added there: said in the inline's own words
        assert [str(e) for e in formset.non_form_errors()] == [ROWS_ADDED]
    else:
        assert "Please submit at most" in str(formset.non_form_errors())
