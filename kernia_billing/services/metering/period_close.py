"""Period close: a period's usage is in Stripe before Stripe finalizes its invoice.

On ``invoice.created`` for a subscription, the customer's outbox is flushed first.
Stripe finalizes a subscription invoice an hour after ``invoice.created`` is answered
with success, and keeps the invoice a draft while the webhook fails (retrying for up to
72 hours). So when rows are still unsent after the flush (Stripe refused to take them
now: 429/5xx), the webhook fails on purpose and Stripe asks again later; parked rows do
not hold the invoice (they need an operator, see the health view).
"""

from __future__ import annotations

from typing import Any

from ...exceptions import StripeUnavailable
from ...models import BillingCustomer, OverageReport, ReportStatus
from .sender import SendSummary, send_pending

__all__ = ["flush_before_invoice"]


def flush_before_invoice(invoice: dict[str, Any]) -> SendSummary | None:
    """Send the invoiced customer's queued overage now (the ``invoice.created`` receiver)."""
    customer_ref = invoice.get("customer")
    stripe_customer_id = customer_ref.get("id") if isinstance(customer_ref, dict) else customer_ref
    if not stripe_customer_id or invoice.get("status") not in (None, "draft", "open"):
        return None
    customer = BillingCustomer.objects.filter(stripe_customer_id=stripe_customer_id).first()
    if customer is None:
        return None
    summary = send_pending(customer_id=customer.pk, ignore_backoff=True)
    waiting = OverageReport.objects.filter(customer=customer, status=ReportStatus.PENDING)
    if waiting.exists():
        raise StripeUnavailable(
            f"{waiting.count()} overage report(s) of customer {customer.pk} could not be sent "
            "before the invoice; failing the webhook so Stripe keeps the invoice a draft "
            "and retries."
        )
    return summary
