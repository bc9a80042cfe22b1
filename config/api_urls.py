"""Every route of /api/v1/. Each app contributes its own ``api.urlpatterns``."""

from django.conf import settings
from django.core.exceptions import TooManyFieldsSent, TooManyFilesSent
from django.http import HttpResponsePermanentRedirect, JsonResponse
from django.urls import is_valid_path, path, re_path
from django.utils.encoding import escape_uri_path
from django.utils.http import escape_leading_slashes
from django.views import defaults
from django.views.decorators.common import no_append_slash
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from accounts import api as accounts_api
from accounts.middleware import API_PREFIX
from audiences import api as audiences_api
from campaigns import api as campaigns_api
from delivery import api as delivery_api
from journeys import api as journeys_api


@csrf_exempt
@no_append_slash  # Django's redirect would lose a POST's method and body, and raises with DEBUG
def api_not_found(request, *args, **kwargs):
    """Any other path under /api/ (a negative or non-numeric id included): the API's JSON 404.

    A path that lacks only the trailing slash of a route is named with it: a GET or HEAD (a person
    typing the docs' address) is redirected there (301); any other method answers the 404 naming
    it, whose method and body a redirect would lose. Only a path no route holds reaches here."""
    if not request.path_info.endswith("/"):
        match = is_valid_path(f"{request.path_info}/", getattr(request, "urlconf", None))
        if match and getattr(match.func, "should_append_slash", True):
            if request.method in ("GET", "HEAD"):
                return HttpResponsePermanentRedirect(
                    escape_leading_slashes(request.get_full_path(force_append_slash=True))
                )
            detail = f"Not found. The path ends with a slash: {escape_uri_path(request.path)}/"
            return JsonResponse({"code": "not_found", "detail": detail}, status=404)
    return JsonResponse({"code": "not_found", "detail": "Not found."}, status=404)


def bad_request(request, exception):
    """Django's 400 (a request refused before any view ran or as its body was read: more query
    parameters or form fields than ``DATA_UPLOAD_MAX_NUMBER_FIELDS``, more files than
    ``DATA_UPLOAD_MAX_NUMBER_FILES``, a Host not allowed): the API's JSON under /api/, Django's
    page elsewhere. The exception's text is not echoed (it names settings)."""
    if not request.path.startswith(API_PREFIX):
        return defaults.bad_request(request, exception)
    if isinstance(exception, TooManyFieldsSent):
        limit = settings.DATA_UPLOAD_MAX_NUMBER_FIELDS
        # Counted as Python's parse_qsl counts them: the query's, else a form body's (an import's).
        if 1 + request.META.get("QUERY_STRING", "").count("&") > limit:
            detail = f"The query has more than {limit} parameters."
            return JsonResponse({"code": "too_many_parameters", "detail": detail}, status=400)
        return JsonResponse(
            {"code": "too_many_fields", "detail": f"The body has more than {limit} fields."}, status=400
        )
    if isinstance(exception, TooManyFilesSent):
        detail = f"The body has more than {settings.DATA_UPLOAD_MAX_NUMBER_FILES} files."
        return JsonResponse({"code": "too_many_files", "detail": detail}, status=400)
    return JsonResponse({"code": "bad_request", "detail": "Bad request."}, status=400)


def not_found(request, exception):
    """Django's 404 (a path no route holds, or a view's Http404 outside DRF): the API's JSON under
    /api/ (whose paths no route holds ``api_not_found`` answers, with DEBUG too), the page elsewhere.
    A path of more slashes before ``api/`` (a base URL ending in one, joined to ``/api/…``) is an
    integrator's call too: its JSON says where it went wrong."""
    if not request.path.startswith(API_PREFIX):
        meant = "/" + request.path.lstrip("/")
        if meant.startswith(API_PREFIX):
            detail = f"Not found. The path starts with more than one slash: {meant}"
            return JsonResponse({"code": "not_found", "detail": detail}, status=404)
        return defaults.page_not_found(request, exception)
    return JsonResponse({"code": "not_found", "detail": "Not found."}, status=404)


def server_error(request):
    """Django's 500: the API's JSON under /api/ (an integrator's client reads JSON), the page elsewhere."""
    if not request.path.startswith(API_PREFIX):
        return defaults.server_error(request)
    return JsonResponse(
        {"code": "server_error", "detail": "The server could not finish this request; the error was logged."},
        status=500,
    )


class SchemaView(accounts_api.ErrorsInJson, SpectacularAPIView):
    pass


class DocsView(accounts_api.ErrorsInJson, SpectacularSwaggerView):
    pass


# One flat list, not an include per app: an include that does not hold the path raises Resolver404
# with the list of every pattern it tried, which the next one extends; for a path of the third app
# that was a tenth of the web's CPU for an API trigger. The hot paths (triggers, events) come first.
urlpatterns = [
    *campaigns_api.urlpatterns,
    *audiences_api.urlpatterns,
    *delivery_api.urlpatterns,
    *journeys_api.urlpatterns,
    *accounts_api.urlpatterns,
    path("schema/", SchemaView.as_view(), name="schema"),
    path("docs/", DocsView.as_view(url_name="api:schema"), name="docs"),
    re_path(r"^", api_not_found),
]
