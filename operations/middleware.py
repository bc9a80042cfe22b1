"""Health probes, answered before anything else sees the request.

Load balancers probe over plain HTTP, often with an IP address as ``Host``: ``/healthz`` and
``/readyz`` answer them before the HTTPS redirect and the ``ALLOWED_HOSTS`` check, and leave
no log line (a failing probe is the load balancer's to report, not a traceback per second).
"""

import json

from django.conf import settings
from django.core.handlers.wsgi import WSGIRequest
from django.http import HttpResponse


def _answer(status: int, body: dict) -> HttpResponse:
    response = HttpResponse(json.dumps(body), status=status, content_type="application/json")
    response["Cache-Control"] = "no-store"
    response._has_been_logged = True  # Django logs every 5xx answer; a probe's is not an error
    return response


class ProbeMiddleware:
    """Answer ``/healthz`` (the process is up), ``/readyz`` (it can do its work) and ``/metrics``."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        path = request.path_info
        if path in ("/healthz", "/healthz/"):
            return _answer(200, {"status": "ok"})
        if path in ("/readyz", "/readyz/"):
            from operations.probes import readiness_problems

            problems = readiness_problems()
            if problems:
                return _answer(503, {"status": "unavailable", "problems": problems})
            return _answer(200, {"status": "ready"})
        if path == "/metrics":
            from operations.metrics import metrics_response

            return metrics_response(request)
        return self.get_response(request)


class DrainBodyMiddleware:
    """Read what is left of a request's body before the answer goes out.

    A view may answer without reading the body (a refused key, a missing permission, a body over
    the limit). The web server then closes a socket with unread bytes in it, which resets the
    connection: a proxy still streaming the body upstream (nginx with ``proxy_request_buffering
    off``, as docs/deploy/nginx.conf has it) turns the answer into a 502. Draining a body whose
    ``Content-Length`` is within ``DATA_UPLOAD_MAX_MEMORY_SIZE`` keeps the answer; a larger one is
    left to the reset, never read in vain.

    Only the request's own file interface is used (``request.read``): it stops at the declared
    length, so a body a view read whole costs one empty read, and one it kept (``request.body``)
    is read again from memory. Under ASGI the server has received the body before the view runs:
    nothing is left on the socket.
    """

    CHUNK = 64 * 1024

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if isinstance(request, WSGIRequest) and 0 < _declared_length(request) <= settings.DATA_UPLOAD_MAX_MEMORY_SIZE:
            try:
                while request.read(self.CHUNK):
                    pass
            except OSError:
                pass  # the client went away: nothing left to keep
        return response


def _declared_length(request) -> int:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0  # Django reads such a body as empty
