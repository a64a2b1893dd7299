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
        "monitor_task_pending_expires, monitor_task_custom_expires) and delete them, "
        "in batches."
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
        monitor = MonitorSettings()
        groups = monitor.expire_task_states
        custom = monitor.task_custom_expires
        try:
            if options["dry_run"]:
                self._dry_run(manager, groups, custom)
                return
            counts = [manager.expire_by_states(states, expires) for states, expires in groups]
            counts.append(manager.expire_custom_states(custom))
            expired = sum(count for count in counts if count is not None)
            purged = manager.purge()
        except DatabaseError as exc:
            raise CommandError(f"The purge failed: {exc}") from exc
        self.stdout.write(f"Expired {expired} task states; purged {purged}.")

    def _dry_run(self, manager: Any, groups: Any, custom: Any) -> None:
        rows = [(", ".join(sorted(states)), states, expires) for states, expires in groups]
        rows.append(("Custom states", None, custom))
        for label, states, expires in rows:
            if expires is None:
                self.stdout.write(f"{label}: never expire.")
                continue
            if states is None:
                expired = manager.expired_custom(expires)
            else:
                expired = manager.expired(states, expires)
            count = expired.filter(hidden=False).count()
            self.stdout.write(f"{label}: {count} would expire (older than {expires}).")
        hidden = manager.filter(hidden=True).count()
        purged = manager.purgeable().count()
        self.stdout.write(f"{purged} already hidden would be purged.")
        if hidden > purged:
            self.stdout.write(
                f"{hidden - purged} already hidden are kept until the rollups have counted "
                "them (an hour at most)."
            )
