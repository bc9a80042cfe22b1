"""Django's PostgreSQL backend, with a health check that costs no round trip when nothing happened.

With ``CONN_HEALTH_CHECKS`` Django asks a kept connection ``SELECT 1`` before each request uses
it: a round trip per request, about a fifth of an API trigger's waiting. A server that restarts or
ends the session sends its notice and closes the socket, which then reads as ready while the
connection sits idle between requests. So the check looks at the socket first: idle with nothing to
read is usable as it stands; anything else (a notice, the end of the stream, a transaction left
open, a socket that cannot be polled) is asked ``SELECT 1`` as before.
"""

from __future__ import annotations

import select

from django.db.backends.postgresql.base import DatabaseWrapper as PostgreSQLDatabaseWrapper
from psycopg.pq import TransactionStatus


class DatabaseWrapper(PostgreSQLDatabaseWrapper):
    def is_usable(self) -> bool:
        connection = self.connection
        if connection is None or connection.closed or connection.broken:
            return False
        try:
            idle = connection.info.transaction_status == TransactionStatus.IDLE
            poller = select.poll()
            poller.register(connection.pgconn.socket, select.POLLIN | select.POLLERR | select.POLLHUP)
            quiet = not poller.poll(0)
        except (OSError, ValueError, AttributeError):
            quiet = False
        return (idle and quiet) or super().is_usable()
