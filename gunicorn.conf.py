"""gunicorn's settings, read from the working directory (the units start it in the application's).

With ``LOG_FORMAT=json``, gunicorn's own lines (its start, its workers booting and exiting, its
stop) are written as the application's are, one JSON object a line, so that a log pipeline
reading the web unit's output can parse every line.
"""

import os

if os.environ.get("LOG_FORMAT", "").strip().lower() == "json":
    from config.settings import LOGGING

    # gunicorn replaces its defaults key by key: every part is given.
    logconfig_dict = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": LOGGING["formatters"]["json"]},
        "handlers": {
            "console": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout"},
            "error_console": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"},
        },
        "root": {"level": "INFO", "handlers": ["console"]},
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": ["error_console"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["console"], "propagate": False},
        },
    }
