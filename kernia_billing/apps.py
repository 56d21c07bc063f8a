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
        from django.core.signals import setting_changed

        from . import checks, webhooks  # noqa: F401
        from .services import stripe_gateway

        # KERNIA_BILLING["STRIPE_API_BASE"]: where the SDK sends requests.
        stripe_gateway.apply_api_base()
        setting_changed.connect(
            stripe_gateway.on_setting_changed, dispatch_uid="kernia_billing_api_base"
        )
