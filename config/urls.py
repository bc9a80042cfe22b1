from django.contrib import admin
from django.shortcuts import redirect
from django.templatetags.static import static
from django.urls import include, path, re_path
from django.views.generic import RedirectView

from config.api_urls import api_not_found


def favicon(request):
    """What browsers ask every site for: the admin's icon, by its static name (hashed in production)."""
    return redirect(static("pushdesk/favicon.svg"))


urlpatterns = [
    path("", RedirectView.as_view(pattern_name="admin:index", permanent=False)),
    path("admin/", admin.site.urls),
    path("favicon.ico", favicon),
    path("api/v1/", include(("config.api_urls", "api"), namespace="api")),
    # The rest of /api/ (/api, /api/v2/..., /api/v1 without its slash): the API's 404 as a route,
    # so DEBUG's page and Django's slash redirect never answer it.
    re_path(r"^api(/|$)", api_not_found),
]

# The API answers JSON even for what Django refuses before any view runs, and for its own failures.
handler400 = "config.api_urls.bad_request"
handler404 = "config.api_urls.not_found"
handler500 = "config.api_urls.server_error"
