"""The trigger's own route: ``POST /api/v1/campaigns/{id}/trigger/`` answered before Django's URL
resolver and DRF's view machinery, for the usual call.

A trigger is the API's hottest call, and DRF's request wrapping, content negotiation, parsing,
permission classes and rendering cost about as much CPU as the trigger's own work. This
middleware answers a call whose key, scope, rate and body are in order with the view's own
logic (``campaigns.api.trigger_respond``), the same services and the same error answers. Any
other call (no key or one that cannot be used, another scope, a body that is not plain JSON, a
parse error) goes on to ``CampaignTriggerView`` untouched, which words the refusal as always;
the stamps read here (and the rate token taken with them) go along with it, so nothing is
counted twice.

It sits after the middleware that guards every request (probes, HTTPS, the allowed hosts, NUL in
the path) and adds the headers of those after it that an API answer carries.
"""

import re

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from rest_framework.exceptions import APIException
from rest_framework.renderers import JSONRenderer

from accounts.api import api_exception_handler
from accounts.authentication import KEY_RE, cached_key, key_refusal
from accounts.json_values import json_parse
from accounts.services import api_key_touch
from accounts.stamps import stamps_read
from campaigns.api import CampaignTriggerView, trigger_respond

TRIGGER_PATH = re.compile(r"^/api/v1/campaigns/([0-9]+)/trigger/$")
_VIEW = CampaignTriggerView()
_RENDERER = JSONRenderer()
_HANDLED = (APIException, DjangoValidationError, DjangoPermissionDenied, Http404)


class TriggerRouteMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.method == "POST":
            match = TRIGGER_PATH.match(request.path_info)
            if match is not None:
                response = trigger_route(request, int(match[1]))
                if response is not None:
                    return response
        return self.get_response(request)


def trigger_route(request, campaign_id: int):
    """The answer to a trigger call in order, or None to let the view answer it."""
    meta = request.META
    parts = meta.get("HTTP_AUTHORIZATION", "").split()
    if len(parts) != 2 or parts[0].lower() != "bearer":
        return None
    raw_key = parts[1]
    matched = KEY_RE.match(raw_key)
    if matched is None or not _plain_json(meta.get("CONTENT_TYPE", "")):
        return None
    try:
        length = int(meta.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return None
    if not 0 < length <= settings.DATA_UPLOAD_MAX_MEMORY_SIZE:
        return None
    prefix = matched["prefix"]
    rate_name, rate = _VIEW.rate_limit()
    stamps = stamps_read(
        ["access", *_VIEW.stamp_names({"campaign_id": campaign_id})], rate_key=f"{rate_name}:{prefix}", rate=rate
    )
    request.pushdesk_stamps = stamps  # the view reads them, rate token included, if it answers
    key = cached_key(prefix, stamps["access"])
    if key is None or key_refusal(key, raw_key) is not None or _VIEW.required_scope not in key.scopes:
        return None
    try:
        body = json_parse(request.body.decode())
    except (ValueError, DjangoValidationError):  # the view's parser words it (UnicodeDecodeError included)
        return None
    api_key_touch(key=key)
    try:
        response = trigger_respond(
            campaign_id=campaign_id,
            key=key,
            stamps=stamps,
            idempotency_key=meta.get("HTTP_IDEMPOTENCY_KEY", ""),
            body=lambda: body,
        )
    except _HANDLED as exc:
        response = api_exception_handler(exc, {})
    response.accepted_renderer = _RENDERER
    response.accepted_media_type = _RENDERER.media_type
    response.renderer_context = {}
    response["Allow"] = ", ".join(_VIEW.allowed_methods)
    response.render()
    if settings.X_FRAME_OPTIONS and "X-Frame-Options" not in response:
        response["X-Frame-Options"] = settings.X_FRAME_OPTIONS
    return response


def _plain_json(content_type: str) -> bool:
    """``application/json``, with no charset or UTF-8's (what the view's parser reads alike)."""
    media, _, params = content_type.partition(";")
    if media.strip().lower() != "application/json":
        return False
    params = params.strip().lower().replace(" ", "")
    return params in ("", "charset=utf-8")
