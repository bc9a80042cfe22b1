"""How every API list is paged and documented, and how a list's query parameters are read.

Each list view declares its parameters as a serializer (``ListQuery`` or a subclass): the same
class documents them in the OpenAPI schema (enums, ranges) and validates them, so a value the
schema refuses is refused by the view with a 400 naming the parameter.
"""

import re

from django.db.models import QuerySet
from drf_spectacular.utils import inline_serializer
from rest_framework import serializers
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.response import Response

MAX_LIMIT = 1000


class ApiPagination(LimitOffsetPagination):
    """``?limit=&offset=`` pages of at most 1,000; an offset past any table's size gives an empty page.

    Without the caps a huge ``limit`` or ``offset`` overflows the database's bigint and fails.
    The view validates both first (``query_params_valid``); the caps hold for any caller.
    """

    max_limit = MAX_LIMIT
    max_offset = 2**62

    def get_offset(self, request):
        return min(super().get_offset(request), self.max_offset)


class QueryInteger(serializers.IntegerField):
    """A whole number written as plain digits: "1.0", "1e3", " 7" or "null" are refused."""

    default_error_messages = {"invalid": "A whole number is required."}

    def to_internal_value(self, data):
        if isinstance(data, str) and not re.fullmatch(r"-?[0-9]+", data):
            self.fail("invalid")
        return super().to_internal_value(data)


class QueryChoice(serializers.ChoiceField):
    """One of the listed values; the error lists them."""

    def __init__(self, choices, **kwargs):
        kwargs.setdefault("required", False)
        super().__init__(choices, **kwargs)
        self.error_messages["invalid_choice"] = "Unknown value “{input}”; use " + ", ".join(map(str, choices)) + "."


class ListQuery(serializers.Serializer):
    """The paging parameters of every offset-paged list."""

    limit = QueryInteger(
        required=False, min_value=1, max_value=MAX_LIMIT, help_text=f"Page size, 1 to {MAX_LIMIT} (default 100)."
    )
    offset = QueryInteger(required=False, min_value=0, help_text="Rows to skip (default 0).")


def query_params_valid(query_class: type[serializers.Serializer], request) -> dict:
    """Validate the request's query parameters against ``query_class``; return the values given.

    Raises ValidationError naming each parameter whose value is malformed, out of range, not one
    of its choices, or given more than once. Parameters the class does not declare are ignored.
    """
    query = query_class(data=request.query_params.dict())  # a plain dict: an empty value is a value
    repeated = {name: ["Give one value."] for name in query.fields if len(request.query_params.getlist(name)) > 1}
    if repeated:
        raise serializers.ValidationError(repeated)
    query.is_valid(raise_exception=True)
    return query.validated_data


def page_schema(name: str, serializer: type[serializers.Serializer]) -> serializers.Serializer:
    """The documented answer of an offset-paged list named ``name``: count, next, previous, and the results."""
    return inline_serializer(
        name,
        {
            "count": serializers.IntegerField(),
            "next": serializers.URLField(allow_null=True),
            "previous": serializers.URLField(allow_null=True),
            "results": serializer(many=True),
        },
    )


def rows_matching(rows: QuerySet, query: dict, **columns: str) -> QuerySet:
    """Filter ``rows`` by each validated query parameter given: ``columns`` maps a parameter to its column."""
    return rows.filter(**{column: query[name] for name, column in columns.items() if name in query})


def page_response(request, view, rows: QuerySet, serializer: type[serializers.Serializer]) -> Response:
    """Answer with the page of ``rows`` (ordered, validated parameters applied) that ``limit`` and ``offset`` ask for."""
    paginator = ApiPagination()
    page = paginator.paginate_queryset(rows, request, view=view)
    return paginator.get_paginated_response(serializer(page, many=True).data)
