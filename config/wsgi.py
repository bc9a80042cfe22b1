"""WSGI entry point: the web server (``python -m config.web``, granian) serves ``application``."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
application = get_wsgi_application()

from config.runtime import gc_tune  # noqa: E402 (the app is loaded first, then its objects are frozen)

gc_tune()
