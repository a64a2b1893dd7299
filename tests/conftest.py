import pytest

from tests.celery_app import app as celery_app


@pytest.fixture
def app():
    """The test project's Celery app."""
    return celery_app
