"""Run the camera: record the cluster's tasks and workers in the database."""

from __future__ import annotations

import logging
import signal
from typing import Any

from celery import Celery
from celery.app.utils import find_app
from celery.utils.time import rate
from django.core.management.base import BaseCommand, CommandError

from ...conf import get_celery_app
from ...events import Shard
from ...runner import MonitorRunner, tune_garbage_collector


class Command(BaseCommand):
    help = (
        "Record Celery tasks and workers from the event stream in the database. "
        "Reconnects when the broker goes away; SIGTERM or Ctrl-C writes a last snapshot "
        "and exits."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "-A",
            "--app",
            help="The Celery app (module:attribute). Default: the CELERY_MONITOR_APP setting, "
            "or the project's app.",
        )
        parser.add_argument(
            "-F",
            "--frequency",
            type=float,
            default=2.0,
            help="Seconds between two snapshots (default: 2).",
        )
        parser.add_argument(
            "-r", "--maxrate", help='At most this many snapshots, as a rate such as "10/m".'
        )
        parser.add_argument(
            "--cleanup-frequency",
            type=float,
            default=3600.0,
            help="Seconds between two expiries and purges of old tasks (default: 3600).",
        )
        parser.add_argument(
            "--enable-events",
            type=float,
            default=None,
            metavar="SECONDS",
            help="Every SECONDS, ask all workers to send task events (for workers not "
            "started with -E).",
        )
        parser.add_argument(
            "--queue-name",
            help="Name of this camera's event queue; give each camera its own. "
            "Default: celery_monitor.<hostname>.",
        )
        parser.add_argument(
            "--shard",
            metavar="K/N",
            help="Keep only the tasks whose id hashes to shard K of N (1/2 and 2/2 split the "
            "tasks between two cameras); every shard still records every worker. Each shard "
            "needs its own event queue (the default name includes the shard).",
        )
        parser.add_argument(
            "--max-tasks-in-memory",
            type=int,
            default=100_000,
            help="How many unfinished tasks the camera keeps track of (default: 100000).",
        )

    def _setup_logging(self, verbosity: int) -> None:
        """Show the monitor's log on the console, unless the project's LOGGING handles it."""
        logger = logging.getLogger("django_celery_monitor")
        logger.setLevel({0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG))
        if not logger.hasHandlers():
            handler = logging.StreamHandler(self.stderr)
            handler.terminator = ""  # OutputWrapper ends each line itself
            handler.setFormatter(logging.Formatter("[%(asctime)s %(levelname)s] %(message)s"))
            logger.addHandler(handler)

    def handle(self, *args: Any, **options: Any) -> None:
        check_options(options)
        try:
            # As celery -A: "proj", "proj.celery" or "proj.celery:app".
            app = find_app(options["app"]) if options["app"] else get_celery_app()
        except (ImportError, AttributeError, ValueError) as exc:
            raise CommandError(f"Cannot load the Celery app {options['app']!r}: {exc}") from exc
        if not isinstance(app, Celery):
            raise CommandError(f"{options['app']!r} is not a Celery app: {app!r}")
        shard = None
        if options["shard"]:
            try:
                shard = Shard.parse(options["shard"])
            except ValueError as exc:
                raise CommandError(str(exc)) from exc
        self._setup_logging(options["verbosity"])
        tune_garbage_collector()
        runner = MonitorRunner(
            app,
            freq=options["frequency"],
            maxrate=options["maxrate"],
            cleanup_freq=options["cleanup_frequency"],
            enable_events_every=options["enable_events"],
            queue_name=options["queue_name"],
            max_tasks_in_memory=options["max_tasks_in_memory"],
            shard=shard,
        )

        def stop(signum: int, frame: Any) -> None:
            self.stdout.write(f"Got signal {signal.Signals(signum).name}; stopping...")
            runner.stop()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        self.stdout.write(
            f"Recording events from {app.connection_for_read().as_uri()} "
            f"every {options['frequency']} s (queue {runner.queue_name}"
            + (f", shard {shard}" if shard else "")
            + "). Ctrl-C to stop."
        )
        runner.run()
        self.stdout.write("Stopped.")


def check_options(options: dict[str, Any]) -> None:
    """Refuse the options a camera cannot run with, before it connects."""
    if options["frequency"] <= 0 or options["cleanup_frequency"] <= 0:
        raise CommandError("--frequency and --cleanup-frequency must be positive.")
    if options["max_tasks_in_memory"] < 1:
        raise CommandError("--max-tasks-in-memory must be at least 1.")
    if options["enable_events"] is not None and not options["enable_events"] > 0:
        raise CommandError("--enable-events must be a positive number of seconds.")
    if options["maxrate"] is not None:
        try:
            per_second = rate(options["maxrate"])
        except (ValueError, KeyError) as exc:
            per_second = None
            problem = f"{type(exc).__name__}: {exc}"
        if per_second is None or not per_second > 0:
            raise CommandError(
                f'--maxrate must be a positive rate such as "10/m" or "2/s", not '
                f"{options['maxrate']!r}" + (f" ({problem})" if per_second is None else "")
            )
