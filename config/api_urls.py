"""Every route of /api/v1/. Each app contributes its own ``api.urlpatterns``."""

from django.http import JsonResponse
from django.urls import include, path, re_path
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView


@csrf_exempt
def api_not_found(request, *args, **kwargs):
    """Any other path under /api/v1/ (a negative or non-numeric id included): the API's JSON 404."""
    return JsonResponse({"code": "not_found", "detail": "Not found."}, status=404)


urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api:schema"), name="docs"),
    path("", include("accounts.api")),
    path("", include("audiences.api")),
    path("", include("campaigns.api")),
    path("", include("delivery.api")),
    path("", include("journeys.api")),
    re_path(r"^", api_not_found),
]
