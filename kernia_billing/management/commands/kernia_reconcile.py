"""Re-derive every customer's state from Stripe's truth and audit the usage ledger.

    python manage.py kernia_reconcile                 # report drift, change nothing
    python manage.py kernia_reconcile --refresh       # compare with Stripe, not the mirror
    python manage.py kernia_reconcile --fix           # repair the ledger; report state drift
    python manage.py kernia_reconcile --refresh --fix # also repair customer state from
                                                      # Stripe and refresh dj-stripe's mirror
    python manage.py kernia_reconcile --meters        # overage we sent vs Stripe's meters
    python manage.py kernia_reconcile --meters --fix  # send the missing units (once)
    python manage.py kernia_reconcile --expire        # first record every due grant expiry
    python manage.py kernia_reconcile --progress      # a line per batch of 1000
    python manage.py kernia_reconcile --after-entitlement 42000  # resume the ledger audit

Customer state (plan, subscription status, period, cancelAtPeriodEnd, trial end,
seats) is re-derived from dj-stripe's mirrored subscriptions, or from Stripe with
``--refresh``. Only fresh Stripe data repairs it: the mirror can be older than what
webhooks already applied, so without ``--refresh`` state drift is reported, not fixed.
The ledger audit checks that each entitlement's usage equals the sum of its usage
events since its period start (only those: it costs the current period, not history),
that the daily rollups of those days equal the ledger, and audits every grant
(consumed = what the ledger's draws took from it, no draw after its expiry, the
entitlement's grant totals). Same
code as ``kernia_billing.services.reconcile.reconcile_customers()`` and
``kernia_billing.services.ledger_audit.audit_ledger()``. ``--meters`` compares, per customer,
feature and period, the overage units we sent with Stripe's meter event summaries
(``kernia_billing.services.metering.reconcile.reconcile_meters()``).
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from kernia_billing.exceptions import StripeUnavailable
from kernia_billing.management.base import BillingCommand
from kernia_billing.services.grants.expiry import expire_all
from kernia_billing.services.ledger_audit import audit_ledger
from kernia_billing.services.metering.reconcile import reconcile_meters
from kernia_billing.services.reconcile import reconcile_customers


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
            "--batch-size",
            type=int,
            default=1000,
            help="Customers and entitlements per batch (default 1000).",
        )
        parser.add_argument(
            "--after-entitlement",
            type=int,
            default=0,
            help="Resume the ledger audit after this entitlement id (from a progress line).",
        )
        parser.add_argument(
            "--progress", action="store_true", help="Print a line after every batch."
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
        batch_size: int = 1000,
        after_entitlement: int = 0,
        progress: bool = False,
        **options: Any,
    ) -> None:
        if meters:
            self._meters(fix=fix)
            return
        if expire:
            count = expire_all()
            self.say(f"Recorded due grant expiries on {count} entitlement(s).")
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")

        def report(part: str, done: int, last_id: int) -> None:
            self.say(f"... {done} {part} done (last id {last_id})")

        tell = report if progress else None
        try:
            customer_drift = (
                []
                if after_entitlement
                else reconcile_customers(
                    refresh=refresh, fix=fix, batch_size=batch_size, progress=tell
                )
            )
        except StripeUnavailable as exc:
            raise CommandError(exc.message) from exc
        ledger_drift = audit_ledger(
            fix=fix, batch_size=batch_size, after_entitlement=after_entitlement, progress=tell
        )
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
