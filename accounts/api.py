"""The API's input and error format, and the endpoints of the accounts app."""

import logging

from django.core.exceptions import NON_FIELD_ERRORS, RequestDataTooBig
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import ProhibitNullCharactersValidator
from django.http import Http404
from django.urls import path
from django.utils import timezone
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from redis.exceptions import RedisError
from rest_framework import exceptions, serializers
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView, exception_handler

from accounts.json_values import MAX_BYTES, MAX_DEPTH, json_text_problem, json_value_problem
from accounts.pagination import ListQuery, page_response, page_schema, query_params_valid
from accounts.parsers import request_too_large
from accounts.roles import role_permissions
from accounts.selectors import teams_visible_to
from config.digits import digits_plain
from config.reporting import SaidOnceAMinute, left_out_said
from operations.database import database_gone, redis_problem
from operations.instance import InstanceMismatch

logger = logging.getLogger("pushdesk.api")

# --- input ------------------------------------------------------------------------------------


class JsonObjectField(serializers.DictField):
    """A JSON object to store: every value passes ``accounts.json_values`` (no NUL or lone surrogate,
    finite numbers, nested at most 32 deep, at most ``max_bytes`` as JSON); errors name the path."""

    def __init__(self, *args, max_bytes: int = MAX_BYTES, **kwargs):
        self.max_bytes = max_bytes
        super().__init__(*args, **kwargs)

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        found = json_value_problem(value, max_depth=MAX_DEPTH, max_bytes=self.max_bytes)
        if found is not None:
            where, message = found
            raise serializers.ValidationError({where: [message]} if where else [message])
        return value


class _JsonType:
    """Refuse a JSON value of another type instead of converting it (DRF reads 5 as "5" and
    "true" or 1 as True), so a body the schema calls invalid is answered 400, naming the field."""

    json_types: tuple[type, ...] = ()

    def to_internal_value(self, data):
        if not isinstance(data, self.json_types) or (isinstance(data, bool) and bool not in self.json_types):
            self.fail("invalid")
        return super().to_internal_value(data)


class JsonCharField(_JsonType, serializers.CharField):
    """Text, refused as any other value the API stores when it holds a NUL or a lone surrogate
    (``accounts.json_values``: one code and wording, in a text field, a JSON value or a query)."""

    json_types = (str,)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.validators = [v for v in self.validators if not isinstance(v, ProhibitNullCharactersValidator)]

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        if problem := json_text_problem(value):
            raise serializers.ValidationError(problem, code="invalid")
        return value


class JsonIntegerField(_JsonType, serializers.IntegerField):
    json_types = (int,)


class _PlainDigits:
    """Refuse text with digits other than ASCII's, or an underscore, as any other invalid value
    (``config.digits``): DRF reads a number with ``int()`` and a time with Django's
    ``parse_datetime``, which take every script's digits ("٣" as 3), and ``int()`` an underscore
    between them ("0_3" as 3)."""

    def to_internal_value(self, data):
        if not digits_plain(data):
            self.fail("invalid")
        return super().to_internal_value(data)


class TextIntegerField(_PlainDigits, serializers.IntegerField):
    """A whole number in a form's text (a multipart body), in ASCII digits without underscores."""


class JsonBooleanField(_JsonType, serializers.BooleanField):
    json_types = (bool,)


class JsonIntegerChoiceField(_JsonType, serializers.ChoiceField):
    """One of whole-number choices, given as a number (DRF's choice field takes "95" for 95)."""

    json_types = (int,)
    default_error_messages = {"invalid": "A whole number is required."}


class JsonDateTimeField(_JsonType, _PlainDigits, serializers.DateTimeField):
    """An ISO 8601 time with its zone (``Z`` or an offset): one without is refused, not read as UTC
    (the time an integrator's server wrote in its own zone would be off by hours)."""

    json_types = (str,)
    default_error_messages = {
        "invalid": "An ISO 8601 time with its zone is required, e.g. 2026-12-03T10:00:00Z or +01:00.",
        "naive": "Give the time with its zone, e.g. 2026-12-03T10:00:00Z or +01:00.",
    }

    def enforce_timezone(self, value):
        if timezone.is_naive(value):
            self.fail("naive")
        return super().enforce_timezone(value)


# --- output -----------------------------------------------------------------------------------


# A model's serializer for answers only: every field is read-only, so the schema says what the
# answer does, that each is always there (``required``); a client generated from it made a model
# field with a default optional (a delivery's ``status``). No docstring: the schema would give it
# as the description of every answer without its own.
class AnswerSerializer(serializers.ModelSerializer):
    def get_fields(self):
        fields = super().get_fields()
        for field in fields.values():
            field.read_only = True
        return fields


# --- errors -----------------------------------------------------------------------------------


def _flatten(detail, prefix="") -> list[dict]:
    """Turn DRF's nested error detail into a flat list naming each field by its path: keys joined
    by dots, list positions in brackets (``recipients[0].context``), as every other check names
    them (``accounts.json_values``, the rules' validation). DRF keys a list field's errors by
    position (``{0: …}``) and a list serializer's by order (``[{…}]``): both are positions. Its
    errors of a whole object (``non_field_errors``) name that object: ``null`` for the body."""
    errors = []
    if isinstance(detail, dict):
        for key, value in detail.items():
            if isinstance(key, int):
                field = f"{prefix}[{key}]"
            elif key == api_settings.NON_FIELD_ERRORS_KEY:
                field = prefix
            elif key.startswith("["):  # a path inside the field's value that starts at a list position
                field = f"{prefix}{key}"
            else:
                field = f"{prefix}.{key}" if prefix else str(key)
            errors += _flatten(value, field)
    elif isinstance(detail, list):
        if all(not isinstance(item, (dict, list)) for item in detail):
            for item in detail:
                errors.append({"field": prefix or None, "code": getattr(item, "code", "invalid"), "detail": str(item)})
        else:
            for index, item in enumerate(detail):
                errors += _flatten(item, f"{prefix}[{index}]" if prefix else f"[{index}]")
    else:
        errors.append({"field": prefix or None, "code": getattr(detail, "code", "invalid"), "detail": str(detail)})
    return errors


class ErrorsInJson:
    """For a view answering in a format of its own (the schema's YAML, the docs' HTML, an import's
    error file): its refusals (a method it does not take, no key, no such object) are the API's
    JSON errors, and its answer to OPTIONS is JSON, whatever type the request accepted, as every
    other path's under /api/."""

    def handle_exception(self, exc):
        response = super().handle_exception(exc)
        self._answer_in_json()
        return response

    def options(self, request, *args, **kwargs):
        """DRF's description of the view, in JSON too: the docs' HTML renderer has no template for
        it and the error file's renders nothing (each answered OPTIONS with a 500)."""
        response = super().options(request, *args, **kwargs)
        self._answer_in_json()
        return response

    def _answer_in_json(self):
        self.request.accepted_renderer = JSONRenderer()  # what finalize_response renders it with
        self.request.accepted_media_type = JSONRenderer.media_type


class InstanceNotClaimed(exceptions.APIException):
    """This deployment may not send: its database belongs to another instance (a restored copy)."""

    status_code = 503
    default_code = "instance_not_claimed"
    default_detail = "This copy of Pushdesk may not send."


class ServiceUnavailable(exceptions.APIException):
    """What every call needs (Redis: the key check and the rate limit; the database) does not
    answer: try again shortly."""

    status_code = 503
    default_code = "service_unavailable"
    RETRY_SECONDS = 10

    def __init__(self, service: str):
        super().__init__(f"Pushdesk cannot take calls for a moment (its {service} does not answer).")
        self.wait = self.RETRY_SECONDS  # DRF's Retry-After


# Every phone of an app calls: a line each call, with its traceback, was thousands a minute.
_calls_refused = SaidOnceAMinute()


def _say_calls_refused(service: str, problem: str) -> None:
    """Say once a minute at most, for each service, that calls are refused for want of it, with how
    many were since the last line."""
    refused = _calls_refused.now_or_never(service, counting_this=True)
    if refused is None:
        return
    since = left_out_said(refused, what="calls refused since the last line")
    logger.error("API calls answer 503: %s%s", problem, since)


def _service_down(exc: BaseException) -> ServiceUnavailable | None:
    """The 503 for ``exc`` when it is Redis or the database not answering (said in the log a line a
    minute at most); None for any other error."""
    if isinstance(exc, RedisError):
        _say_calls_refused("Redis", f"{redis_problem(exc)}; check that it runs, or REDIS_URL")
        return ServiceUnavailable("Redis")
    problem = database_gone(exc)
    if problem is not None:
        _say_calls_refused("the database", problem)
        return ServiceUnavailable("database")
    return None


class FieldRefused(exceptions.PermissionDenied):
    """A 403 about one field of the request: answered with its own ``code`` and ``errors`` naming
    the field, as bad input is, so that a client sees which field to fix."""

    def __init__(self, *, field: str, code: str, detail: str):
        super().__init__(detail=detail, code=code)
        self.field = field


class FieldNotFound(exceptions.NotFound):
    """A 404 about an id in the body (an app, a segment, a device's token) naming no object the key
    may reach, missing or outside its access alike: ``errors`` names the field, as bad input's do."""

    def __init__(self, *, field: str, detail: str):
        super().__init__(detail=detail)
        self.field = field


def api_exception_handler(exc, context):
    """Answer every error as JSON ``{"code", "detail"}`` (+ ``errors`` naming fields for bad input)."""
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(
            {api_settings.NON_FIELD_ERRORS_KEY if k == NON_FIELD_ERRORS else k: v for k, v in exc.message_dict.items()}
            if hasattr(exc, "error_dict")
            else {"non_field_errors": exc.messages}
        )
    elif isinstance(exc, InstanceMismatch):
        exc = InstanceNotClaimed(str(exc))
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)
    elif isinstance(exc, RequestDataTooBig):
        exc = request_too_large()
    elif (unavailable := _service_down(exc)) is not None:
        exc = unavailable
    response = exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        errors = _flatten(exc.detail)
        first = errors[0] if errors else {"field": None, "detail": "Invalid input."}
        where = f"{first['field']}: " if first["field"] else ""
        response.data = {"code": "invalid", "detail": f"{where}{first['detail']}", "errors": errors}
    else:
        detail = exc.detail if isinstance(exc, exceptions.APIException) else str(exc)
        code = getattr(detail, "code", None) or getattr(exc, "default_code", "error")
        response.data = {"code": code, "detail": str(detail)}
        if isinstance(exc, FieldRefused | FieldNotFound):
            response.data["detail"] = f"{exc.field}: {detail}"
            response.data["errors"] = [{"field": exc.field, "code": code, "detail": str(detail)}]
        if response.has_header("Retry-After"):  # DRF's, from the exception's wait: said in the body too
            response.data["retry_after"] = int(response["Retry-After"])
    if isinstance(exc, ServiceUnavailable):
        response._has_been_logged = True  # said a line a minute above, not a line a call by Django
    return response


ERROR_SCHEMA = {
    "type": "object",
    "description": "Every API error: a stable `code`, a human `detail`; bad input also lists `errors`, and an "
    "answer to retry later (429, 503) says after how many seconds in `retry_after`, as its `Retry-After` header.",
    "properties": {
        "code": {"type": "string"},
        "detail": {"type": "string"},
        "retry_after": {"type": "integer", "description": "Seconds to wait before trying again (429, 503)."},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "field": {
                        "type": "string",
                        "nullable": True,
                        "description": "The field's path in the body or the query: keys joined by dots, list "
                        "positions in brackets (`recipients[0].context`); null for the body as a whole.",
                    },
                    "code": {"type": "string"},
                    "detail": {"type": "string"},
                },
                "required": ["field", "code", "detail"],
            },
        },
    },
    "required": ["code", "detail"],
}
# Answers every operation may give, whatever the view: bad input, no or bad key, no scope or
# role, an object outside the key's access (or none at all).
COMMON_ERRORS = {
    "400": "`invalid`: bad input, `errors` names each field and the rule broken; `parse_error`: a body that is not "
    "JSON.",
    "401": "No API key, or one that cannot be used: `not_authenticated` (no key), `malformed_authorization` (not "
    "`Bearer <api key>`), `api_key_invalid` (unknown), `api_key_revoked`, `api_key_expired`, `account_disabled` "
    "(its user's account), `account_role` (its user's role, changed since, may not own keys).",
    "403": "`insufficient_scope`: the key lacks the scope; `permission_denied`: its user lacks the role.",
    "404": "`not_found`: no such object, or one outside the user's access.",
}

# What a view limited by its key's ingest rate (``accounts.authentication.IngestRateLimited``) adds.
INGEST_THROTTLED = OpenApiResponse(
    description="`throttled`: this key's ingest calls (devices, opens, profiles, events: one rate, "
    "`PUSHDESK_INGEST_RATE_PER_KEY` a second) are over their rate; retry after `retry_after` seconds "
    "(the `Retry-After` header)."
)


BODY_TOO_LARGE = (
    "`request_too_large`: the body is over the limit (`PUSHDESK_MAX_REQUEST_BYTES`, 24 MB), stated in `detail`."
)
NOT_ACCEPTABLE = (
    "`not_acceptable`: the `Accept` header leaves out `application/json`, the only type the API answers in."
)
UNSUPPORTED_MEDIA_TYPE = (
    "`unsupported_media_type`: the body is not of a type this operation reads (see its request body)."
)


def document_error_responses(result, generator, request, public):
    """drf-spectacular post-processing hook: add the error format and the common errors to every operation.

    A view documents its own extra answers (409, 422, 429, 503...) with ``extend_schema``, naming
    each ``code`` it may answer; those are given the error body here too when they declare none.
    """
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    error_content = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for methods in result.get("paths", {}).values():
        for operation in methods.values():
            responses = operation.setdefault("responses", {})
            for status, description in COMMON_ERRORS.items():
                responses.setdefault(status, {"description": description, "content": error_content})
            responses.setdefault("406", {"description": NOT_ACCEPTABLE, "content": error_content})
            if "requestBody" in operation:
                responses.setdefault("413", {"description": BODY_TOO_LARGE, "content": error_content})
                responses.setdefault("415", {"description": UNSUPPORTED_MEDIA_TYPE, "content": error_content})
            for status, response in responses.items():
                if status[0] in "45" and "content" not in response:
                    response["content"] = error_content
    return result


class MeView(APIView):
    """Who this API key belongs to, and what it may do."""

    required_scope = None

    @extend_schema(
        operation_id="me",
        responses=inline_serializer(
            "Me",
            {
                "username": serializers.CharField(),
                "roles": serializers.ListField(child=serializers.CharField()),
                "key": inline_serializer(
                    "MeKey",
                    {
                        "name": serializers.CharField(),
                        "prefix": serializers.CharField(),
                        "scopes": serializers.ListField(child=serializers.CharField()),
                        "expires_at": serializers.DateTimeField(allow_null=True),
                    },
                ),
                "permissions": serializers.ListField(child=serializers.CharField()),
            },
        ),
    )
    def get(self, request):
        user, key = request.user, request.auth
        roles = user.role_names()
        permissions = sorted({perm for role in roles for perm in role_permissions(role)})
        return Response(
            {
                "username": user.get_username(),
                "roles": roles,
                "key": {"name": key.name, "prefix": key.prefix, "scopes": key.scopes, "expires_at": key.expires_at},
                "permissions": permissions,
            }
        )


class TeamMemberSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    username = serializers.CharField()
    is_active = serializers.BooleanField(help_text="False for an account that may no longer sign in.")


class TeamOutSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    members = TeamMemberSerializer(
        many=True,
        source="user_set.all",
        help_text="Its members, by username: each may act where the team was granted access, as their role allows.",
    )


class TeamListView(APIView):
    """The teams (groups that are no roles) and their members, by name; read-only: a team's members
    are changed on its admin page. For Administrators alone."""

    required_scope = "read"

    @extend_schema(
        operation_id="teams_list",
        parameters=[ListQuery],
        responses=page_schema("PaginatedTeamOutList", TeamOutSerializer),
    )
    def get(self, request):
        query = query_params_valid(ListQuery, request)
        if not request.user.has_perm("auth.view_group"):
            raise exceptions.PermissionDenied("Only an Administrator reads the teams and their members.")
        teams = teams_visible_to(request.user).order_by("name", "id")
        return page_response(request, self, teams, TeamOutSerializer, query=query)


urlpatterns = [
    path("me/", MeView.as_view(), name="me"),
    path("teams/", TeamListView.as_view(), name="teams"),
]
