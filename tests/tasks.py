"""Tasks of the test project: they succeed, fail, retry, and sleep."""

import time

from tests.celery_app import app


@app.task
def add(x, y):
    return x + y


@app.task
def fail(message="boom"):
    raise ValueError(message)


@app.task(bind=True, max_retries=2, default_retry_delay=0.1)
def retry_then_succeed(self, until=1):
    if self.request.retries < until:
        raise self.retry(exc=RuntimeError(f"attempt {self.request.retries}"))
    return self.request.retries


@app.task
def sleep(seconds):
    time.sleep(seconds)
    return seconds
