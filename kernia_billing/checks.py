"""System checks. Ids are stable: ``kernia_billing.E001`` ... (errors), ``W001`` ... (warnings)."""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.db.models import Q
from django.utils.module_loading import import_string

from .conf import DEFAULTS, STRIPE_SUBSCRIPTION_STATUSES, billing_settings
from .models import CatalogPrice
from .selectors import flagged_mapped_prices
from .services.metering.health import overage_problems, reporting_health


@register()
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    if not apps.is_installed("djstripe"):
        errors.append(
            Error(
                "dj-stripe is not installed.",
                hint='Add "djstripe" to INSTALLED_APPS before "kernia_billing".',
                id="kernia_billing.E001",
            )
        )
    if getattr(settings, "DJSTRIPE_FOREIGN_KEY_TO_FIELD", None) != "id":
        errors.append(
            Error(
                'DJSTRIPE_FOREIGN_KEY_TO_FIELD must be "id".',
                hint='Set DJSTRIPE_FOREIGN_KEY_TO_FIELD = "id" in your settings.',
                id="kernia_billing.E002",
            )
        )
    user_settings = getattr(settings, "KERNIA_BILLING", {})
    if not isinstance(user_settings, dict):
        errors.append(Error("KERNIA_BILLING must be a dict.", id="kernia_billing.E009"))
        return errors
    unknown = sorted(set(user_settings) - set(DEFAULTS))
    if unknown:
        errors.append(
            Error(
                f"Unknown KERNIA_BILLING keys: {', '.join(unknown)}.",
                hint=f"Known keys: {', '.join(sorted(DEFAULTS))}.",
                id="kernia_billing.E003",
            )
        )
    org_model = user_settings.get("ORGANIZATION_MODEL")
    if org_model:
        try:
            apps.get_model(org_model)
        except (LookupError, ValueError):
            errors.append(
                Error(
                    f"KERNIA_BILLING['ORGANIZATION_MODEL'] = {org_model!r} is not an "
                    "installed model.",
                    hint='Use "app_label.ModelName".',
                    id="kernia_billing.E004",
                )
            )
        if not user_settings.get("IS_ORGANIZATION_MEMBER"):
            errors.append(
                Error(
                    "ORGANIZATION_MODEL is set but IS_ORGANIZATION_MEMBER is not.",
                    hint="Point IS_ORGANIZATION_MEMBER at a callable(user, organization) "
                    "-> bool that says who may act for an organization.",
                    id="kernia_billing.E005",
                )
            )
    errors.extend(_check_subscription_policy(user_settings))
    api_base = user_settings.get("STRIPE_API_BASE")
    if api_base is not None and not (
        isinstance(api_base, str) and api_base.startswith(("http://", "https://"))
    ):
        errors.append(
            Error(
                f"KERNIA_BILLING['STRIPE_API_BASE'] = {api_base!r} is not an http(s) URL.",
                hint='e.g. "http://127.0.0.1:12111" for the fake Stripe, or remove the key.',
                id="kernia_billing.E010",
            )
        )
    trial_end = user_settings.get("TRIAL_END_WITHOUT_PAYMENT_METHOD")
    if trial_end not in (None, "cancel", "pause"):  # plan changes
        errors.append(
            Error(
                f"KERNIA_BILLING['TRIAL_END_WITHOUT_PAYMENT_METHOD'] = {trial_end!r} is not "
                "None, 'cancel' or 'pause'.",
                hint="Stripe's trial_settings.end_behavior.missing_payment_method: cancel or "
                "pause the subscription when a trial ends without a payment method.",
                id="kernia_billing.E014",
            )
        )
    member_path = user_settings.get("IS_ORGANIZATION_MEMBER")
    if isinstance(member_path, str):
        try:
            import_string(member_path)
        except ImportError:
            errors.append(
                Error(
                    f"IS_ORGANIZATION_MEMBER {member_path!r} cannot be imported.",
                    id="kernia_billing.E006",
                )
            )
    return errors


@register(Tags.database)
def check_mapped_prices(
    app_configs: Any = None, databases: Any = None, **kwargs: Any
) -> list[Warning]:
    """Mapped prices that Stripe archived or deleted (``check --database default``)."""
    from django.db import DatabaseError

    warnings: list[Warning] = []
    for alias in databases or ():
        try:
            flagged = list(flagged_mapped_prices().using(alias))
        except DatabaseError:
            continue  # not migrated yet: nothing can be mapped
        for price in flagged:
            state = "deleted" if price.deleted_in_stripe else "archived"
            warnings.append(
                Warning(
                    f"Stripe price {price.stripe_id} is mapped to plan "
                    f"{price.plan_mapping.plan.key!r} but is {state} in Stripe.",
                    hint="Map a current price to the plan, or unmap this one in the admin.",
                    obj=price,
                    id="kernia_billing.W001",
                )
            )
    return warnings


def _check_subscription_policy(user_settings: dict[str, Any]) -> list[CheckMessage]:
    """PAST_DUE_GRACE must be a bool; ENTITLING_STATUSES a list of Stripe statuses."""
    errors: list[CheckMessage] = []
    grace = user_settings.get("PAST_DUE_GRACE", True)
    if not isinstance(grace, bool):
        errors.append(
            Error(
                f"KERNIA_BILLING['PAST_DUE_GRACE'] must be True or False, not {grace!r}.",
                id="kernia_billing.E007",
            )
        )
    statuses = user_settings.get("ENTITLING_STATUSES", ())
    if isinstance(statuses, str) or not isinstance(statuses, (list, tuple, set, frozenset)):
        errors.append(
            Error(
                "KERNIA_BILLING['ENTITLING_STATUSES'] must be a list of subscription statuses.",
                hint='e.g. ("active", "trialing")',
                id="kernia_billing.E008",
            )
        )
        return errors
    unknown = sorted(str(s) for s in set(statuses) - STRIPE_SUBSCRIPTION_STATUSES)
    if unknown:
        errors.append(
            Error(
                f"KERNIA_BILLING['ENTITLING_STATUSES'] has unknown statuses: {', '.join(unknown)}.",
                hint=f"Known: {', '.join(sorted(STRIPE_SUBSCRIPTION_STATUSES))}.",
                id="kernia_billing.E008",
            )
        )
    if "past_due" in statuses:
        errors.append(
            Warning(
                "past_due in KERNIA_BILLING['ENTITLING_STATUSES'] entitles even with "
                "PAST_DUE_GRACE off.",
                hint="Remove it and use PAST_DUE_GRACE.",
                id="kernia_billing.W002",
            )
        )
    return errors


#: ALLOWED_HOSTS entries that only name this machine.
LOCAL_HOSTS = frozenset({"localhost", ".localhost", "127.0.0.1", "[::1]", "::1", "testserver"})


@register(Tags.security)
def check_debug_webhooks(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """DEBUG on, non-local hosts allowed and dj-stripe's webhook URL routed (W003).

    With DEBUG on, dj-stripe 2.11 verifies a webhook's signature with the secret in
    the request's ``X-Djstripe-Webhook-Secret`` header when there is one (meant for
    ``stripe listen``), so the sender picks the secret and can sign any event.
    """
    if not settings.DEBUG or not _djstripe_webhook_routed():
        return []
    public = [host for host in settings.ALLOWED_HOSTS if host.lower() not in LOCAL_HOSTS]
    if not public:
        return []
    return [
        Warning(
            "DEBUG is on while dj-stripe's webhook URL is served to non-local hosts "
            f"({', '.join(public)}): dj-stripe then accepts a webhook signed with any "
            "secret the sender names in the X-Djstripe-Webhook-Secret header, so anyone "
            "who reaches the site can forge Stripe events (and change plans).",
            hint="Turn DEBUG off wherever the site is reachable from other machines, or "
            "limit ALLOWED_HOSTS to localhost/127.0.0.1 while DEBUG is on.",
            id="kernia_billing.W003",
        )
    ]


def _djstripe_webhook_routed() -> bool:
    from uuid import UUID

    from django.urls import NoReverseMatch, reverse

    try:
        reverse("djstripe:djstripe_webhook_by_uuid", kwargs={"uuid": UUID(int=0)})
    except NoReverseMatch:
        return False
    return True


@register(Tags.database)
def check_overage_billing(
    app_configs: Any = None, databases: Any = None, **kwargs: Any
) -> list[CheckMessage]:
    """Overage that is not billed, billed through a broken price, or not reaching Stripe
    (``check --database default``)."""
    from django.db import DatabaseError

    messages: list[CheckMessage] = []
    for alias in databases or ():
        try:
            problems = overage_problems(using=alias)
            health = reporting_health() if alias == "default" else None
        except DatabaseError:
            continue  # not migrated yet
        for problem in problems:
            level = Error if problem.id.split(".")[-1].startswith("E") else Warning
            messages.append(
                level(problem.message, hint=problem.hint, obj=problem.plan_feature, id=problem.id)
            )
        if health is not None and health.alarming:
            messages.append(
                Warning(
                    f"Usage reporting to Stripe is behind: {health.pending} overage report(s) "
                    f"unsent (oldest {health.lag_seconds} s), {health.parked_total} parked.",
                    hint="Run `manage.py kernia_report_usage`; see parked reports in the admin.",
                    id="kernia_billing.W011",
                )
            )
    return messages


@register()
def check_history_database(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """HISTORY_DATABASE names a database alias that exists (E022)."""
    alias = billing_settings.HISTORY_DATABASE
    if alias is None or alias in settings.DATABASES:
        return []
    return [
        Error(
            f"KERNIA_BILLING['HISTORY_DATABASE'] is {alias!r}, which is not in DATABASES.",
            hint="Name the read replica's alias from DATABASES, or remove the setting to "
            "read history from the default database.",
            id="kernia_billing.E022",
        )
    ]


@register(Tags.database)
def check_addon_topup_prices(
    app_configs: Any = None, databases: Any = None, **kwargs: Any
) -> list[CheckMessage]:
    """A price mapped twice (plan, add-on, top-up pack), or a pack on a recurring price.

    The admin and the models refuse both; rows written around them (SQL, a fixture)
    are caught here (``check --database default``).
    """
    from django.db import DatabaseError

    found: list[CheckMessage] = []
    for alias in databases or ():
        try:
            twice = list(
                CatalogPrice.objects.using(alias).filter(
                    Q(plan_mapping__isnull=False, addon_mapping__isnull=False)
                    | Q(plan_mapping__isnull=False, topup_mapping__isnull=False)
                    | Q(addon_mapping__isnull=False, topup_mapping__isnull=False)
                )
            )
            wrong_kind = list(
                CatalogPrice.objects.using(alias).filter(
                    Q(topup_mapping__isnull=False) & ~Q(price_type="one_time")
                    | Q(addon_mapping__isnull=False) & ~Q(price_type="recurring")
                )
            )
        except DatabaseError:
            continue  # not migrated yet
        for price in twice:
            found.append(
                Error(
                    f"Stripe price {price.stripe_id} is mapped to more than one of a plan, an "
                    "add-on and a top-up pack.",
                    hint="A price sells one thing: unmap it from all but one in the admin.",
                    obj=price,
                    id="kernia_billing.E016",
                )
            )
        for price in wrong_kind:
            found.append(
                Error(
                    f"Stripe price {price.stripe_id} ({price.price_type or 'unknown type'}) "
                    "sells an add-on (needs a recurring price) or a top-up pack (needs a "
                    "one-time price) it cannot sell.",
                    hint="Map a price of the right type instead.",
                    obj=price,
                    id="kernia_billing.E017",
                )
            )
    return found
