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
from dataclasses import asdict
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
    BillingCustomer,
    CatalogPrice,
    CatalogProduct,
    Feature,
    FeatureKind,
    ReviewState,
    TopUpPack,
)
from kernia_billing.money import format_amount
from kernia_billing.selectors import get_customer, status_entitles
from kernia_billing.services.addons.manage import owner_addons, set_addon
from kernia_billing.services.checkout import complete_checkout, start_checkout, start_portal
from kernia_billing.services.customers import customer_state
from kernia_billing.services.reservations import holds, reads, settle
from kernia_billing.services.subscriptions import (
    cancel_subscription,
    change_subscription,
    preview_change,
    resume_subscription,
)
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
REPORT_SESSION_KEY = "demo_report"
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
    current = next((p for p in plans if p.key == state.plan), None)
    for plan in plans:
        plan.shown_prices = currency.prices_in(plan, chosen)
        plan.is_seat_plan = any(pf.included_from_quantity for pf in plan.current_features)
        for pp in plan.shown_prices:
            pp.change_label = _change_label(plan, pp.price, current, state)
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


def _change_label(plan: Any, price: CatalogPrice, current: Any, state: Any) -> str:
    """Upgrade / Downgrade / Switch to annual|monthly / Change seats for a subscriber."""
    if current is None:
        return "Upgrade"
    if plan.pk == current.pk:
        sub = state.subscription
        row = BillingCustomer.objects.filter(pk=state.customer_id).first() if sub else None
        interval = row.billing_interval if row else ""
        if price.recurring_interval != interval:
            return "Switch to annual" if price.recurring_interval == "year" else "Switch to monthly"
        return (
            "Change seats" if any(pf.included_from_quantity for pf in plan.current_features) else ""
        )
    return "Upgrade" if plan.display_order > current.display_order else "Downgrade"


def _quantity(request: HttpRequest) -> int | None:
    raw = request.POST.get("quantity", "")
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest("Seats must be a whole number.") from None
    if not 1 <= value <= 100_000:
        raise InvalidRequest("Seats must be between 1 and 100,000.")
    return value


@login_required
@require_POST
def change_preview(request: HttpRequest) -> HttpResponse:
    """Confirmation page of a plan, seat or interval change: Stripe's preview of it."""
    owner = current_owner(request).owner
    try:
        preview = preview_change(
            owner, price=request.POST.get("price") or None, quantity=_quantity(request)
        )
    except BillingError as exc:
        messages.error(request, f"This change is not possible: {exc.message}")
        return redirect("demo:dashboard")
    shown = {
        **asdict(preview),
        "amount_due_now_display": format_amount(preview.amount_due_now, preview.currency),
        "amount_at_renewal_display": format_amount(preview.amount_at_renewal, preview.currency),
        "lines": [
            {**line, "display": format_amount(line["amount"], preview.currency)}
            for line in preview.lines
        ],
    }
    context = _page(request, "plan", preview=shown, state=customer_state(owner))
    return render(request, "demo/change.html", context)


@login_required
@require_POST
def change_confirm(request: HttpRequest) -> HttpResponse:
    """Apply the change that the confirmation page showed."""
    owner = current_owner(request).owner
    try:
        result = change_subscription(
            owner, price=request.POST.get("price") or None, quantity=_quantity(request)
        )
    except BillingError as exc:
        messages.error(request, f"The change failed: {exc.message}")
        return redirect("demo:dashboard")
    if result.effective == "period_end":
        when = result.effective_at.strftime("%b %d, %Y") if result.effective_at else "period end"
        messages.success(request, f"Scheduled: you move to {result.plan} on {when}.")
    elif result.kind == "unchanged":
        messages.info(
            request,
            "Nothing changed"
            + (" (scheduled change cancelled)." if result.released_schedule else "."),
        )
    else:
        messages.success(request, f"Done: you are on {result.plan} x {result.quantity}.")
    return redirect("demo:dashboard")


@login_required
@require_POST
def cancel(request: HttpRequest) -> HttpResponse:
    """Downgrade to the free plan at the period end (cancel at period end)."""
    try:
        cancel_subscription(current_owner(request).owner, at_period_end=True)
    except BillingError as exc:
        messages.error(request, f"Could not cancel: {exc.message}")
        return redirect("demo:dashboard")
    messages.success(request, "Scheduled: you move to the free plan at the period end.")
    return redirect("demo:dashboard")


@login_required
@require_POST
def resume(request: HttpRequest) -> HttpResponse:
    """Keep the current plan: undo a cancellation or a scheduled downgrade."""
    try:
        result = resume_subscription(current_owner(request).owner)
    except BillingError as exc:
        messages.error(request, f"Could not resume: {exc.message}")
        return redirect("demo:dashboard")
    note = " (scheduled downgrade cancelled)" if result.released_schedule else ""
    messages.success(request, f"You keep your {result.plan} plan{note}.")
    return redirect("demo:dashboard")


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
            quantity=_quantity(request),
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
        report=_open_report(request),
        balance=_balance(current_owner(request).owner),
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


# --- "generate a report": reserve an estimate, confirm the actual ----------------------


def _balance(owner: Any) -> int | None:
    try:
        return check(owner, USE_FEATURE).balance
    except BillingError:
        return None


def _open_report(request: HttpRequest) -> dict[str, Any] | None:
    """The report in progress (its reservation), if it is still open."""
    report = request.session.get(REPORT_SESSION_KEY)
    if not report:
        return None
    customer = get_customer(current_owner(request).owner)
    found = [
        r
        for r in reads.list_reservations(customer.pk if customer else None)
        if r.id == report["id"]
    ]
    if not found:
        request.session.pop(REPORT_SESSION_KEY, None)
        return None
    return {"id": found[0].id, "estimate": found[0].amount, "expires_at": found[0].expires_at}


def _whole(request: HttpRequest, name: str) -> int:
    raw = request.POST.get(name, "")
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise InvalidRequest(f"{name} must be a whole number.", fields={name: raw}) from None
    if not 0 <= value <= MAX_MESSAGES_PER_CLICK:
        raise InvalidRequest(
            f"{name} must be between 0 and {MAX_MESSAGES_PER_CLICK:,}.", fields={name: raw}
        )
    return value


@login_required
@require_POST
def start_report(request: HttpRequest) -> HttpResponse:
    """Reserve the estimate: the balance drops at once, nothing is in the ledger yet."""
    try:
        estimate = _whole(request, "estimate")
        hold = holds.reserve(current_owner(request).owner, USE_FEATURE, estimate)
    except BillingError as exc:
        return _console(request, status=exc.status, refused=f"Not started: {exc.message}")
    request.session[REPORT_SESSION_KEY] = {"id": hold.id}
    request.session[SENT_SESSION_KEY] = (
        f"Report started: {estimate:,} messages held until it finishes."
    )
    return redirect("demo:console")


@login_required
@require_POST
def finish_report(request: HttpRequest) -> HttpResponse:
    """Confirm the actual amount (or cancel: release); the rest of the hold comes back."""
    report = _open_report(request)
    if report is None:
        request.session[SENT_SESSION_KEY] = "No report in progress."
        return redirect("demo:console")
    try:
        if "cancel" in request.POST:
            settle.release(report["id"])
            done = "Report cancelled: the whole hold was given back."
        else:
            actual = _whole(request, "actual")
            settle.confirm(report["id"], actual=actual)
            back = report["estimate"] - actual
            done = f"Report done: {actual:,} messages charged" + (
                f", {back:,} of the hold given back." if back > 0 else "."
            )
    except BillingError as exc:
        return _console(request, status=exc.status, refused=f"Not finished: {exc.message}")
    request.session.pop(REPORT_SESSION_KEY, None)
    request.session[SENT_SESSION_KEY] = done
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
    feature_id = feature_row.pk if feature_row else None
    events = selectors.usage_events(customer_id, feature_id=feature_id)
    totals = selectors.daily_usage(customer_id, feature_id=feature_id, since=since)
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
