"""The project's middleware: requests no view could answer (a NUL character in the path or the
query string), and Django's messages left out of the API.

PostgreSQL text cannot hold NUL, so a lookup or filter with one fails inside the database
driver. They are refused before any view runs: JSON for the API, plain text for the admin.
"""

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


class AdminMessageMiddleware(MessageMiddleware):
    """Django's messages, for the pages that show them: the API's requests (most of the traffic)
    skip building a message store, which signs nothing but cost a cookie signer per request (a
    twentieth of the web's CPU for an API trigger)."""

    def process_request(self, request):
        if not request.path.startswith(API_PREFIX):
            super().process_request(request)
