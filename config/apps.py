from django.contrib.admin.apps import AdminConfig


class PushdeskAdminConfig(AdminConfig):
    """django.contrib.admin with Pushdesk's site (a home page per role) as the default site."""

    default_site = "config.admin_site.PushdeskAdminSite"
