"""The admin of accounts, and the admin bases every app uses (``accounts.admin.bases``,
``accounts.admin.lifecycle``). Importing this package registers the accounts models."""

from django.contrib import admin

from accounts.admin import api_keys, approvals, audit, idempotency, users  # noqa: F401  (registers the model admins)
from accounts.forms import ThrottledAdminAuthenticationForm

admin.site.login_form = ThrottledAdminAuthenticationForm
admin.site.site_header = "Pushdesk"
admin.site.site_title = "Pushdesk"
admin.site.index_title = "Back-office"
