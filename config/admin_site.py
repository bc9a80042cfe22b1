"""Pushdesk's admin site: a home page per role at the index, the model list one click away."""

from django.contrib import admin
from django.template.response import TemplateResponse
from django.urls import path


class PushdeskAdminSite(admin.AdminSite):
    """Django's admin site whose index is the home page (``config.home``); ``models/`` lists the models."""

    site_header = "Pushdesk"
    site_title = "Pushdesk"
    index_title = "Home"
    # An empty value, as the pages' own fields say one (Django's default is a hyphen).
    empty_value_display = "—"

    def get_urls(self):
        return [path("models/", self.admin_view(self.models_view), name="models"), *super().get_urls()]

    def index(self, request, extra_context=None):
        """The home page: what is live, decisions waiting, the last 24 hours of sends."""
        from config.home import home_for

        context = {
            **self.each_context(request),
            "title": "Home",
            "subtitle": None,
            "home": home_for(request.user),
            **(extra_context or {}),
        }
        request.current_app = self.name
        return TemplateResponse(request, "admin/home.html", context)

    def login(self, request, extra_context=None):
        """Django's sign-in page; 503 when the sign-in lockout cannot be checked (the form says why)."""
        from django.forms.forms import NON_FIELD_ERRORS

        from accounts.forms import LOCKOUT_UNAVAILABLE

        response = super().login(request, extra_context)
        form = (getattr(response, "context_data", None) or {}).get("form")
        if form is not None and form.is_bound and form.has_error(NON_FIELD_ERRORS, LOCKOUT_UNAVAILABLE):
            response.status_code = 503
            response["Retry-After"] = "60"
        return response

    def models_view(self, request):
        """Django's list of models, as the index used to show it."""
        return super().index(request, extra_context={"title": "All models"})
