"""The project's middleware: requests no view could answer (a NUL character in the path or the
query string), the parts of a form Django leaves out unsaid (``UnreadablePartsMiddleware``), and
Django's messages left out of the API.

PostgreSQL text cannot hold NUL, so a lookup or filter with one fails inside the database
driver. They are refused before any view runs: JSON for the API, plain text for the admin.
"""

import re

from django.contrib.messages.middleware import MessageMiddleware
from django.http import HttpResponseBadRequest, HttpResponseNotFound, JsonResponse

API_PREFIX = "/api/"


class RefuseNulMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        api = request.path.startswith(API_PREFIX)
        if "\x00" in request.path:
            if api:
                return JsonResponse({"code": "not_found", "detail": "Not found."}, status=404)
            return HttpResponseNotFound("Not found.", content_type="text/plain")
        for name, values in request.GET.lists() if request.META.get("QUERY_STRING") else ():
            if "\x00" in name or any("\x00" in value for value in values):
                field = name.replace("\x00", "\\u0000")
                detail = "The NUL character (\\u0000) is not allowed."
                if api:
                    return JsonResponse(
                        {
                            "code": "invalid",
                            "detail": f"{field}: {detail}",
                            "errors": [{"field": field, "code": "invalid", "detail": detail}],
                        },
                        status=400,
                    )
                return HttpResponseBadRequest(f"{field}: {detail}", content_type="text/plain")
        return self.get_response(request)


UNREADABLE_PART = (
    "Sent with a name that is not UTF-8, which could not be read, and so left out: rename the file "
    "(or send it from a system that writes names in UTF-8) and upload it again."
)

# Django reads at most this much of a part's headers (``multipartparser.parse_boundary_stream``).
_PART_HEADERS_READ = 1024
_PART_NAME = re.compile(rb';\s*name="([^"]*)"', re.I)
_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.I)


class _PartHeadersWatch:
    """A multipart body's stream, read as it is, noting the names of the parts whose headers are not
    UTF-8 (``unreadable``): Django's parser skips each such header line, and with it the part (a
    file whose name is not UTF-8), as though it had not been sent. Only the headers are looked at;
    the body passes through in the chunks it is read in, never held."""

    def __init__(self, stream, boundary: bytes):
        self._stream = stream
        self._marker = b"\r\n--" + boundary
        self._pending = b"\r\n"  # the body opens on its first boundary, with no line before it
        self.unreadable: list[str] = []
        # Of those, the parts whose name itself is not UTF-8: no field of a form is there to say it.
        self.unreadable_names: list[str] = []

    def read(self, *args, **kwargs):
        chunk = self._stream.read(*args, **kwargs)
        self._watch(chunk)
        return chunk

    def readline(self, *args, **kwargs):
        line = self._stream.readline(*args, **kwargs)
        self._watch(line)
        return line

    def __getattr__(self, name):
        return getattr(self._stream, name)

    def _watch(self, chunk: bytes) -> None:
        data, start = self._pending + chunk, 0
        while True:
            found = data.find(self._marker, start)
            if found < 0:
                self._pending = data[max(start, len(data) - len(self._marker) + 1) :]
                return
            head = found + len(self._marker)
            end = data.find(b"\r\n\r\n", head)
            if end < 0 and len(data) - head <= _PART_HEADERS_READ + 4:
                self._pending = data[found:]  # the headers go on in the next chunk
                return
            if end >= 0:
                self._note(data[head:end])
            start = end if end >= 0 else head

    def _note(self, headers: bytes) -> None:
        try:
            headers.decode()
        except UnicodeDecodeError:
            named = _PART_NAME.search(headers)
            name = named.group(1).decode(errors="replace") if named else ""
            self.unreadable.append(name)
            try:
                named.group(1).decode() if named else None
            except UnicodeDecodeError:
                self.unreadable_names.append(name)


UNREADABLE_NAME = (
    "The form sent a part whose name is not UTF-8, which could not be read, and so nothing was "
    "saved: send the form again from a browser or a system that writes names in UTF-8."
)


class UnreadablePartsMiddleware:
    """Note on the request (``request.unreadable_parts``) the names of a multipart body's parts whose
    headers are not UTF-8, which Django leaves out of ``request.POST`` and ``request.FILES`` without
    a word: a file whose name is not UTF-8 read "No file was submitted". Forms say it under the
    field (``accounts.admin.bases.ReadableTextForm``), the API naming it (``accounts.parsers``).
    A part whose own name is not UTF-8 belongs to no field a form could say it under: outside the
    API, the body is read before the view runs and such a request is answered 400, saying so."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        content_type = request.META.get("CONTENT_TYPE", "")
        stream = getattr(request, "_stream", None)
        boundary = _BOUNDARY.search(content_type) if content_type.lower().startswith("multipart/") else None
        if boundary and stream is not None:
            watch = _PartHeadersWatch(stream, boundary.group(1).encode("ascii", "replace"))
            request._stream = watch
            request.unreadable_parts = watch.unreadable
        return self.get_response(request)

    def process_view(self, request, view_func, view_args, view_kwargs):
        watch = getattr(request, "_stream", None)
        if not isinstance(watch, _PartHeadersWatch) or request.path.startswith(API_PREFIX):
            return None
        request.POST  # noqa: B018 (read through the watch now, as CSRF's check reads it before any view)
        if watch.unreadable_names:
            return HttpResponseBadRequest(UNREADABLE_NAME, content_type="text/plain; charset=utf-8")
        return None


class AdminMessageMiddleware(MessageMiddleware):
    """Django's messages, for the pages that show them: the API's requests (most of the traffic)
    skip building a message store, which signs nothing but cost a cookie signer per request (a
    twentieth of the web's CPU for an API trigger)."""

    def process_request(self, request):
        if not request.path.startswith(API_PREFIX):
            super().process_request(request)
