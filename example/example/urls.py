from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

urlpatterns = [
    path("admin/", admin.site.urls),
    # The JSON API, /monitor/metrics for Prometheus and /monitor/health/.
    path("monitor/", include("django_celery_monitor.urls")),
    path("", RedirectView.as_view(url="/admin/celery_monitor/dashboard/")),
]
