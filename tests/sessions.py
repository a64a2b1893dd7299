"""Database sessions ended from outside, as a restarted or failing-over server ends them."""

from __future__ import annotations

import threading


def cut_on_the_server(connection) -> None:
    """End ``connection``'s session from another one, as a restarted server would."""
    from django.db import connections

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_backend_pid()"
            if connection.vendor == "postgresql"
            else "SELECT CONNECTION_ID()"
        )
        session = cursor.fetchone()[0]

    def cut() -> None:
        try:
            with connections["default"].cursor() as other:
                if connection.vendor == "postgresql":
                    other.execute("SELECT pg_terminate_backend(%s)", [session])
                else:
                    other.execute(f"KILL CONNECTION {int(session)}")
        finally:
            connections.close_all()

    thread = threading.Thread(target=cut)
    thread.start()
    thread.join(10)
