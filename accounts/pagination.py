"""How every API list is paged and documented, and how a list's query parameters are read.

Each list view declares its parameters as a serializer (``ListQuery`` or a subclass): the same
class documents them in the OpenAPI schema (enums, ranges) and validates them, so a value the
schema refuses is refused by the view with a 400 naming the parameter.

A list pages two ways. By offset, the default (``?limit=&offset=``): a count and links, in the
list's own order, for a person paging a screen. By cursor (``?paging=cursor``, then the ``next``
link's ``cursor``): a walk by id, newest first, for a program reading everything. An offset counts
rows, so a row inserted, or moved by an update of the column the list sorts by (journeys by
``updated_at``), while the pages are read shifts the rest: a row is skipped or read twice. A cursor
names the last row read, and ids neither move nor come back: a walk returns every row that exists
from its first page to its last exactly once, whatever is inserted or updated meanwhile. Each page
is one index range scan of the primary key, without the offset's count of the whole list.
"""

import re

from django.core import signing
from django.db.models import QuerySet
from drf_spectacular.utils import inline_serializer
from rest_framework import serializers
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.utils.urls import remove_query_param, replace_query_param

MAX_LIMIT = 1000
# A cursor is a signed JSON array, base64 with its signature: some 60 characters, never near this.
CURSOR_MAX_LENGTH = 200
CURSOR_WALK = "-id"  # the order of every cursor walk: by id, newest first


class ApiPagination(LimitOffsetPagination):
    """``?limit=&offset=`` pages of at most 1,000; an offset past any table's size gives an empty page.

    Without the caps a huge ``limit`` or ``offset`` overflows the database's bigint and fails.
    The view validates both first (``query_params_valid``); the caps hold for any caller.
    """

    max_limit = MAX_LIMIT
    max_offset = 2**62

    def get_offset(self, request):
        return min(super().get_offset(request), self.max_offset)

    def get_previous_link(self):
        """A page past the list's end links back to its last page with rows, not to the offset
        before the one given (an offset of 10**30, capped, linked to 4611686018427387804)."""
        if self.offset >= self.count > 0 or (self.count == 0 and self.offset > 0):
            self.offset = max(self.count - self.limit, 0) + self.limit
        return super().get_previous_link()


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


def _cursor_salt(request) -> str:
    """A cursor is good for the list whose page gave it, and no other (nor for any other signed value)."""
    return f"accounts.pagination.cursor:{request.path}"


def cursor_for(request, last_id: int) -> str:
    """The cursor of the page after the row ``last_id`` of this request's list."""
    return signing.dumps([CURSOR_WALK, last_id], salt=_cursor_salt(request), compress=False)


class QueryCursor(serializers.CharField):
    """A cursor from a page's ``next`` link, read as the id of the last row that page gave.

    The server signs it for the list's path: a forged, garbled or truncated cursor, or one of
    another list, is refused with a 400 naming ``cursor``, never read. It carries a position
    only: the rows of each page are those the key's user may see when that page is asked.
    """

    default_error_messages = {
        "invalid": "Not a cursor of this list: follow the next link of its last page, or start again with paging=cursor."
    }

    def __init__(self, **kwargs):
        super().__init__(required=False, trim_whitespace=False, max_length=CURSOR_MAX_LENGTH, **kwargs)

    def run_validation(self, data=serializers.empty):
        value = super().run_validation(data)  # blank, too long, a NUL or a lone surrogate: refused
        if not re.fullmatch(r"[A-Za-z0-9_:-]+", value):  # what signing writes (base64url, its separator)
            self.fail("invalid")
        try:
            walk, last_id = signing.loads(value, salt=_cursor_salt(self.context["request"]))
        except (signing.BadSignature, TypeError, ValueError):  # a good signature on a value of another shape
            self.fail("invalid")
        if walk != CURSOR_WALK or type(last_id) is not int or not 0 < last_id < 2**63:
            self.fail("invalid")
        return last_id


class ListQuery(serializers.Serializer):
    """The paging parameters of every list: by offset (the default) or by cursor."""

    limit = QueryInteger(
        required=False, min_value=1, max_value=MAX_LIMIT, help_text=f"Page size, 1 to {MAX_LIMIT} (default 100)."
    )
    offset = QueryInteger(required=False, min_value=0, help_text="Rows to skip (default 0); offset paging only.")
    paging = QueryChoice(
        ["offset", "cursor"],
        help_text="offset (the default): pages in the list's order, with a count. cursor: a walk by id, newest "
        "first, that returns every row existing from its first page to its last exactly once while rows are "
        "added or changed; its pages have no count, and each names the next in `next` (null on the last).",
    )
    cursor = QueryCursor(
        help_text="Where a cursor walk goes on: the value the `next` link of its previous page carries (opaque, "
        "signed; it implies paging=cursor and excludes offset). Filters given with it apply to each page."
    )

    def validate(self, data):
        if "cursor" in data and "offset" in data:
            raise serializers.ValidationError({"cursor": "Give cursor or offset, not both."})
        if "cursor" in data and data.get("paging") == "offset":
            raise serializers.ValidationError({"cursor": "A cursor pages by cursor: leave out paging=offset."})
        if data.get("paging") == "cursor" and "offset" in data:
            raise serializers.ValidationError({"offset": "A cursor walk takes no offset: follow its next links."})
        return data


def query_params_valid(query_class: type[serializers.Serializer], request) -> dict:
    """Validate the request's query parameters against ``query_class``; return the values given.

    Raises ValidationError naming each parameter whose value is malformed, out of range, not one
    of its choices, or given more than once. Parameters the class does not declare are ignored.
    """
    # A plain dict: an empty value is a value.
    query = query_class(data=request.query_params.dict(), context={"request": request})
    repeated = {name: ["Give one value."] for name in query.fields if len(request.query_params.getlist(name)) > 1}
    if repeated:
        raise serializers.ValidationError(repeated)
    query.is_valid(raise_exception=True)
    return query.validated_data


def page_schema(name: str, serializer: type[serializers.Serializer]) -> serializers.Serializer:
    """The documented answer of a list named ``name``: count, next, previous, and the results."""
    return inline_serializer(
        name,
        {
            "count": serializers.IntegerField(required=False, help_text="The rows in the list (offset paging only)."),
            "next": serializers.URLField(
                allow_null=True, help_text="The next page's link, null on the last page (a cursor walk's: its cursor)."
            ),
            "previous": serializers.URLField(
                required=False, allow_null=True, help_text="The previous page's link (offset paging only)."
            ),
            "results": serializer(many=True),
        },
    )


def rows_matching(rows: QuerySet, query: dict, **columns: str) -> QuerySet:
    """Filter ``rows`` by each validated query parameter given: ``columns`` maps a parameter to its column."""
    return rows.filter(**{column: query[name] for name, column in columns.items() if name in query})


def page_response(request, view, rows: QuerySet, serializer: type[serializers.Serializer], *, query: dict) -> Response:
    """Answer with the page of ``rows`` (ordered, filters applied) that the validated ``query`` asks
    for: by ``limit`` and ``offset``, or, paging by cursor, the ``limit`` rows after its cursor."""
    if "cursor" in query or query.get("paging") == "cursor":
        return _cursor_page(request, rows, serializer, query)
    paginator = ApiPagination()
    page = paginator.paginate_queryset(rows, request, view=view)
    return paginator.get_paginated_response(serializer(page, many=True).data)


def _cursor_page(request, rows: QuerySet, serializer: type[serializers.Serializer], query: dict) -> Response:
    """The next ``limit`` rows by id, newest first, below the cursor's: one more is read to know
    whether a next page exists (no count); the list's own order is not used, as it may move."""
    limit = query.get("limit", api_settings.PAGE_SIZE)
    rows = rows.order_by(CURSOR_WALK)
    if "cursor" in query:
        rows = rows.filter(pk__lt=query["cursor"])
    page = list(rows[: limit + 1])
    link = None
    if len(page) > limit:
        page = page[:limit]
        link = remove_query_param(remove_query_param(request.build_absolute_uri(), "paging"), "offset")
        last = page[-1]
        link = replace_query_param(
            link, "cursor", cursor_for(request, last["id"] if isinstance(last, dict) else last.pk)
        )
    return Response({"next": link, "results": serializer(page, many=True).data})
