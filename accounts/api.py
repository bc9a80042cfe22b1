"""The API's error format and the endpoints of the accounts app."""

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from django.urls import path
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import exceptions, serializers
from rest_framework.response import Response
from rest_framework.views import APIView, exception_handler

from accounts.roles import role_permissions


def _flatten(detail, prefix="") -> list[dict]:
    """Turn DRF's nested error detail into a flat list naming each field by its path."""
    errors = []
    if isinstance(detail, dict):
        for key, value in detail.items():
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


def api_exception_handler(exc, context):
    """Answer every error as JSON ``{"code", "detail"}`` (+ ``errors`` naming fields for bad input)."""
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(
            exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        )
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)
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
    return response


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


urlpatterns = [path("me/", MeView.as_view(), name="me")]
