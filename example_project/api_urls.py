"""The billing API alone: what the OpenAPI schema documents.

kernia_billing's views carry their own schema inspector, so a schema generated from
these patterns needs no ``REST_FRAMEWORK["DEFAULT_SCHEMA_CLASS"]``
(``manage.py spectacular --urlconf example_project.api_urls``).
"""

from django.urls import include, path

urlpatterns = [path("api/auth/", include("kernia_billing.api.urls"))]
