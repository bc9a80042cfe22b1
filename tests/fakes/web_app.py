"""A WSGI app for the web server's own tests (``python -m config.web --app tests.fakes.web_app:factory``):
Pushdesk's application is loaded as a worker loads it, then this answers instead of it.

- ``/environ``: the names in the request's WSGI environ, as JSON;
- ``/slow``: writes ``slow-started`` in ``PUSHDESK_VAR_DIR``, then answers after two seconds (a request
  in progress while the server is told to stop);
- ``/pid``: the worker's process id;
- ``/upload``: reads the body 1 MB at a time, answers its size in bytes;
- ``/backend``: the PostgreSQL backend's process id of the thread's Django connection, after a
  quarter of a second (so that a burst of them takes every thread).
"""

import json
import os
import time
from pathlib import Path

from config.web import worker_application


def factory():
    worker_application()  # the settings read and the secrets dropped, as in a worker serving Pushdesk

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/slow":
            (Path(os.environ["PUSHDESK_VAR_DIR"]) / "slow-started").touch()
            time.sleep(2)
            body = b"done"
        elif path == "/upload":
            size, stream = 0, environ["wsgi.input"]
            while chunk := stream.read(1024 * 1024):
                size += len(chunk)
            body = str(size).encode()
        elif path == "/backend":
            from django.db import close_old_connections, connection

            close_old_connections()  # as Django does around each request it handles
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                body = str(cursor.fetchone()[0]).encode()
            time.sleep(0.25)
            close_old_connections()
        elif path == "/pid":
            body = str(os.getpid()).encode()
        else:
            body = json.dumps(sorted(environ)).encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    return app
