from django.contrib import admin
from django.urls import path

from . import views

urlpatterns = [
    path("", views.home, name="home"),
    path("hello/", views.hello, name="hello"),
    path("upload/", views.upload, name="upload"),
    path("admin/", admin.site.urls),
]
