from django.urls import path

app_name = "kernia_billing"

urlpatterns: list = []
