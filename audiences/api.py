"""The audiences API: profiles and events (``ingest``), segments (``read``), CSV imports.

Bulk calls answer per item: the good items land, each bad one is reported with its index and
its errors (``{"field", "code", "detail"}``, as everywhere in the API).
"""

from __future__ import annotations

import datetime as dt
import math

from django.conf import settings
from django.core.exceptions import NON_FIELD_ERRORS
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, QueryDict
from django.urls import path
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import exceptions, serializers, status
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.api import (
    INGEST_THROTTLED,
    AnswerSerializer,
    ErrorsInJson,
    FieldNotFound,
    FieldRefused,
    JsonCharField,
    JsonDateTimeField,
    JsonObjectField,
    TextIntegerField,
    _flatten,
    api_exception_handler,
)
from accounts.authentication import IngestRateLimited, request_stamps
from accounts.idempotency import (
    IDEMPOTENCY_KEY_PARAMETER,
    IN_PROGRESS_ANSWER,
    KEY_REUSED_ANSWER,
    idempotency_key_read,
    idempotent_call_open,
    idempotent_replayed_header,
    idempotent_request_answer,
    idempotent_request_free,
)
from accounts.json_values import (
    FLOAT_LIMIT,
    MAX_DEPTH,
    TEXT_REFUSED,
    json_compact,
    json_parse,
    json_value_problem,
)
from accounts.models import ApiKey
from accounts.pagination import ListQuery, QueryInteger, page_response, page_schema, query_params_valid
from accounts.parsers import ApiFormParser, ApiJSONParser, ApiMultiPartParser
from audiences.imports import ErrorFile, ImportRefused, columns_problem
from audiences.models import EventBulkRequest, Import, Profile, Segment
from audiences.rules.schema import KEY_RE, RulesInvalid
from audiences.selectors import (
    UNREAD_CODES,
    imports_visible_to_key,
    profiles_visible_to,
    segment_for,
    segments_visible_to,
)
from audiences.services.events import (
    FUTURE_LIMIT,
    MAX_PROPERTIES_BYTES,
    EventsNotStored,
    event_check,
    event_listener_stamps,
    events_ingest,
)
from audiences.services.imports import ERROR_FILE_MISSING, import_create
from audiences.services.profiles import (
    external_id_problem,
    profile_check,
    profiles_delete,
    profiles_upsert,
    text_problem,
)
from audiences.services.segments import segment_preview

# --- serializers --------------------------------------------------------------------------------


class ProfileInSerializer(serializers.Serializer):
    external_id = JsonCharField(max_length=255, trim_whitespace=False)
    attributes = JsonObjectField(required=False, allow_empty=True, help_text="Merged; a null removes a name.")
    locale = JsonCharField(required=False, allow_blank=True, max_length=35)
    timezone = JsonCharField(required=False, allow_blank=True, max_length=64)
    last_seen_at = JsonDateTimeField(required=False, allow_null=True)

    def validate(self, attrs):
        problems = profile_check(attrs)
        if problems:
            raise serializers.ValidationError(problems)
        return attrs


class ProfileOutSerializer(AnswerSerializer):
    class Meta:
        model = Profile
        fields = ("external_id", "attributes", "locale", "timezone", "created_at", "updated_at", "last_seen_at")


# What an upsert answers to a key without the ``read`` scope: the key a mobile app ships is public,
# and an answer holding the stored profile let anyone read any user's attributes by sending their
# external id with nothing to change.
UPSERT_ANSWER_FIELDS = ("external_id", "result")


class ProfileUpsertOutSerializer(ProfileOutSerializer):
    """``external_id`` and ``result`` always; the profile as stored, merged, only to a key that may
    also read profiles (``read`` scope)."""

    result = serializers.ChoiceField(choices=["created", "updated", "unchanged"], help_text="What the call did.")

    class Meta(ProfileOutSerializer.Meta):
        fields = (*ProfileOutSerializer.Meta.fields, "result")

    def get_fields(self):
        fields = super().get_fields()
        for name, field in fields.items():
            if name not in UPSERT_ANSWER_FIELDS:  # in the schema: present with the read scope only
                field.read_only, field.required = False, False
        return fields


class EventInSerializer(serializers.Serializer):
    external_id = JsonCharField(max_length=255, trim_whitespace=False)
    name = JsonCharField(max_length=100)
    properties = JsonObjectField(required=False, allow_empty=True)
    occurred_at = JsonDateTimeField()

    def validate(self, attrs):
        problems = event_check(attrs)
        if problems:
            raise serializers.ValidationError(problems)
        return attrs


def _events_validated(items: list, *, now: dt.datetime) -> list[dict | None]:
    """Each item as ``EventInSerializer`` validates it, or None where the serializer must look at it.

    A shortcut for the usual items (text fields, an object of properties, an ISO 8601 time with an
    offset), checked in one pass over the call with ``event_check``'s rules included, many times
    cheaper than DRF's field machinery: the strings of every item are searched for a NUL or a lone
    surrogate at once, each time parsed once. It accepts nothing the serializer refuses and returns
    what the serializer returns; anything else, every item with a problem included, is left to the
    serializer, which words the errors.
    """
    zone = timezone.get_current_timezone()
    latest = now + FUTURE_LIMIT
    parse, key_ok = dt.datetime.fromisoformat, KEY_RE.match
    taken: list[dict | None] = []
    texts: list[str] = []
    for item in items:
        taken.append(None)
        if type(item) is not dict:
            continue
        external_id, name, when = item.get("external_id"), item.get("name"), item.get("occurred_at")
        if type(external_id) is not str or type(name) is not str or type(when) is not str:
            continue
        name = name.strip()  # the name field trims; an external_id with white space around it is refused
        if (
            not external_id
            or external_id.strip() != external_id
            or len(external_id) > 255
            or not name
            or len(name) > 100
        ):
            continue
        try:  # DRF's DateTimeField tries fromisoformat first; what it leaves goes to the serializer
            occurred_at = parse(when)
            if occurred_at.tzinfo is None:
                continue
            occurred_at = occurred_at.astimezone(zone)
        except (ValueError, OverflowError):
            continue
        if occurred_at > latest:
            continue
        data = {"external_id": external_id, "name": name, "occurred_at": occurred_at}
        if "properties" in item:
            properties = data["properties"] = item["properties"]
            if type(properties) is not dict or not all(map(key_ok, properties)):
                continue
            # At most how long their JSON is, so that the usual small ones are not encoded to be
            # measured: a key (ASCII, KEY_RE) with its quotes, colon and comma; a text escaped
            # whole (an astral character is two \uXXXX); a number as Python writes it.
            flat, size = True, 1
            for key, value in properties.items():
                kind = type(value)
                size += len(key) + 4
                if kind is str:
                    texts.append(value)
                    size += 12 * len(value) + 2
                elif kind is float:
                    if not math.isfinite(value):
                        break
                    size += 24
                elif kind is int:
                    if -(10**18) < value < 10**18:
                        size += 20
                    elif -FLOAT_LIMIT < value < FLOAT_LIMIT:
                        size += len(str(value))
                    else:
                        break
                elif kind is bool or value is None:
                    size += 5
                else:
                    flat = False
            else:
                if not flat and json_value_problem(properties, max_bytes=None) is not None:
                    continue
                if (not flat or size > MAX_PROPERTIES_BYTES) and len(json_compact(properties)) > MAX_PROPERTIES_BYTES:
                    continue
                texts.append(external_id)
                texts.append(name)
                taken[-1] = data
            continue
        texts.append(external_id)
        texts.append(name)
        taken[-1] = data
    if TEXT_REFUSED.search("\n".join(texts)):  # rare: find the items that hold one
        for index, data in enumerate(taken):
            if data is not None and any(
                type(text) is str and TEXT_REFUSED.search(text)
                for text in (data["external_id"], data["name"], *data.get("properties", {}).values())
            ):
                taken[index] = None
    return taken


class SegmentOutSerializer(AnswerSerializer):
    class Meta:
        model = Segment
        fields = (
            "id",
            "name",
            "description",
            "kind",
            "rules",
            "last_count",
            "last_counted_at",
            "created_at",
            "updated_at",
        )


class ImportOutSerializer(AnswerSerializer):
    percent = serializers.FloatField(read_only=True)
    seconds_left = serializers.FloatField(read_only=True, allow_null=True)
    segment = serializers.PrimaryKeyRelatedField(read_only=True, allow_null=True)
    waiting_for = serializers.PrimaryKeyRelatedField(
        read_only=True,
        allow_null=True,
        help_text="Queued behind this import into the same segment: imports into one segment take turns, "
        "and this one runs once that one has finished (null: not waiting).",
    )
    error_file_url = serializers.SerializerMethodField()

    class Meta:
        model = Import
        fields = (
            "id",
            "status",
            "original_name",
            "size",
            "encoding",
            "separator",
            "target",
            "segment",
            "waiting_for",
            "rows_done",
            "rows_imported",
            "rows_failed",
            "rows_duplicate",
            "percent",
            "seconds_left",
            "error",
            "members_removed",
            "note",
            "error_file_url",
            "created_at",
            "started_at",
            "run_started_at",
            "finished_at",
        )

    def get_error_file_url(self, obj) -> str | None:
        if not obj.error_file:
            return None
        request = self.context.get("request")
        url = f"/api/v1/imports/{obj.pk}/errors/"
        return request.build_absolute_uri(url) if request else url


class ColumnsField(serializers.JSONField):
    """A JSON object, or (multipart) its text: ``validate_columns`` parses the text with ``json_parse``,
    which refuses any nesting depth without ever hitting Python's recursion limit."""

    def to_internal_value(self, data):
        if isinstance(data, str):
            return str(data)
        return super().to_internal_value(data)


class ImportInSerializer(serializers.Serializer):
    file = serializers.FileField()
    encoding = serializers.ChoiceField(choices=Import.Encoding.values, default="utf-8")
    target = serializers.ChoiceField(choices=Import.Target.values, default="profiles")
    segment = TextIntegerField(required=False, min_value=1, help_text="The static segment's id.")
    segment_name = JsonCharField(required=False, allow_blank=True, max_length=200, default="")
    columns = ColumnsField(
        required=False, help_text="Per CSV column: {'to': attribute name, 'type': auto|string|number|boolean|date|skip}"
    )

    def to_internal_value(self, data):
        if isinstance(data, QueryDict):  # a form body: a field given twice is refused, as a query's parameter is
            repeated = {name: ["Give one value."] for name in self.fields if len(data.getlist(name)) > 1}
            if repeated:
                raise serializers.ValidationError(repeated)
        return super().to_internal_value(data)

    def validate_columns(self, value):
        if isinstance(value, str):
            try:
                value = json_parse(value, max_depth=MAX_DEPTH, unique_keys=True)
            except DjangoValidationError as exc:  # the columns as a whole are named as the field itself
                found = exc.message_dict
                raise serializers.ValidationError(found.get(NON_FIELD_ERRORS) or found) from exc
            except ValueError as exc:
                raise serializers.ValidationError("Not JSON.") from exc
        if value is not None and not isinstance(value, dict):
            raise serializers.ValidationError("Must be an object: CSV column → {'to', 'type'}.")
        found = json_value_problem(value or {}) or columns_problem(value or {})
        if found is not None:
            where, message = found
            raise serializers.ValidationError({where: [message]} if where else [message])
        return value or {}


def _item_errors(serializer) -> list[dict]:
    return _flatten(serializer.errors)


def _bulk_items(request, key: str) -> list:
    items = request.data.get(key) if isinstance(request.data, dict) else None
    if not isinstance(items, list):
        raise serializers.ValidationError(
            {key: f"Send {{'{key}': [...]}}, a list of at most {settings.AUDIENCES_BULK_MAX_ITEMS}."}
        )
    if len(items) > settings.AUDIENCES_BULK_MAX_ITEMS:
        raise serializers.ValidationError(
            {key: f"At most {settings.AUDIENCES_BULK_MAX_ITEMS} items per call, got {len(items)}."}
        )
    return items


def _bulk_list(item: str) -> serializers.ListField:
    """A bulk call's items: any JSON value each, since each is checked alone and answered in ``results``."""
    return serializers.ListField(
        child=serializers.JSONField(),
        max_length=settings.AUDIENCES_BULK_MAX_ITEMS,
        help_text=f"At most {settings.AUDIENCES_BULK_MAX_ITEMS} items, each {item}. Each item is checked on its "
        "own: a bad one is answered in `results` with its errors, and the others land.",
    )


BULK_RESULT = inline_serializer(
    "BulkResult",
    {
        "results": serializers.ListField(child=serializers.DictField()),
        "accepted": serializers.IntegerField(),
        "failed": serializers.IntegerField(),
    },
)


# --- profiles ----------------------------------------------------------------------------------


class ProfileUpsertView(IngestRateLimited, APIView):
    """Create or update one profile by its external id (attributes are merged). The answer holds the
    profile as stored only for a key that also has the ``read`` scope."""

    required_scope = "ingest"

    @extend_schema(
        operation_id="profile_upsert",
        request=ProfileInSerializer,
        responses={200: ProfileUpsertOutSerializer, 201: ProfileUpsertOutSerializer, 429: INGEST_THROTTLED},
    )
    def post(self, request):
        serializer = ProfileInSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        result = profiles_upsert(items=[serializer.validated_data], by=request.user)[0]
        if result.status == "refused":
            raise serializers.ValidationError(result.errors)
        if "read" in getattr(request.auth, "scopes", ()):
            answer = {**ProfileOutSerializer(Profile.objects.get(pk=result.profile_id)).data, "result": result.status}
        else:
            answer = {"external_id": result.external_id, "result": result.status}
        return Response(answer, status=status.HTTP_201_CREATED if result.status == "created" else status.HTTP_200_OK)


# An erasure needs ``read`` besides ``ingest``: the key a mobile app ships (ingest alone) is public,
# and with it anyone could erase any user by their external id.
ERASE_SCOPE_REFUSED = (
    "Erasing a profile needs a key with the 'read' scope as well as 'ingest': the key an app ships "
    "(ingest alone) is public, and erases no one."
)
ERASE_RULES = (
    "Its events, devices, segment memberships and journey enrollments go with it, in one transaction, as "
    "when it is deleted in the admin; the approvals of campaigns and journeys reading a kept list it was in "
    "stand. Needs the `ingest` and `read` scopes (403 `insufficient_scope`) and a role that deletes "
    "profiles, Manager or Administrator (403 `permission_denied`), whose access reaches all of it: a "
    "profile with a device, an enrollment or a kept list's membership in an app, journey or segment "
    "outside the key's access is erased by none of it (403 `permission_denied`, saying neither how many "
    "nor which). Answers 204; 404 `not_found` when there "
    "is no such profile, so a call sent again changes nothing; an external id with white space around it, "
    "unless a profile is kept under exactly that id from before such ids were refused (it is erased; the "
    "id is never trimmed), or over 255 characters, 400 naming `external_id`."
)
ERASE_RESPONSES = {
    204: OpenApiResponse(description="Erased."),
    404: OpenApiResponse(
        description="`not_found`: no profile has this external id (erased already, or never written)."
    ),
}


def _external_id_checked(external_id: str) -> None:
    """Refuse, with 400 naming ``external_id``, an id no profile can have (blank, over 255
    characters, a NUL or a lone surrogate), before the database is asked."""
    if problem := text_problem(external_id, max_length=255):
        raise serializers.ValidationError({"external_id": [problem]})


def _external_id_unknown(external_id: str) -> None:
    """Answer an id no visible profile holds: 400 naming ``external_id`` when white space is around
    it, else nothing (the caller answers 404).

    Such an id is refused (it creates nothing on a profile's path, but says the same as every call
    that might), unless a profile is kept under exactly that id from before the rule: it is read and
    erased by it, so a privacy request for it is still answerable. Matched exactly, never trimmed:
    " u1" reads and erases no "u1".
    """
    if problem := external_id_problem(external_id):
        raise serializers.ValidationError({"external_id": [problem]})


def _profile_erase(request, external_id: str) -> Response:
    """Erase one profile by external id through ``profiles_delete``, as the admin does."""
    if ApiKey.Scope.READ not in request.auth.scopes:
        raise exceptions.PermissionDenied(detail=ERASE_SCOPE_REFUSED, code="insufficient_scope")
    _external_id_checked(external_id)
    profile_ids = list(profiles_visible_to(request.user).filter(external_id=external_id).values_list("pk", flat=True))
    if not profile_ids:
        _external_id_unknown(external_id)
    # Called with no profile too: the role is checked first, so a key whose user may not delete
    # profiles is refused (403) whether the profile exists or not, and learns nothing of it.
    if not profiles_delete(profile_ids=profile_ids, by=request.user):
        raise exceptions.NotFound(f'No profile has the external id "{external_id}".')
    return Response(status=status.HTTP_204_NO_CONTENT)


class ProfileDetailView(APIView):
    """One profile, by external id: read it, or erase it."""

    @property
    def required_scope(self) -> str:
        return "ingest" if self.request.method == "DELETE" else "read"

    @extend_schema(
        operation_id="profile_detail",
        description="One profile, by external id. 404 `not_found` when no profile has it; an external id "
        "with white space around it, unless a profile is kept under exactly that id from before such ids "
        "were refused (it is read; the id is never trimmed), or over 255 characters, 400 naming `external_id`, "
        "as its erasure answers.",
        responses=ProfileOutSerializer,
    )
    def get(self, request, external_id: str):
        _external_id_checked(external_id)
        profile = profiles_visible_to(request.user).filter(external_id=external_id).first()
        if profile is None:
            _external_id_unknown(external_id)
            raise Http404
        return Response(ProfileOutSerializer(profile).data)

    @extend_schema(
        operation_id="profile_erase",
        description="Erase the profile (a privacy erasure request). " + ERASE_RULES,
        responses=ERASE_RESPONSES,
    )
    def delete(self, request, external_id: str):
        return _profile_erase(request, external_id)


class ProfileBulkView(IngestRateLimited, APIView):
    """Upsert up to 1,000 profiles; answers per item, and the good items land. A GET or a DELETE of
    its path reads or erases the profile whose external id is "bulk", as
    ``/api/v1/profiles/{external_id}/`` does any other."""

    @property
    def required_scope(self) -> str:
        return "read" if self.request.method == "GET" else "ingest"

    @extend_schema(
        operation_id="profile_detail_bulk",
        description='The profile whose external id is "bulk" (this path is also the bulk upsert\'s).',
        responses=ProfileOutSerializer,
    )
    def get(self, request):
        return ProfileDetailView().get(request, external_id="bulk")

    @extend_schema(
        operation_id="profile_erase_bulk",
        description='Erase the profile whose external id is "bulk" (this path is also the bulk upsert\'s), as '
        "`DELETE /api/v1/profiles/{external_id}/` erases any other. " + ERASE_RULES,
        responses=ERASE_RESPONSES,
    )
    def delete(self, request):
        return _profile_erase(request, "bulk")

    @extend_schema(
        operation_id="profiles_bulk_upsert",
        request=inline_serializer(
            "ProfileBulk", {"profiles": _bulk_list("a profile as POST /api/v1/profiles/ takes it")}
        ),
        responses={200: BULK_RESULT, 429: INGEST_THROTTLED},
    )
    def post(self, request):
        items = _bulk_items(request, "profiles")
        results: list[dict | None] = [None] * len(items)
        good: list[tuple[int, dict]] = []
        for index, item in enumerate(items):
            serializer = ProfileInSerializer(data=item if isinstance(item, dict) else {})
            if not isinstance(item, dict):
                results[index] = {
                    "index": index,
                    "status": "error",
                    "errors": [{"field": None, "code": "invalid", "detail": "Each item must be an object."}],
                }
            elif serializer.is_valid():
                good.append((index, serializer.validated_data))
            else:
                results[index] = {"index": index, "status": "error", "errors": _item_errors(serializer)}
        if good:
            upserted = profiles_upsert(items=[data for _, data in good], by=request.user)
            for (index, _), result in zip(good, upserted, strict=True):
                if result.status == "refused":
                    results[index] = {"index": index, "status": "error", "errors": _flatten(result.errors)}
                else:
                    results[index] = {"index": index, "status": result.status, "external_id": result.external_id}
        failed = sum(1 for r in results if r["status"] == "error")
        return Response({"results": results, "accepted": len(results) - failed, "failed": failed})


# --- events ------------------------------------------------------------------------------------


class EventsNotStoredAnswer(exceptions.APIException):
    """What reacts to the events (journeys' entries and exits) failed, and recording it for a
    replay failed too (the database connection): the events were not stored."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_code = "events_not_stored"
    default_detail = "No event of this call was stored (handling them failed): send the same call again."
    wait = 1  # Retry-After, in seconds


class EventBulkView(IngestRateLimited, APIView):
    """Store up to 1,000 events; answers per item, and the good items land with the journey entries and exits they cause.

    With an ``Idempotency-Key`` header, the same key and body replay the first answer (nothing is
    stored again, no journey entered again); the same key with another body answers 422; a request
    still running answers 409.
    """

    required_scope = "ingest"

    def stamp_names(self, kwargs) -> list[str]:
        return event_listener_stamps()  # read with the key's, handed to the listeners

    @extend_schema(
        operation_id="events_bulk",
        request=inline_serializer(
            "EventBulk",
            {
                "events": _bulk_list(
                    "an event, required: `external_id`, `name`, `occurred_at` (ISO 8601 with a time zone, at most a "
                    "day ahead); optional: `properties` (an object)"
                )
            },
        ),
        responses={
            200: BULK_RESULT,
            409: OpenApiResponse(description=IN_PROGRESS_ANSWER),
            429: INGEST_THROTTLED,
            422: OpenApiResponse(description=KEY_REUSED_ANSWER),
            503: OpenApiResponse(
                description="`events_not_stored`: handling the events (entering or ending journeys) "
                "failed and could not be recorded to run again (the database failed), so none of the "
                "call's events was stored; send the same call again after `Retry-After` seconds. "
                "When only the handling fails, the events are stored (200) and it runs again later. "
                "Never replayed: a call sent again with its Idempotency-Key runs."
            ),
        },
        parameters=[
            IDEMPOTENCY_KEY_PARAMETER,
            idempotent_replayed_header(200),
            OpenApiParameter(
                "Retry-After",
                int,
                OpenApiParameter.HEADER,
                response=[503],
                description="Seconds to wait before sending the same call again.",
            ),
        ],
    )
    def post(self, request):
        idempotency_key = idempotency_key_read(request)  # a header: no query without one
        if not idempotency_key:
            return self._events_store(request, record=None)
        record, replayed = idempotent_call_open(request, EventBulkRequest, idempotency_key=idempotency_key)
        if replayed is not None:
            return replayed
        try:
            return self._events_store(request, record=record)
        except serializers.ValidationError as exc:
            # An answer about the body is the body's for good: kept, and replayed, as the trigger's.
            response = api_exception_handler(exc, {"view": self})
            idempotent_request_answer(record=record, status_code=response.status_code, body=response.data)
            return response
        except BaseException:
            # Nothing was stored (a 503 events_not_stored, a role refused): the retry must run.
            idempotent_request_free(record=record)
            raise

    def _events_store(self, request, *, record: EventBulkRequest | None) -> Response:
        """Check each item, store the good ones; with ``record`` (an Idempotency-Key's), store the
        answer on it in the events' transaction."""
        items = _bulk_items(request, "events")
        results: list[dict | None] = [None] * len(items)
        good: list[dict] = []
        where: list[int] = []
        # One serializer checks every item the shortcut leaves, as a ListSerializer's child does:
        # building one per item (its fields are deep-copied each time) cost more than the checks.
        serializer = EventInSerializer()
        for index, data in enumerate(_events_validated(items, now=timezone.now())):
            if data is None:
                if not isinstance(items[index], dict):
                    results[index] = {
                        "index": index,
                        "status": "error",
                        "errors": [{"field": None, "code": "invalid", "detail": "Each item must be an object."}],
                    }
                    continue
                try:
                    data = serializer.run_validation(items[index])
                except serializers.ValidationError as exc:
                    results[index] = {"index": index, "status": "error", "errors": _flatten(exc.detail)}
                    continue
            good.append(data)
            where.append(index)

        def answer(ids: list[int]) -> dict:
            for index, event_id in zip(where, ids, strict=True):
                results[index] = {"index": index, "status": "accepted", "id": event_id}
            return {"results": results, "accepted": len(good), "failed": len(results) - len(good)}

        def answer_stored(ids: list[int]) -> None:
            idempotent_request_answer(record=record, status_code=200, body=answer(ids))

        if not good:
            body = answer([])
            if record is not None:
                idempotent_request_answer(record=record, status_code=200, body=body)
            return Response(body)
        # Each item passed event_check once, here, through the shortcut or the serializer.
        try:
            ids = events_ingest(
                items=good,
                by=request.user,
                stamps=request_stamps(request),
                checked=True,
                on_stored=answer_stored if record is not None else None,
            )
        except EventsNotStored as exc:
            raise EventsNotStoredAnswer() from exc
        return Response(answer(ids))


# --- segments ----------------------------------------------------------------------------------


class SegmentListView(APIView):
    """The segments this key's user may see, by name (a cursor walk: by id, newest first, as a rename moves a name)."""

    required_scope = "read"

    @extend_schema(
        operation_id="segments_list",
        parameters=[ListQuery],
        responses=page_schema("PaginatedSegmentOutList", SegmentOutSerializer),
    )
    def get(self, request):
        query = query_params_valid(ListQuery, request)
        segments = segments_visible_to(request.user).order_by("name", "id")
        return page_response(request, self, segments, SegmentOutSerializer, query=query)


class SegmentDetailView(APIView):
    required_scope = "read"

    @extend_schema(operation_id="segment_detail", responses=SegmentOutSerializer)
    def get(self, request, segment_id: int):
        return Response(SegmentOutSerializer(segment_for(request.user, segment_id)).data)


class SegmentPreviewQuery(serializers.Serializer):
    sample = QueryInteger(required=False, min_value=0, max_value=100, help_text="Sample size, 0 to 100 (default 20).")


class SegmentReachSerializer(serializers.Serializer):
    app = serializers.IntegerField(help_text="The app's id.")
    name = serializers.CharField(help_text="The app's name.")
    profiles = serializers.IntegerField(help_text="Profiles in the segment.")
    reachable = serializers.IntegerField(help_text="Of those, profiles with an active device of the app.")
    ios = serializers.IntegerField(help_text="Reachable profiles with an iOS device of the app.")
    android = serializers.IntegerField(help_text="Reachable profiles with an Android device of the app.")
    opted_in = serializers.IntegerField(help_text="Reachable profiles with a device that allows notifications.")


class SegmentWarningSerializer(serializers.Serializer):
    code = serializers.ChoiceField(
        choices=UNREAD_CODES,
        help_text="`number_as_text`: the attribute is held as text a number rule does not read (a number is read "
        'from text written plainly: "42", "-7", "4.5"; not "042", "42.0", " 42"). `text_with_white_space`: the '
        "attribute is held as text with white space around it, which is, is not, is one of and is none of "
        'compare whole ("pro " is not "pro"). Either way those profiles match no such condition.',
    )
    attribute = serializers.CharField(help_text="The custom attribute the rules read.")
    count = serializers.IntegerField(help_text="How many of the newest profiles read hold such a value.")
    sampled = serializers.IntegerField(help_text="How many profiles were read: the newest, at most 5,000.")
    example = serializers.CharField(help_text="One such value, as stored.", trim_whitespace=False)
    message = serializers.CharField(help_text="The warning in a sentence, as the admin's rule builder shows it.")


class SegmentPreviewView(APIView):
    """The segment's profile count now, a sample of profiles, what a send would reach in each
    app the key's user sees (profiles → reachable → opted in; the first 5 apps by name), and
    warnings of values its rules read as nothing among the newest profiles."""

    required_scope = "read"

    @extend_schema(
        operation_id="segment_preview",
        parameters=[SegmentPreviewQuery],
        responses=inline_serializer(
            "SegmentPreview",
            {
                "count": serializers.IntegerField(),
                "sample": ProfileOutSerializer(many=True),
                "took_ms": serializers.IntegerField(),
                "reach": SegmentReachSerializer(
                    many=True, help_text="Per app the key's user sees (the first 5 by name); empty when count is 0."
                ),
                "warnings": SegmentWarningSerializer(
                    many=True,
                    help_text="Values the segment's attribute conditions read as nothing, counted among the 5,000 "
                    "newest profiles: one per attribute and kind, with an example. Empty when there are none "
                    "(and for static and imported segments).",
                ),
            },
        ),
    )
    def get(self, request, segment_id: int):
        size = query_params_valid(SegmentPreviewQuery, request).get("sample", settings.AUDIENCES_PREVIEW_SAMPLE)
        try:
            preview = segment_preview(by=request.user, segment_id=segment_id, sample_size=size)
        except RulesInvalid as exc:
            raise serializers.ValidationError({"rules": [str(e) for e in exc.errors]}) from exc
        return Response(
            {
                "count": preview.count,
                "sample": ProfileOutSerializer(preview.sample, many=True).data,
                "took_ms": preview.took_ms,
                "reach": preview.reach,
                "warnings": preview.warnings,
            }
        )


# --- imports -----------------------------------------------------------------------------------


# The targets that change an existing static segment's members: a replace removes every member
# the file does not name. The key an app ships (ingest alone, public) may not: anyone holding it
# could empty the segment a campaign sends to, or put themselves in it.
SEGMENT_MEMBERS_TARGETS = (Import.Target.ADD_TO_SEGMENT, Import.Target.REPLACE_SEGMENT)


class ImportCreateView(APIView):
    """Upload a CSV file (multipart ``file``) and queue its import. Answers 202 with its status.

    ``add_to_segment`` and ``replace_segment`` need the ``read`` scope besides ``ingest`` (403
    ``insufficient_scope`` naming ``target``)."""

    required_scope = "ingest"
    parser_classes = [ApiMultiPartParser, ApiFormParser, ApiJSONParser]

    @extend_schema(
        operation_id="import_create",
        request={"multipart/form-data": ImportInSerializer},
        responses={202: ImportOutSerializer},
    )
    def post(self, request):
        serializer = ImportInSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        if data["target"] in SEGMENT_MEMBERS_TARGETS and ApiKey.Scope.READ not in request.auth.scopes:
            raise FieldRefused(
                field="target",
                code="insufficient_scope",
                detail=f"An import that changes a static segment's members ({data['target']}) needs a key "
                "with the 'read' scope as well as 'ingest': a key that cannot read the segment does not "
                "change who is in it.",
            )
        try:
            record = import_create(
                upload=data["file"],
                by=request.user,
                encoding=data["encoding"],
                columns=data.get("columns") or {},
                target=data["target"],
                segment_id=data.get("segment"),
                segment_name=data.get("segment_name", ""),
                by_key=request.auth,
            )
        except ImportRefused as exc:  # the file as a whole, or its mapping: named as such, not as the body
            raise serializers.ValidationError({exc.field: exc.messages}) from exc
        except Http404 as exc:  # the segment to change: missing, or outside the key's access alike
            raise FieldNotFound(field="segment", detail="No segment with this id.") from exc
        record.refresh_from_db()
        return Response(ImportOutSerializer(record, context={"request": request}).data, status=status.HTTP_202_ACCEPTED)


class _ReadOrIngest:
    """Status reads accept a key with either scope: the integrator polls with the key that uploaded.
    A key without ``read`` reads only the imports it uploaded itself: any other answers 404."""

    @property
    def required_scope(self):
        key = getattr(self.request, "auth", None)
        scopes = getattr(key, "scopes", []) or []
        return "ingest" if "ingest" in scopes and "read" not in scopes else "read"


class ImportDetailView(_ReadOrIngest, APIView):
    @extend_schema(operation_id="import_detail", responses=ImportOutSerializer)
    def get(self, request, import_id: int):
        record = imports_visible_to_key(request.auth).filter(pk=import_id).first()
        if record is None:
            raise Http404
        return Response(ImportOutSerializer(record, context={"request": request}).data)


class CsvFileRenderer(BaseRenderer):
    """Lets the content negotiation take a request that accepts only ``text/csv``, which a view
    answers with a file (no renderer renders that); its errors are JSON (``ErrorsInJson``)."""

    media_type = "text/csv"
    format = "csv"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        raise NotImplementedError("A file is answered as it is; an error as JSON.")


class ImportErrorsView(ErrorsInJson, _ReadOrIngest, APIView):
    """The error file of an import (CSV: line, external_id, reason)."""

    renderer_classes = [JSONRenderer, CsvFileRenderer]

    @extend_schema(operation_id="import_errors", responses={(200, "text/csv"): bytes})
    def get(self, request, import_id: int):
        from django.http import FileResponse

        record = imports_visible_to_key(request.auth).filter(pk=import_id).first()
        if record is None or not record.error_file:
            raise Http404
        try:
            errors = ErrorFile.open_committed(record)
        except FileNotFoundError:
            raise exceptions.NotFound(ERROR_FILE_MISSING) from None
        return FileResponse(
            errors,
            as_attachment=True,
            filename=f"import-{record.pk}-errors.csv",
            content_type="text/csv",
        )


urlpatterns = [
    path("profiles/", ProfileUpsertView.as_view(), name="profile-upsert"),
    path("profiles/bulk/", ProfileBulkView.as_view(), name="profile-bulk"),
    # Any external id, a slash in it included (sent as %2F or as is).
    path("profiles/<path:external_id>/", ProfileDetailView.as_view(), name="profile-detail"),
    path("events/bulk/", EventBulkView.as_view(), name="event-bulk"),
    path("segments/", SegmentListView.as_view(), name="segment-list"),
    path("segments/<int:segment_id>/", SegmentDetailView.as_view(), name="segment-detail"),
    path("segments/<int:segment_id>/preview/", SegmentPreviewView.as_view(), name="segment-preview"),
    path("imports/", ImportCreateView.as_view(), name="import-create"),
    path("imports/<int:import_id>/", ImportDetailView.as_view(), name="import-detail"),
    path("imports/<int:import_id>/errors/", ImportErrorsView.as_view(), name="import-errors"),
]
