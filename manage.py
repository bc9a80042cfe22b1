#!/usr/bin/env python
"""Django's command-line utility for Pushdesk."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    try:
        from django.core.management import execute_from_command_line

        execute_from_command_line(sys.argv)
    except KeyboardInterrupt:
        # Ctrl-C before a command has set up its own clean stop (while Django loads and checks,
        # say) ends it the way a shell reports it, without a traceback.
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
