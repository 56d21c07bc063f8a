from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class KerniaBillingConfig(AppConfig):
    name = "kernia_billing"
    label = "kernia_billing"
    verbose_name = _("Billing entitlements")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Importing registers the system checks and the dj-stripe webhook receivers.
        from . import checks, webhooks  # noqa: F401
