"""Time passing on subscriptions: renewals, failed payments, forced states."""

from __future__ import annotations

import copy

from .core import (
    JSON,
    SUBSCRIPTION_STATUSES,
    _diff,
    _snapshot,
)
from .subscriptions import SubscriptionStore


class LifecycleStore(SubscriptionStore):
    """Time passing on subscriptions: renewals, failed payments, forced states."""

    # ------------------------------------------------------------- lifecycle helpers

    def advance_subscription(self, sub_id: str) -> JSON:
        """Move a subscription into its next billing period, like time passing on Stripe.

        The clock jumps to the current period end. A subscription set to cancel
        at period end is canceled instead; a trial ends and the subscription
        becomes active. Otherwise every item moves one period on. The new
        period's invoice is charged to the default payment method; without one
        the payment fails and the subscription becomes ``past_due``.
        """
        with self.lock:
            sub = self._live_subscription(sub_id)
            period_end = self._period_end(sub)
            if self.now() < period_end:
                self.set_clock(period_end)
            if sub["cancel_at_period_end"]:
                self._cancel_subscription_locked(sub)
                return _snapshot(sub)
            before = copy.deepcopy(sub)
            if sub["status"] == "trialing" and self._trial_ends_unpaid_locked(sub):
                return _snapshot(sub)
            if sub["status"] == "trialing":
                sub["status"] = "active"
                for item in sub["items"]["data"]:
                    self._period_no[item["id"]] = 0
                    self._refresh_item(sub, item)
                reason = "subscription_cycle"
            else:
                for item in sub["items"]["data"]:
                    if int(item["current_period_end"]) <= period_end:
                        self._period_no[item["id"]] += 1
                    self._refresh_item(sub, item)
                reason = "subscription_cycle"
            self._on_period_boundary_locked(sub)  # plan changes: schedule phases
            self._charge_renewal_locked(sub, reason)
            self._emit("customer.subscription.updated", sub, _diff(before, sub))
            return _snapshot(sub)

    def _trial_ends_unpaid_locked(self, sub: JSON) -> bool:
        """A trial ends without a payment method and ``trial_settings`` says cancel or
        pause: Stripe does that instead of invoicing. True when it did."""
        behavior = ((sub.get("trial_settings") or {}).get("end_behavior") or {}).get(
            "missing_payment_method"
        )
        if behavior not in ("cancel", "pause") or self._default_payment_method(sub):
            return False
        if behavior == "cancel":
            self._cancel_subscription_locked(sub)
            return True
        before = copy.deepcopy(sub)
        sub["status"] = "paused"
        self._emit("customer.subscription.paused", sub, _diff(before, sub))
        return True

    def _on_period_boundary_locked(self, sub: JSON) -> None:
        """A new period started (the plan changes layer applies schedule phases)."""

    def _charge_renewal_locked(self, sub: JSON, reason: str, *, decline: bool = False) -> None:
        invoice = self._create_invoice_locked(sub, reason)
        paid = self._settle_invoice_locked(sub, invoice, attempt=True, decline=decline)
        if not paid and sub["collection_method"] == "charge_automatically":
            sub["status"] = "past_due"

    def fail_payment(self, sub_id: str) -> JSON:
        """The subscription's renewal payment fails: open invoice, status ``past_due``."""
        with self.lock:
            sub = self._live_subscription(sub_id)
            before = copy.deepcopy(sub)
            self._charge_renewal_locked(sub, "subscription_cycle", decline=True)
            self._emit("customer.subscription.updated", sub, _diff(before, sub))
            return _snapshot(sub)

    def set_subscription_status(self, sub_id: str, status: str) -> JSON:
        """Force a status, emitting the event Stripe would (paused/resumed/updated/deleted)."""
        if status not in SUBSCRIPTION_STATUSES:
            raise ValueError(f"unknown subscription status {status!r}")
        with self.lock:
            sub = self._get("subscription", sub_id)
            if status == "canceled":
                return _snapshot(self._cancel_subscription_locked(sub))
            before = copy.deepcopy(sub)
            if before["status"] == status:
                return _snapshot(sub)
            sub["status"] = status
            changes = _diff(before, sub)
            if status == "paused":
                self._emit("customer.subscription.paused", sub, changes)
            elif before["status"] == "paused":
                self._emit("customer.subscription.resumed", sub, changes)
            else:
                self._emit("customer.subscription.updated", sub, changes)
            return _snapshot(sub)
