"""Expire and purge old task states (for cron)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections

from ...conf import MonitorSettings
from ...models import TaskState


class Command(BaseCommand):
    help = (
        "Hide the task states older than the expiry settings "
        "(monitor_task_success_expires, monitor_task_error_expires, "
        "monitor_task_pending_expires) and delete them, in batches."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--database",
            default=DEFAULT_DB_ALIAS,
            choices=tuple(connections),
            help='The database to purge. Defaults to the "default" database.',
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Only count what would be expired and purged; change nothing.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        manager = TaskState.objects.db_manager(options["database"])
        groups = MonitorSettings().expire_task_states
        try:
            if options["dry_run"]:
                self._dry_run(manager, groups)
                return
            expired = 0
            for states, expires in groups:
                count = manager.expire_by_states(states, expires)
                if count is not None:
                    expired += count
            purged = manager.purge()
        except DatabaseError as exc:
            raise CommandError(f"The purge failed: {exc}") from exc
        self.stdout.write(f"Expired {expired} task states; purged {purged}.")

    def _dry_run(self, manager: Any, groups: Any) -> None:
        for states, expires in groups:
            label = ", ".join(sorted(states))
            if expires is None:
                self.stdout.write(f"{label}: never expire.")
                continue
            count = manager.expired(states, expires).filter(hidden=False).count()
            self.stdout.write(f"{label}: {count} would expire (older than {expires}).")
        hidden = manager.filter(hidden=True).count()
        self.stdout.write(f"{hidden} already hidden would be purged.")
