"""Send a steady mix of demo tasks until stopped."""

import random
import time

from django.core.management.base import BaseCommand

from demo import tasks


class Command(BaseCommand):
    help = "Send demo tasks (succeeding, failing, retrying, sleeping) until stopped."

    def add_arguments(self, parser):
        parser.add_argument("--interval", type=float, default=1.0, help="Seconds between sends.")
        parser.add_argument(
            "--count", type=int, default=0, help="Stop after this many (0: never)."
        )
        parser.add_argument(
            "--burst-every",
            type=int,
            default=45,
            help="Every this many sends, a burst of report tasks fills the reports queue "
            "(0: never).",
        )
        parser.add_argument("--burst-size", type=int, default=40)

    def handle(self, *args, **options):
        sent = 0
        while not options["count"] or sent < options["count"]:
            kind = random.choices(
                ["add", "fail", "flaky", "sleep", "eta", "fan_out"], [5, 1, 2, 2, 1, 1]
            )[0]
            if kind == "add":
                tasks.add.delay(random.randint(0, 99), random.randint(0, 99))
            elif kind == "fail":
                tasks.fail.delay("the demo failed on purpose")
            elif kind == "flaky":
                tasks.flaky.delay(chance=0.6)
            elif kind == "sleep":
                tasks.sleep.delay(random.choice([1, 3, 8]))
            elif kind == "eta":
                tasks.add.apply_async((1, 1), countdown=15)
            else:
                tasks.fan_out.delay(3)
            sent += 1
            if options["burst_every"] and sent % options["burst_every"] == 0:
                # The worker takes a few at a time: the queues page shows it fill and drain.
                for _ in range(options["burst_size"]):
                    tasks.sleep.apply_async((1,), queue="reports")
            time.sleep(options["interval"])
        self.stdout.write(f"Sent {sent} tasks.")
