"""Health probes, answered before anything else sees the request.

Load balancers probe over plain HTTP, often with an IP address as ``Host``: ``/healthz`` and
``/readyz`` answer them before the HTTPS redirect and the ``ALLOWED_HOSTS`` check, and leave
no log line (a failing probe is the load balancer's to report, not a traceback per second).
"""

import json

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
