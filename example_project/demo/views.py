"""The demo SaaS's pages. Thin doors: pick the owner, call a kernia_billing service, render.

Every write goes through kernia_billing's services (``start_checkout``,
``complete_checkout``, ``start_portal``, ``track`` via ``@track_usage``); reads use
its selectors and ``customer_state``.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.serializers.json import DjangoJSONEncoder
from django.db.models import Prefetch
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST

from kernia_billing import selectors
from kernia_billing.api.exceptions import error_body
from kernia_billing.api.serializers import render_check
from kernia_billing.decorators import track_usage
from kernia_billing.exceptions import BillingError, InvalidRequest
from kernia_billing.models import (
    AddOnPrice,
    CatalogPrice,
    CatalogProduct,
    Feature,
    FeatureKind,
    ReviewState,
    TopUpPack,
)
from kernia_billing.selectors import get_customer, status_entitles
from kernia_billing.services.addons.manage import owner_addons, set_addon
from kernia_billing.services.checkout import complete_checkout, start_checkout, start_portal
from kernia_billing.services.customers import customer_state
from kernia_billing.services.usage import check
from kernia_billing.types import CheckResult

from . import chart, currency, webhook_health
from .owners import current_owner, switch_owner

#: The product action behind "use the feature": sending messages.
USE_FEATURE = "messages"
MAX_MESSAGES_PER_CLICK = 100_000
CHART_DAYS = 14
USAGE_ROWS = 50
SENT_SESSION_KEY = "demo_sent"
SUBMISSION_TOKEN = re.compile(r"[0-9a-f]{32}")


def _page(request: HttpRequest, section: str, **context: Any) -> dict[str, Any]:
    choice = current_owner(request)
    return {"choice": choice, "owner": choice.owner, "section": section, **context}


def _absolute(request: HttpRequest, name: str) -> str:
    return request.build_absolute_uri(reverse(name))


# --- owner switch ---------------------------------------------------------------------


@login_required
@require_POST
def switch(request: HttpRequest) -> HttpResponse:
    """Act for the personal customer ("") or an organization the user belongs to."""
    switch_owner(request, request.POST.get("organization", ""))
    target = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
        target = reverse("demo:dashboard")
    return redirect(target)


# --- current plan, upgrade, portal ----------------------------------------------------


@login_required
@require_GET
def dashboard(request: HttpRequest) -> HttpResponse:
    """Current plan, subscription state, balances, and the plans one can upgrade to."""
    context = _page(request, "plan")
    state = customer_state(context["owner"])
    # Subscribers change plans in the billing portal; a second checkout is refused.
    subscribed = state.subscription is not None and status_entitles(state.subscription.status)
    plans = list(selectors.pricing_plans())
    currencies = sorted({pp.price.currency for plan in plans for pp in plan.offered_prices})
    chosen = currency.visitor_currency(request, currencies)
    for plan in plans:
        plan.shown_prices = currency.prices_in(plan, chosen)
    # Top-ups ("Buy 1,000 messages") and, on a subscription, its add-ons ("Extra seats").
    packs = TopUpPack.objects.filter(
        active=True, price__review_state=ReviewState.APPROVED, price__active=True
    ).select_related("price")
    addon_prices = (
        AddOnPrice.objects.filter(
            addon__active=True,
            price__active=True,
            addon__addon_features__feature__kernia_plan_features__plan__key=state.plan,
        )
        .distinct()
        .select_related("addon", "price")
        if subscribed
        else []
    )
    on = {item.stripe_price_id: item.quantity for item in owner_addons(context["owner"])}
    for mapping in addon_prices:
        mapping.current_quantity = on.get(mapping.price.stripe_id, 0)  # type: ignore[attr-defined]
    context.update(
        state=state,
        plans=plans,
        subscribed=subscribed,
        currency=chosen,
        currencies=currencies,
        packs=list(packs),
        addon_prices=list(addon_prices),
    )
    return render(request, "demo/dashboard.html", context)


@login_required
@require_POST
def addon(request: HttpRequest) -> HttpResponse:
    """Set an add-on's quantity on the subscription (a subscription item, via Stripe)."""
    owner = current_owner(request).owner
    try:
        quantity = int(request.POST.get("quantity", ""))
        set_addon(owner, request.POST.get("price", ""), quantity)
    except ValueError:
        messages.error(request, "Quantity must be a whole number.")
    except BillingError as exc:
        messages.error(request, f"The add-on could not be changed: {exc.message}")
    else:
        messages.success(request, "Add-on updated.")
    return redirect("demo:dashboard")


@login_required
@require_POST
def checkout(request: HttpRequest) -> HttpResponse:
    """Open a Stripe Checkout Session for the chosen price and send the browser there."""
    owner = current_owner(request).owner
    try:
        started = start_checkout(
            owner,
            price=request.POST.get("price", ""),
            success_url=_absolute(request, "demo:checkout-return"),
            cancel_url=_absolute(request, "demo:checkout-cancelled"),
        )
    except BillingError as exc:
        messages.error(request, f"Checkout could not start: {exc.message}")
        return redirect("demo:dashboard")
    return redirect(started.url)


@login_required
@require_GET
def checkout_return(request: HttpRequest) -> HttpResponse:
    """Back from Stripe Checkout: apply the new subscription now, before the webhook."""
    owner = current_owner(request).owner
    try:
        result = complete_checkout(request.GET.get("session_id", ""), owner=owner)
    except BillingError as exc:
        messages.error(request, f"Checkout could not be confirmed: {exc.message}")
        return redirect("demo:dashboard")
    if result.status == "complete" and not result.subscription_id:
        messages.success(request, "Thank you! Your top-up was added to your balance.")
    elif result.status == "complete":
        plan_name = customer_state(owner).plan_name or result.plan
        messages.success(request, f"Thank you! You are now on the {plan_name} plan.")
    else:
        messages.warning(request, f"Checkout is {result.status}: nothing changed yet.")
    return redirect("demo:dashboard")


@login_required
@require_GET
def checkout_cancelled(request: HttpRequest) -> HttpResponse:
    """Back from Stripe Checkout without paying: say so."""
    messages.info(request, "Checkout cancelled: nothing was charged and your plan is unchanged.")
    return redirect("demo:dashboard")


@login_required
@require_POST
def portal(request: HttpRequest) -> HttpResponse:
    """Create a billing portal link for the current customer and open it."""
    try:
        started = start_portal(
            current_owner(request).owner, return_url=_absolute(request, "demo:dashboard")
        )
    except BillingError as exc:
        messages.error(request, f"No billing portal yet: {exc.message}")
        return redirect("demo:dashboard")
    return redirect(started.url)


# --- catalog -------------------------------------------------------------------------


@login_required
@require_GET
def catalog(request: HttpRequest) -> HttpResponse:
    """Imported Stripe products and prices with their review state; plans and features."""
    prices = CatalogPrice.objects.select_related("plan_mapping__plan").order_by(
        "recurring_interval", "unit_amount", "stripe_id"
    )
    products = CatalogProduct.objects.prefetch_related(
        Prefetch("prices", queryset=prices)
    ).order_by("name", "stripe_id")
    context = _page(
        request,
        "catalog",
        products=products,
        plans=selectors.pricing_plans(),
        flagged=selectors.flagged_mapped_prices(),
    )
    return render(request, "demo/catalog.html", context)


# --- check console and "use the feature" ----------------------------------------------


def _console(request: HttpRequest, status: int = 200, **extra: Any) -> HttpResponse:
    feature = request.GET.get("feature") or USE_FEATURE
    amount = request.GET.get("amount") or "1"
    context = _page(
        request,
        "console",
        features=Feature.objects.filter(archived=False).order_by("name"),
        feature=feature,
        amount=amount,
        use_feature=USE_FEATURE,
        # One token per rendered form: the send's idempotency key, so a resubmitted
        # form (double click, back + resend) is counted once.
        submission=uuid.uuid4().hex,
        sent=request.session.pop(SENT_SESSION_KEY, ""),
        **extra,
    )
    if "result_json" not in context and "feature" in request.GET:
        context["result_json"], context["result_allowed"] = _check_json(
            context["owner"], feature, amount
        )
    return render(request, "demo/console.html", context, status=status)


def _check_json(owner: Any, feature: str, amount: str) -> tuple[str, bool]:
    """The check answer exactly as ``POST billing/check`` renders it (or its error)."""
    try:
        try:
            required = int(amount)
        except ValueError:
            raise InvalidRequest(
                "required must be an integer.", fields={"required": "Must be an integer."}
            ) from None
        result = check(owner, feature, required=required)
    except BillingError as exc:
        body = error_body(exc.code, exc.message, exc.fields)
        return json.dumps(body, indent=2, cls=DjangoJSONEncoder), False
    data = render_check(result)
    return json.dumps(data, indent=2, cls=DjangoJSONEncoder), result.allowed


@login_required
@require_GET
def console(request: HttpRequest) -> HttpResponse:
    """Pick a feature and an amount, see the check JSON."""
    return _console(request)


def _message_count(request: HttpRequest) -> int:
    raw = request.POST.get("count", "1")
    try:
        count = int(raw)
    except (TypeError, ValueError):
        raise InvalidRequest("count must be a whole number.", fields={"count": raw}) from None
    if not 1 <= count <= MAX_MESSAGES_PER_CLICK:
        raise InvalidRequest(
            f"Send between 1 and {MAX_MESSAGES_PER_CLICK:,} messages.", fields={"count": raw}
        )
    return count


def _refused(request: HttpRequest, result: CheckResult) -> HttpResponseBase:
    if result.reason == "insufficient_balance":
        why = f"you have {result.balance:,} messages left and tried to send {result.required:,}"
    else:
        why = f"your plan does not include messages ({result.reason})"
    return _console(request, status=402, refused=f"Not sent: {why}.", refused_result=result)


def _submission_key(request: HttpRequest) -> str | None:
    token = request.POST.get("submission", "")
    return f"demo-send-{token}" if SUBMISSION_TOKEN.fullmatch(token) else None


@login_required
@require_POST
@track_usage(
    USE_FEATURE,
    amount=_message_count,
    owner=lambda request: current_owner(request).owner,
    idempotency_key=_submission_key,
    track_redirects=True,
    on_denied=_refused,
)
def send_messages(request: HttpRequest) -> HttpResponse:
    """The fake product action: "send" messages, then redirect (post/redirect/get).

    ``@track_usage`` checks first and tracks after the redirect with the form's token as
    idempotency key: reloading the result page is a GET, and a resubmitted form is
    counted once.
    """
    count = _message_count(request)
    key = _submission_key(request)
    customer = get_customer(current_owner(request).owner)
    if (
        key
        and customer
        and selectors.usage_events(customer.pk).filter(idempotency_key=key).exists()
    ):
        sent = "Already sent: this form was submitted before, nothing was charged again."
    else:
        text = (request.POST.get("text") or "Hello from the demo").strip()[:200]
        sent = f"Sent {count:,} message{'s' if count != 1 else ''}: “{text}”."
    request.session[SENT_SESSION_KEY] = sent
    return redirect("demo:console")


# --- usage history ---------------------------------------------------------------------


@login_required
@require_GET
def usage(request: HttpRequest) -> HttpResponse:
    """The usage ledger: a table of recent events and a chart of daily totals."""
    context = _page(request, "usage")
    customer = get_customer(context["owner"])
    customer_id = customer.pk if customer else None
    today = timezone.now().astimezone(dt.UTC).date()
    since = dt.datetime.combine(
        today - dt.timedelta(days=CHART_DAYS - 1), dt.time.min, tzinfo=dt.UTC
    )
    feature = request.GET.get("feature") or ""
    feature_row = Feature.objects.filter(key=feature).first() if feature else None
    events = selectors.usage_events(customer_id, feature_id=feature_row.pk if feature_row else None)
    totals = selectors.daily_usage_totals(events.filter(created_at__gte=since))
    context.update(
        events=events[:USAGE_ROWS],
        chart=chart.daily_bars(totals, days=CHART_DAYS, today=today),
        chart_compact=chart.daily_bars(
            totals, days=chart.COMPACT_DAYS, today=today, width=chart.COMPACT_WIDTH
        ),
        chart_compact_days=chart.COMPACT_DAYS,
        features=Feature.objects.filter(archived=False, kind=FeatureKind.METERED).order_by("name"),
        feature=feature_row.key if feature_row else "",
        chart_days=CHART_DAYS,
    )
    return render(request, "demo/usage.html", context)


# --- webhook health --------------------------------------------------------------------


@login_required
@require_GET
def webhooks(request: HttpRequest) -> HttpResponse:
    """Last event received, counts by outcome and by type, recent deliveries.

    Staff only: the deliveries carry every customer's Stripe events.
    """
    if not request.user.is_staff:
        return render(request, "demo/staff_only.html", _page(request, "webhooks"), status=403)
    context = _page(request, "webhooks", health=webhook_health.summary())
    return render(request, "demo/webhooks.html", context)
