#!/usr/bin/env python
"""Django's command-line utility for Pushdesk."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    try:
        from django.core.management import execute_from_command_line

        execute_from_command_line(sys.argv)
        sys.stdout.flush()  # a reader gone is met here, not in the interpreter's last flush
    except BrokenPipeError:
        # The reader went away (`manage.py status | head`): stop the way a shell reports a writer
        # whose pipe closed, without a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(141) from None
    except KeyboardInterrupt:
        # Ctrl-C before a command has set up its own clean stop (while Django loads and checks,
        # say) ends it the way a shell reports it, without a traceback.
        raise SystemExit(130) from None
    except Exception as exc:
        # Any command (Django's own too: migrate, clearsessions…) run while the database does not
        # answer says so in one line, as a CommandError is said; --traceback shows it whole.
        said = None if "--traceback" in sys.argv else _database_gone(exc)
        if said is None:
            raise
        sys.stderr.write(f"CommandError: {said}\n")
        raise SystemExit(1) from None


def _database_gone(exc: Exception) -> str | None:
    from django.db import DatabaseError

    if not isinstance(exc, DatabaseError):
        return None
    from operations.database import database_gone

    return database_gone(exc)


if __name__ == "__main__":
    main()
