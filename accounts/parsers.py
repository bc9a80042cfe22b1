"""How the API reads request bodies (a module of its own: DRF's settings import it before any view)."""

import codecs

from django.conf import settings
from rest_framework import exceptions
from rest_framework import status as http_status
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser, get_encoding

from accounts.json_values import json_parse
from accounts.middleware import UNREADABLE_PART


class RequestTooLarge(exceptions.APIException):
    status_code = http_status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "request_too_large"


def request_too_large() -> RequestTooLarge:
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return RequestTooLarge(
        f"The request body is larger than the limit of {limit} bytes ({limit / 1024 / 1024:.0f} MB).",
        code="request_too_large",
    )


class ApiJSONParser(JSONParser):
    """JSON bodies, refused with a 400 naming the path when no field could hold them.

    Python's own parser raises RecursionError on deep nesting and reads ``1e400`` as infinity;
    ``json_parse`` turns both (and lone surrogates) into a ValidationError naming where. A body
    over ``DATA_UPLOAD_MAX_MEMORY_SIZE`` answers 413.
    """

    def parse(self, stream, media_type=None, parser_context=None):
        parser_context = parser_context or {}
        encoding = get_encoding(parser_context)
        request = parser_context.get("request")
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if request is not None and limit is not None:
            try:
                length = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                length = 0
            if length > limit:
                raise request_too_large()
        raw = stream.read(limit + 1) if limit is not None else stream.read()
        if limit is not None and len(raw) > limit:
            raise request_too_large()
        try:
            text = codecs.decode(raw, encoding)
            return json_parse(text, unique_keys=True)
        except ValueError as exc:
            raise exceptions.ParseError(f"JSON parse error - {exc}") from exc


class _FormCharset:
    """A form body read in the charset it declares, refused with a 400 naming that charset when its
    decoder fails instead of replacing what it cannot read: Django reads a form's text with the
    'replace' handler, which some codecs do not take (idna), and some fail on text not theirs
    anyway (punycode); the UnicodeError was a 500, or, raised inside Django's reading of a
    urlencoded body, taken for its fields passing Django's count."""

    def parse(self, stream, media_type=None, parser_context=None):
        charset = get_encoding(parser_context or {})
        try:
            # A byte beyond ASCII, read with the handler: idna refuses the handler, punycode the byte.
            codecs.decode(b"\xff", charset, "replace")
            parsed = super().parse(stream, media_type, parser_context)
        except UnicodeError as exc:
            raise exceptions.ParseError(
                f"Form parse error - the body cannot be read as {charset}, the charset it declares: send it in UTF-8."
            ) from exc
        _refuse_replaced_text(getattr(parsed, "data", parsed), charset)
        _refuse_unread_parts(parser_context or {})
        return parsed


def _refuse_unread_parts(parser_context: dict) -> None:
    """Refuse, naming them, the parts Django left out of a multipart body, their headers not UTF-8
    (``UnreadablePartsMiddleware``): a file whose name is not, which read "No file was submitted"."""
    request = parser_context.get("request")
    unread = getattr(getattr(request, "_request", request), "unreadable_parts", ())
    if unread:
        raise exceptions.ValidationError({name or "file": [UNREADABLE_PART] for name in unread})


def _refuse_replaced_text(fields, charset: str) -> None:
    """Refuse, naming them, the fields whose text holds U+FFFD: what Django's 'replace' handler puts
    for bytes the charset cannot read, which would otherwise be stored as the field's text."""
    unreadable = {
        name: [
            f"Holds bytes that are not {charset}, the charset the body declares (or U+FFFD, which stands for "
            "them): send the text in UTF-8."
        ]
        for name, values in fields.lists()
        if "\ufffd" in name or any("\ufffd" in value for value in values)
    }
    if unreadable:
        raise exceptions.ValidationError(unreadable)


class ApiMultiPartParser(_FormCharset, MultiPartParser):
    pass


class ApiFormParser(_FormCharset, FormParser):
    pass
