from django.contrib import admin
from django.http import HttpResponse
from django.urls import include, path
from django.views.generic import RedirectView


def no_favicon(request):
    # Browsers ask for it on every page: answer that there is none, once a day, rather than
    # fill the log with 404s.
    response = HttpResponse(status=204)
    response["Cache-Control"] = "max-age=86400"
    return response


urlpatterns = [
    path("admin/", admin.site.urls),
    # The JSON API, /monitor/metrics for Prometheus and /monitor/health/.
    path("monitor/", include("django_celery_monitor.urls")),
    path("favicon.ico", no_favicon),
    path("", RedirectView.as_view(url="/admin/celery_monitor/dashboard/")),
]
