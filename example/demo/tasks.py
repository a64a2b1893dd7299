"""Tasks that succeed, fail, retry, and sleep, so the monitor has something to show."""

import random
import time

from celery import shared_task


@shared_task
def add(x, y):
    return x + y


@shared_task
def fail(message="something went wrong"):
    raise ValueError(message)


@shared_task(bind=True, max_retries=3, default_retry_delay=2)
def flaky(self, chance=0.5):
    if random.random() < chance:
        raise self.retry(exc=ConnectionError("the service did not answer"))
    return "made it"


@shared_task
def sleep(seconds):
    time.sleep(seconds)
    return seconds


@shared_task
def fan_out(n):
    """Start ``n`` children: the monitor links them to their parent."""
    for i in range(n):
        add.delay(i, i)
    return n
