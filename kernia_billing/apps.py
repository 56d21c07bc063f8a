from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class KerniaBillingConfig(AppConfig):
    name = "kernia_billing"
    label = "kernia_billing"
    # The admin index lists apps by name: this sorts before dj-stripe's look-alike
    # models (its Customer, Price, Product, Feature...) and says what is ours.
    verbose_name = _("Billing — plans, features, customers (kernia)")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Importing registers the system checks and the dj-stripe webhook receivers.
        from . import checks, webhooks  # noqa: F401
