"""Hostile input on every admin form: each number input of every add and change page the world
reaches, sent past its range, as an overflowing float, negative and as NaN, and each text input
with a NUL, answers the form again with its error: never a 500, never a save."""

import pytest
from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.urls import reverse

from tests.factories import SegmentFactory
from tests.pages import PageForm, page_form

HOSTILE = ["9" * 30, "1e400", "-99999999999", "nan"]


def _form_pages(world):
    """(model label, add url, change url or None) of every registered admin."""
    for model in admin.site._registry:
        prefix = f"admin:{model._meta.app_label}_{model._meta.model_name}"
        obj = world.get(model._meta.label_lower)
        change = reverse(f"{prefix}_change", args=[obj.pk]) if obj is not None else None
        yield model._meta.label_lower, reverse(f"{prefix}_add"), change


def _saved(answer) -> bool:
    return answer.status_code == 302


def _read(client, url) -> PageForm | None:
    page = client.get(url)
    if page.status_code != 200:
        return None
    return page_form(page.content.decode())


@pytest.mark.slow
def test_every_number_input_of_every_admin_form_takes_hostile_numbers_without_a_500(client, world, admin_erin):
    """Each form is posted with the values its page shows (an add page, the values of the world's
    object where there is one). Where those save as they are, a hostile number that is refused was
    refused by its own field's check, not by another's."""
    client.force_login(admin_erin)
    probed, failures, checked_alone = [], {}, set()
    for label, add_url, change_url in _form_pages(world):
        shown = _read(client, change_url) if change_url else None
        if shown is None or not shown.numbers:  # no object, or one its state makes read-only
            shown, change_url = _read(client, add_url), None
        if shown is None:
            continue
        for url in filter(None, (change_url, add_url)):
            for name in sorted(shown.numbers):
                for value in HOSTILE:
                    answer = client.post(url, {**shown.data, name: [value]})
                    if answer.status_code >= 500 or _saved(answer):
                        failures[f"{url} {name}={value}"] = answer.status_code
                probed.append((label, url, name))
            if shown.numbers and _saved(client.post(url, shown.data)):
                checked_alone.add(url)
    assert not failures, failures
    assert len(probed) > 20, probed
    # The forms whose own values save: there, each refusal above is the number's own.
    assert checked_alone >= {
        f"/admin/delivery/app/{world['delivery.app'].pk}/change/",
        "/admin/delivery/pushcontent/add/",
        f"/admin/journeys/journey/{world['journeys.journey'].pk}/change/",
    }, checked_alone


@pytest.mark.slow
def test_every_text_input_of_every_admin_form_takes_a_nul_without_a_500(client, world, admin_erin):
    """PostgreSQL stores no NUL in text: each text field and text area gets one, answered by the
    form, never a 500 or a save."""
    client.force_login(admin_erin)
    probed, failures = [], {}
    for label, add_url, change_url in _form_pages(world):
        shown = _read(client, change_url) if change_url else None
        if shown is None or not shown.texts:
            shown, change_url = _read(client, add_url), None
        if shown is None:
            continue
        url = change_url or add_url
        for name in sorted(shown.texts):
            answer = client.post(url, {**shown.data, name: ["a\x00b"]})
            if answer.status_code >= 500 or _saved(answer):
                failures[f"{url} {name}"] = answer.status_code
            probed.append((label, name))
    assert not failures, failures
    assert len(probed) > 40, probed


@pytest.mark.parametrize("field", ["variants", "data"])
@pytest.mark.parametrize("value", ["-1", "[1, 2]", '"text"', "9" * 30])
def test_content_variants_or_data_that_are_not_an_object_are_refused_on_the_form(
    client, world, manager_alice, field, value
):
    """Valid JSON of another type is refused by its field, and the page shown again previews the
    content as it was saved (a number reached the previews, and the service, and answered 500)."""
    content = world["delivery.pushcontent"]
    saved = getattr(content, field)
    client.force_login(manager_alice)
    url = reverse("admin:delivery_pushcontent_change", args=[content.pk])
    shown = _read(client, url)
    answer = client.post(url, {**shown.data, field: [value]})
    assert answer.status_code == 200
    assert answer.context["adminform"].form.errors[field]
    assert "content-previews" in answer.content.decode()
    content.refresh_from_db()
    assert getattr(content, field) == saved


@pytest.mark.parametrize("number", ["1e400", "1" + "0" * 400, "-1" + "0" * 400])
def test_content_data_holding_a_number_no_float_holds_is_refused_on_the_form(client, world, manager_alice, number):
    content = world["delivery.pushcontent"]
    saved = content.data
    client.force_login(manager_alice)
    url = reverse("admin:delivery_pushcontent_change", args=[content.pk])
    answer = client.post(url, {**_read(client, url).data, "data": ['{"order": ' + number + "}"]})
    assert answer.status_code == 200
    assert "order: Numbers must" in answer.context["adminform"].form.errors["data"][0]
    content.refresh_from_db()
    assert content.data == saved


def test_content_data_giving_a_key_twice_is_refused_on_the_form_naming_it(client, world, manager_alice):
    """JSON leaves a repeated key's meaning to each reader (Python's keeps the last): the form says
    so, as the API does, instead of saving one of the two."""
    content = world["delivery.pushcontent"]
    saved = content.data
    client.force_login(manager_alice)
    url = reverse("admin:delivery_pushcontent_change", args=[content.pk])
    answer = client.post(url, {**_read(client, url).data, "data": ['{"order": "1", "order": "2"}']})
    assert answer.status_code == 200
    assert answer.context["adminform"].form.errors["data"] == ["order: This key is given more than once in its object."]
    content.refresh_from_db()
    assert content.data == saved


def test_the_rule_preview_refuses_a_key_given_twice(client, world, manager_alice):
    client.force_login(manager_alice)
    answer = client.post(
        reverse("admin:audiences_segment_preview_rules"),
        '{"rules": {"all": [], "all": [{"attribute": "plan", "op": "eq", "value": "pro"}]}}',
        content_type="application/json",
    )
    assert answer.status_code == 400
    assert answer.json()["errors"] == [
        {"path": "rules.all", "message": "This key is given more than once in its object."}
    ]


@pytest.mark.parametrize("field", ["variants", "data"])
def test_the_content_service_refuses_variants_or_data_that_are_not_an_object(world, manager_alice, field):
    from django.core.exceptions import ValidationError

    from delivery.models import PushContent
    from delivery.services.contents import pushcontent_save

    content = PushContent(app=world["delivery.app"], name="Odd", title="Hi", body="Body", **{field: -1})
    with pytest.raises(ValidationError) as refused:
        pushcontent_save(content=content, by=manager_alice)
    assert field in refused.value.message_dict
    assert not PushContent.objects.filter(name="Odd").exists()


@pytest.mark.slow
@pytest.mark.parametrize("who", ["admin_erin", "manager_alice"])
def test_every_list_action_sent_ids_that_are_not_ids_changes_nothing_without_a_500(client, world, request, who):
    """A forged action POST: each action a change list offers, its selection a word, a NUL, a
    negative or a number past any column (alone or beside a real id)."""
    from accounts.models import AuditEvent

    client.force_login(request.getfixturevalue(who))
    failures, sent = {}, 0
    for model in admin.site._registry:
        url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
        page = client.get(url)
        if page.status_code != 200 or not (page.context or {}).get("action_form"):
            continue
        actions = [value for value, _ in page.context["action_form"].fields["action"].choices if value]
        obj = world.get(model._meta.label_lower)
        for action in actions:
            for selected in (["abc"], ["a\x00"], ["-1"], ["9" * 30], [str(obj.pk if obj else 1), "x"]):
                events = AuditEvent.objects.count()
                answer = client.post(url, {"action": action, "_selected_action": selected, "index": "0"})
                sent += 1
                if answer.status_code >= 500:
                    failures[f"{url} {action} {selected}"] = answer.status_code
                elif any(not v.lstrip("-").isdigit() for v in selected) and AuditEvent.objects.count() != events:
                    failures[f"{url} {action} {selected}"] = "acted"
    assert not failures, failures
    assert sent > 50, sent


@pytest.mark.parametrize(
    "query",
    [
        "created_at__year=0",
        "created_at__year__gt=" + "9" * 30,
        "created_at__iso_year=10000",
        "name__regex=(",
        "name__iregex=%28a%2B%29%2B%24",
        "id__range=10000",
    ],
)
def test_a_list_refuses_a_query_lookup_that_fails_as_the_list_is_read(client, manager_alice, query):
    """Django lets a list's query string filter by any lookup on the model's own fields, and refuses
    (?e=1) one it cannot build; these it builds, and they failed as the list was read (a 500): a year
    outside the calendar, a regular expression the database cannot compile (or one that backtracks
    for minutes), a range that is not two values."""
    client.force_login(manager_alice)
    assert client.get(f"/admin/audiences/segment/?{query}").status_code == 400


# The digits of other scripts, which int(), Decimal() and strptime read as ASCII's: Arabic-Indic.
ARABIC_DIGITS = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")
_NUMBER_OR_TIME_FIELDS = (
    forms.IntegerField,
    forms.DecimalField,
    forms.FloatField,
    forms.DateField,
    forms.TimeField,
    forms.DateTimeField,
    forms.DurationField,
    forms.ModelChoiceField,
    forms.SplitDateTimeField,
)


def _in_other_digits(field) -> object | None:
    """A value ``field`` would read in ASCII digits, written in Arabic-Indic ones."""
    if isinstance(field, forms.ModelChoiceField):
        first = field.queryset.first()
        if first is None:
            return None
        value = str(first.pk).translate(ARABIC_DIGITS)
        return [value] if isinstance(field, forms.ModelMultipleChoiceField) else value
    if isinstance(field, forms.SplitDateTimeField):
        return ["2026-12-24".translate(ARABIC_DIGITS), "07:10"]
    if isinstance(field, forms.DateTimeField):
        return "2026-12-24 07:10".translate(ARABIC_DIGITS)
    if isinstance(field, forms.DateField):
        return "2026-12-24".translate(ARABIC_DIGITS)
    if isinstance(field, forms.TimeField | forms.DurationField):
        return "07:10:00".translate(ARABIC_DIGITS)
    number = max(getattr(field, "min_value", None) or 1, 1)
    return str(number).translate(ARABIC_DIGITS)


def _with_an_underscore(field) -> object | None:
    """A number or an id ``field`` would read, written with an underscore ("0_3" is 3 to int(),
    Decimal() and float()); None for a date or a time, which no reader takes with one."""
    if isinstance(field, forms.ModelChoiceField):
        first = field.queryset.first()
        if first is None:
            return None
        value = f"0_{first.pk}"
        return [value] if isinstance(field, forms.ModelMultipleChoiceField) else value
    if isinstance(field, forms.IntegerField):  # Django's decimal and float fields are integer fields
        return f"0_{max(getattr(field, 'min_value', None) or 1, 1)}"
    return None


@pytest.mark.parametrize("written", [_in_other_digits, _with_an_underscore], ids=["other_digits", "underscore"])
def test_every_number_date_or_choice_of_an_admin_form_refuses_what_only_python_reads_as_one(
    rf, world, admin_erin, written
):
    """int(), Decimal() and strptime read any script's digits, and the first three an underscore
    between digits: a rate limit of "٣" or "0_3" was 3, a date "٢٠٢٦-١٢-٢٤" the 24th of December, a
    choice "١" or "0_1" the row of id 1. Each is refused as a value that is no number, date or
    choice, with its field's own message."""
    request = rf.get("/")
    request.user = admin_erin
    refused, failures = [], {}
    for model, model_admin in admin.site._registry.items():
        obj = world.get(model._meta.label_lower)
        for instance in {None, obj}:
            if instance is None and not model_admin.has_add_permission(request):
                continue
            if instance is not None and not model_admin.has_change_permission(request, instance):
                continue
            try:
                form = model_admin.get_form(request, instance)(instance=instance)
            except TypeError:  # a form that takes more than the admin's arguments
                continue
            for name, field in form.fields.items():
                if not isinstance(field, _NUMBER_OR_TIME_FIELDS):
                    continue
                value = written(field)
                if value is None:
                    continue
                try:
                    field.clean(value)
                except ValidationError as exc:
                    codes = {error.code for error in exc.error_list}
                    if not codes <= {"invalid", "invalid_choice", "invalid_date", "invalid_time"}:
                        failures[f"{model._meta.label_lower}.{name}"] = codes
                    refused.append(f"{model._meta.label_lower}.{name}")
                else:
                    failures[f"{model._meta.label_lower}.{name}"] = "taken"
    assert not failures, failures
    assert len(refused) > 10, refused


def test_an_id_or_a_time_written_with_digits_of_other_scripts_in_an_admin_url_names_nothing(client, admin_erin):
    """The object's page and a list's filters: "١" named the row of id 1, "١٩٧٠-01-01" a day."""
    segment = SegmentFactory()
    client.force_login(admin_erin)
    other = str(segment.pk).translate(ARABIC_DIGITS)
    assert client.get(f"/admin/audiences/segment/{segment.pk}/change/").status_code == 200
    assert client.get(f"/admin/audiences/segment/{other}/change/").status_code == 404
    assert client.get(f"/admin/audiences/segment/{other}/access/").status_code == 404
    for query in (
        f"id__exact={other}",
        f"id__in=1,{other}",
        f"created_by__id__exact={other}",
        "created_at__gte=１９７０-01-01",
        "created_at__date=" + "2026-01-01".translate(ARABIC_DIGITS),
    ):
        answer = client.get(f"/admin/audiences/segment/?{query}")
        assert answer.status_code == 302 and answer.url.endswith("?e=1"), (query, answer.status_code)
    # Text is text, whatever its digits.
    assert client.get(f"/admin/audiences/segment/?name__contains={other}").status_code == 200


@pytest.mark.embedded
def test_an_id_written_with_an_underscore_in_an_admin_url_or_selection_names_nothing(client, admin_erin):
    """int() reads "0_12" as 12: the object's page, its access page, a list's filters and a list
    action's selection named the row of id 12."""
    segment = SegmentFactory()
    client.force_login(admin_erin)
    written = f"0_{segment.pk}"
    assert client.get(f"/admin/audiences/segment/{written}/change/").status_code == 404
    assert client.get(f"/admin/audiences/segment/{written}/access/").status_code == 404
    for query in (f"id__exact={written}", f"id__in=1,{written}", f"created_by__id__exact={written}"):
        answer = client.get(f"/admin/audiences/segment/?{query}")
        assert answer.status_code == 302 and answer.url.endswith("?e=1"), (query, answer.status_code)
    answer = client.post(
        "/admin/audiences/segment/",
        {"action": "count_reach", "_selected_action": [written], "index": "0"},
        follow=True,
    )
    assert "Items are selected by their ids: nothing was done." in answer.content.decode()
    # Text is text, underscores and all.
    assert client.get(f"/admin/audiences/segment/?name__contains={written}").status_code == 200
