"""Hostile query strings on every admin list: each parameter a list's filters expect (its filter
specs' own, and its date hierarchy's), the parameters the admin reads itself (ordering, page,
search, all, popup, to-field, error) and those a list or a page of ours reads beside Django's, sent
a word, a NUL, 5,000 characters, a negative, a number past any column, an overflowing float, a lone
UTF-16 surrogate, and twice. A list answers its page, Django's ?e=1 for a filter it cannot apply,
400 or 404: never a 500."""

import pytest
from django.contrib import admin
from django.contrib.admin.utils import get_fields_from_path
from django.db.models import Field
from django.urls import reverse

# Each sent as it stands in the query string, one request per parameter and value.
HOSTILE = {
    "word": "zz",
    "nul": "%00",
    "long": "x" * 5000,
    "negative": "-1",
    "past_any_column": "9" * 30,
    "overflowing_float": "1e400",
    "lone_surrogate": "%ED%A0%80",
}
# What every list reads whatever its filters: ordering, page, search, the whole list, a popup's.
LIST_QUERIES = [
    "o=x",
    "o=99",
    "o=-0.abc",
    "p=-1",
    "p=abc",
    "p=99999999",
    "q=%00",
    "q=%ED%A0%80",
    "q=%FF",
    "q=" + "x" * 5000,
    "all=",
    "_to_field=password",
    "_popup=1",
    "e=1",
]
# The parameters our lists read beside their filters' (a campaign's sends, a journey step's, a
# campaign's occurrences, a journey version's enrollments, a dispatch's deliveries).
OWN_PARAMETERS = {
    "delivery.dispatch": ["campaign", "journey_step"],
    "delivery.delivery": ["dispatch__id__exact"],
    "campaigns.occurrence": ["campaign__id__exact"],
    "journeys.enrollment": ["version__id__exact", "step"],
}
# Django's own views of one object and of a list: the pages our admins add are the others.
DJANGO_VIEWS = {"changelist", "add", "history", "delete", "change"}


def _date_queries(field: str) -> list[str]:
    year, month, day = f"{field}__year", f"{field}__month", f"{field}__day"
    return [
        f"{year}=abc",
        f"{year}=" + "9" * 30,
        f"{year}=-1",
        f"{year}=0",
        f"{year}=9999&{month}=12",
        f"{year}=2026&{month}=abc",
        f"{year}=2026&{month}=13",
        f"{year}=2026&{month}=2&{day}=31",
        f"{year}=2026&{month}=12&{day}=" + "9" * 30,
        f"{month}=12",
    ]


def _parameter_queries(name: str) -> list[str]:
    return [*(f"{name}={value}" for value in HOSTILE.values()), f"{name}=1&{name}=zz"]


def _filter_parameters(model_admin, request) -> set[str]:
    """The query parameters each of the list's filters expects, every filter of get_list_filter
    built as the ChangeList builds it (Django's ``get_filters``), those it would not show included:
    a relation's filter with one choice, an event name's with no event yet."""
    names = set()
    for list_filter in model_admin.get_list_filter(request):
        if callable(list_filter):
            spec = list_filter(request, {}, model_admin.model, model_admin)
        else:
            field, spec_class = list_filter if isinstance(list_filter, tuple | list) else (list_filter, None)
            path = field if not isinstance(field, Field) else None
            if path is not None:
                field = get_fields_from_path(model_admin.model, path)[-1]
            spec_class = spec_class or admin.FieldListFilter.create
            spec = spec_class(field, request, {}, model_admin.model, model_admin, field_path=path)
        names.update(spec.expected_parameters())
    return names


def _changelist_queries(model_admin, request) -> tuple[list[str], set[str]]:
    """The hostile queries for a list as its reader opens it, and the filter parameters they probe."""
    names = _filter_parameters(model_admin, request) | set(OWN_PARAMETERS.get(model_admin.opts.label_lower, ()))
    queries = [*LIST_QUERIES, *(query for name in sorted(names) for query in _parameter_queries(name))]
    if model_admin.date_hierarchy:
        queries += _date_queries(model_admin.date_hierarchy)
    return queries, names


def _own_pages(world, reader) -> list[str]:
    """Every page our admins add to Django's (reports, reviews, previews, access, progress),
    reversed for the world's object of its model (for a user's, the reader)."""
    pages = ["/admin/models/"]
    for model, model_admin in admin.site._registry.items():
        obj = reader if isinstance(reader, model) else world.get(model._meta.label_lower)
        prefix = f"{model._meta.app_label}_{model._meta.model_name}_"
        for pattern in model_admin.get_urls():
            if not pattern.name or pattern.name.removeprefix(prefix) in DJANGO_VIEWS:
                continue
            arguments = {name: obj.pk if obj is not None else 1 for name in pattern.pattern.converters}
            arguments |= {"action": "zz"} if "action" in arguments else {}
            pages.append(reverse(f"admin:{pattern.name}", kwargs=arguments))
    return pages


# What a page of ours is sent: none reads a list's parameters, the content's page its preview's profile.
OWN_PAGE_QUERIES = ["o=x", "p=abc", "q=%ED%A0%80", "_to_field=password", "_popup=1", "page=" + "9" * 30]


def _answer(client, url: str) -> int | str:
    """The status ``url`` answers, or the exception a view let through (a 500), with its line."""
    try:
        answer = client.get(url)
    except Exception as exc:  # noqa: BLE001 (reported below)
        frame = exc.__traceback__
        while frame.tb_next is not None:
            frame = frame.tb_next
        return f"{type(exc).__name__}: {exc} ({frame.tb_frame.f_code.co_filename}:{frame.tb_lineno})"
    if answer.status_code == 302 and not answer.url.endswith("?e=1"):
        return f"302 to {answer.url}"
    return answer.status_code


@pytest.mark.slow
def test_every_changelist_answers_hostile_query_strings_without_a_500(client, world, admin_erin):
    """Each list, and each page our admins add, answers every hostile query with a page, ?e=1, 400
    or 404 (403 or 405 for a page refusing its method). An Administrator opens every list with
    every filter (a Viewer's lists and filters are among them)."""
    reader = admin_erin
    client.force_login(reader)
    failures, probed, parameters = {}, set(), set()
    for model, model_admin in admin.site._registry.items():
        url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
        page = client.get(url)
        if page.status_code != 200:
            continue  # a list this reader may not open
        queries, names = _changelist_queries(model_admin, page.wsgi_request)
        parameters.update(f"{url}?{name}" for name in names)
        for query in queries:
            answer = _answer(client, f"{url}?{query}")
            if answer not in (200, 302, 400, 404):
                failures[f"{url}?{query[:80]}"] = answer
            probed.add((url, query.partition("=")[0]))
    content = reverse("admin:delivery_pushcontent_change", args=[world["delivery.pushcontent"].pk])
    own = [(url, query) for url in _own_pages(world, reader) for query in OWN_PAGE_QUERIES]
    for url, query in [*own, *((content, query) for query in _parameter_queries("preview_profile"))]:
        answer = _answer(client, f"{url}?{query}")
        if answer not in (200, 302, 400, 403, 404, 405):
            failures[f"{url}?{query[:80]}"] = answer
        probed.add((url, query.partition("=")[0]))
    assert not failures, failures
    assert len(parameters) > 40, sorted(parameters)
    assert len(probed) > 250, len(probed)
