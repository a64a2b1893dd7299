from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("monitor/", include("django_celery_monitor.urls")),
]
