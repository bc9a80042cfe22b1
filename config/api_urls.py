"""Every route of /api/v1/. Each app contributes its own ``api.urlpatterns``."""

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api:schema"), name="docs"),
    path("", include("accounts.api")),
    path("", include("audiences.api")),
    path("", include("campaigns.api")),
    path("", include("delivery.api")),
    path("", include("journeys.api")),
]
