from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "example_project.accounts"
    label = "accounts"
    verbose_name = "Demo accounts and organizations"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The host project decides where Stripe lives: the local fake by default.
        from django.conf import settings

        from kernia_billing.testing import configure_stripe_sdk

        if "api.stripe.com" not in settings.STRIPE_API_BASE:
            configure_stripe_sdk(settings.STRIPE_API_BASE)
