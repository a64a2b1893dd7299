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
            time.sleep(options["interval"])
        self.stdout.write(f"Sent {sent} tasks.")
