from django.apps import AppConfig


class DemoConfig(AppConfig):
    """The demo SaaS's pages: billing state, catalog, check console, usage, webhooks."""

    name = "example_project.demo"
    label = "demo"
    verbose_name = "Demo SaaS"
    default_auto_field = "django.db.models.BigAutoField"
