"""Re-derive every customer's state from Stripe's truth and audit the usage ledger.

    python manage.py kernia_reconcile                 # report drift, change nothing
    python manage.py kernia_reconcile --refresh       # compare with Stripe, not the mirror
    python manage.py kernia_reconcile --fix           # repair the ledger; report state drift
    python manage.py kernia_reconcile --refresh --fix # also repair customer state from
                                                      # Stripe and refresh dj-stripe's mirror
    python manage.py kernia_reconcile --meters        # overage we sent vs Stripe's meters
    python manage.py kernia_reconcile --meters --fix  # send the missing units (once)
    python manage.py kernia_reconcile --expire        # first record every due grant expiry

Customer state (plan, subscription status, period, cancelAtPeriodEnd, trial end,
seats) is re-derived from dj-stripe's mirrored subscriptions, or from Stripe with
``--refresh``. Only fresh Stripe data repairs it: the mirror can be older than what
webhooks already applied, so without ``--refresh`` state drift is reported, not fixed.
The ledger audit checks that each entitlement's usage equals the sum of its usage
events since its period start, and audits every grant (consumed = what the ledger's
draws took from it, no draw after its expiry, the entitlement's grant totals). Same
code as ``kernia_billing.services.reconcile`` (``reconcile_customers()``,
``audit_ledger()``). ``--meters`` compares, per customer,
feature and period, the overage units we sent with Stripe's meter event summaries
(``kernia_billing.services.metering.reconcile.reconcile_meters()``).
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from kernia_billing.exceptions import StripeUnavailable
from kernia_billing.management.base import BillingCommand
from kernia_billing.services.grants.expiry import expire_all
from kernia_billing.services.metering.reconcile import reconcile_meters
from kernia_billing.services.reconcile import audit_ledger, reconcile_customers


class Command(BillingCommand):
    help = "Re-derive customer state from Stripe (or dj-stripe's mirror) and audit the ledger."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--refresh", action="store_true", help="Fetch subscriptions from Stripe first."
        )
        parser.add_argument(
            "--fix",
            action="store_true",
            help="Repair the ledger drift found; customer state only with --refresh "
            "(fresh Stripe data), else it is reported.",
        )
        parser.add_argument(
            "--expire",
            action="store_true",
            help="Record every due grant expiry first (set-based; reads do it lazily anyway).",
        )

        parser.add_argument(
            "--meters",
            action="store_true",
            help="Compare the overage sent to Stripe billing meters with Stripe's totals.",
        )

    def handle(
        self,
        *args: Any,
        refresh: bool,
        fix: bool,
        meters: bool = False,
        expire: bool = False,
        **options: Any,
    ) -> None:
        if meters:
            self._meters(fix=fix)
            return
        if expire:
            count = expire_all()
            self.say(f"Recorded due grant expiries on {count} entitlement(s).")
        try:
            customer_drift = reconcile_customers(refresh=refresh, fix=fix)
        except StripeUnavailable as exc:
            raise CommandError(exc.message) from exc
        ledger_drift = audit_ledger(fix=fix)
        for drift in [*customer_drift, *ledger_drift]:
            self.say(str(drift))
        customers = len({d.customer_id for d in customer_drift})
        summary = (
            f"{customers} customer(s) with state drift ({len(customer_drift)} field(s)), "
            f"{len(ledger_drift)} ledger drift(s)"
        )
        if not customer_drift and not ledger_drift:
            self.say("No drift.", style=self.style.SUCCESS)
        elif fix:
            unfixed = sum(1 for d in [*customer_drift, *ledger_drift] if not d.fixed)
            self.say(f"Fixed: {summary}; {unfixed} left unfixed.", style=self.style.SUCCESS)
            if customer_drift and not refresh:
                self.say(
                    "Customer state is only fixed from fresh Stripe data: "
                    "run with --refresh --fix.",
                    style=self.style.WARNING,
                )
        else:
            self.say(f"Found: {summary}. Run with --fix to repair.", style=self.style.WARNING)

    def _meters(self, *, fix: bool) -> None:
        try:
            drifts = reconcile_meters(fix=fix)
        except StripeUnavailable as exc:
            raise CommandError(exc.message) from exc
        for drift in drifts:
            self.stdout.write(str(drift))
        differing = [d for d in drifts if d.difference]
        if not drifts:
            self.stdout.write(self.style.SUCCESS("No meter difference."))
        elif fix:
            fixed = sum(1 for d in drifts if d.fixed)
            self.stdout.write(
                self.style.SUCCESS(
                    f"{len(differing)} period(s) differed; missing units sent for {fixed}; "
                    f"{len(drifts) - len(differing)} with units still queued or parked."
                )
            )
        else:
            self.stdout.write(
                self.style.WARNING(
                    f"{len(differing)} period(s) differ from Stripe, "
                    f"{len(drifts) - len(differing)} with units queued or parked. "
                    "Run --meters --fix to send what Stripe is missing."
                )
            )
