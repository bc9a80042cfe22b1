"""The API's own route for its hottest calls: a trigger (``POST /api/v1/campaigns/{id}/trigger/``)
and an events call (``POST /api/v1/events/bulk/``), answered before Django's URL resolver and DRF's
view machinery when the call is in order.

DRF's request wrapping, content negotiation, parsing, permission classes and rendering cost about
as much CPU as a trigger's own work. This middleware answers a call whose key, scope and body are
in order by calling the view's own handler, with the same services and the same error answers.
Any other call (no key or one that cannot be used, another scope, a body that is not plain JSON,
an ``Accept`` that leaves out JSON, a parse error) goes on to the view untouched, which words the refusal as always; the stamps read
here (and the rate token taken with them) go along with it, so nothing is counted twice.

It sits after the middleware that guards every request (probes, HTTPS, the allowed hosts, NUL in
the path) and adds the headers of those after it that an API answer carries.
"""

import re

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DatabaseError
from django.http import Http404
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.utils.module_loading import import_string
from redis.exceptions import RedisError
from rest_framework.exceptions import APIException
from rest_framework.renderers import JSONRenderer

from accounts.api import api_exception_handler
from accounts.authentication import (
    ApiKeyFailed,
    HasRequiredScope,
    bearer_key,
    cached_key,
    key_refusal,
    view_stamps_read,
)
from accounts.json_values import json_parse
from accounts.services import api_key_touch

# (path, view, the path's integer argument): each view's ``post`` is what the route calls.
ROUTES = (
    (re.compile(r"^/api/v1/campaigns/([0-9]+)/trigger/\Z"), "campaigns.api.CampaignTriggerView", "campaign_id"),
    (re.compile(r"^/api/v1/events/bulk/\Z"), "audiences.api.EventBulkView", None),
)
# More digits than any bigint id has; the URL resolver answers such a path (its 404).
MAX_ID_DIGITS = 20
_RENDERER = JSONRenderer()
_FRAME_OPTIONS = XFrameOptionsMiddleware(lambda request: None)
_HANDLED = (APIException, DjangoValidationError, DjangoPermissionDenied, Http404)


class ApiRouteMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response
        self.routes = [(path, import_string(view), argument) for path, view, argument in ROUTES]

    def __call__(self, request):
        if request.method == "POST":
            for path, view, argument in self.routes:
                match = path.match(request.path_info)
                if match is not None:
                    if argument and len(match[1]) > MAX_ID_DIGITS:
                        break  # no row has such an id (int() refuses one past 4,300 digits): the URLs' 404
                    response = api_route(request, view(), {argument: int(match[1])} if argument else {})
                    if response is not None:
                        return response
                    break
        return self.get_response(request)


class _Call:
    """What the routed views' handlers (and the scope check) read of DRF's request: the body, the
    key and its user, the headers."""

    def __init__(self, request, key):
        self._request, self.user, self.auth, self.data = request, key.user, key, None
        self.META = request.META

    @property
    def headers(self):  # built from META on first use (none of the routed handlers reads it)
        return self._request.headers


def api_route(request, view, kwargs: dict):
    """The answer to a call in order, or None to let the view answer it."""
    meta = request.META
    try:
        matched = bearer_key(meta.get("HTTP_AUTHORIZATION", ""))
        length = int(meta.get("CONTENT_LENGTH") or 0)
    except (ApiKeyFailed, ValueError):
        return None
    if not _plain_json(meta.get("CONTENT_TYPE", "")) or not 0 < length <= settings.DATA_UPLOAD_MAX_MEMORY_SIZE:
        return None
    if not _answers_json(meta.get("HTTP_ACCEPT")):
        return None  # the view's content negotiation refuses it (406)
    if meta.get("QUERY_STRING") and "format" in request.GET:
        return None  # the view's content negotiation reads it (a format but json's refused, 400)
    try:
        stamps = view_stamps_read(view, kwargs, matched)
    except RedisError:
        return None  # the view reads them again, and answers as the API does while Redis is down (503)
    request.pushdesk_stamps = stamps  # the view reads them, rate token included, if it answers
    try:
        key = cached_key(matched["prefix"], stamps["access"])
    except DatabaseError:
        return None  # the view reads the key again, and answers as the API does while the database is down
    if key_refusal(key, matched[0]) is not None:
        return None
    call = _Call(request, key)
    try:
        if not HasRequiredScope().has_permission(call, view):
            return None
        call.data = json_parse(request.body.decode(), unique_keys=True)
    except (ValueError, DjangoValidationError):  # the view's parser words it (UnicodeDecodeError included)
        return None
    api_key_touch(key=key)
    try:
        if hasattr(view, "rate_check"):  # as the view's ``initial`` would
            view.rate_check(call)
        response = view.post(call, **kwargs)
    except _HANDLED as exc:
        response = api_exception_handler(exc, {"view": view})  # as DRF gives it a view's error
    except (RedisError, DatabaseError) as exc:  # Redis or the database gone answer 503, as in DRF's view
        response = api_exception_handler(exc, {"view": view})
        if response is None:  # any other database error: the 500 and its traceback
            raise
    # As DRF's view would finish it, then the middleware after this one (the frame options).
    response.accepted_renderer = _RENDERER
    response.accepted_media_type = _RENDERER.media_type
    response.renderer_context = {}
    for name, value in view.default_response_headers.items():
        response[name] = value
    response.render()
    return _FRAME_OPTIONS.process_response(request, response)


def _answers_json(accept: str | None) -> bool:
    """Whether the view would answer plain JSON, as the route does: no ``Accept``, or one with
    ``application/json``, ``application/*`` or ``*/*`` among its ranges (with any parameter, as
    the view matches them, but ``indent``, which the view obeys). Any other call is handed on:
    the view refuses an ``Accept`` that leaves out JSON (406) before its handler runs, so nothing
    is sent or stored; an ``Accept`` sent empty names no media type, and is refused too."""
    if accept is None:
        return True
    found = False
    for media_range in accept.split(","):
        media, *params = media_range.split(";")
        if media.strip().lower() in ("application/json", "application/*", "*/*"):
            if any(param.strip().lower().startswith("indent") for param in params):
                return False
            found = True
    return found


def _plain_json(content_type: str) -> bool:
    """``application/json``, with no charset or UTF-8's (what the view's parser reads alike)."""
    media, _, params = content_type.partition(";")
    if media.strip().lower() != "application/json":
        return False
    params = params.strip().lower().replace(" ", "")
    return params in ("", "charset=utf-8")
