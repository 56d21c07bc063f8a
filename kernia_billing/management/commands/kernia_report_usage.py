"""Send queued overage to Stripe as meter events, exactly once.

    python manage.py kernia_report_usage --once   # drain what is queued now, then exit
    python manage.py kernia_report_usage          # keep sending; SIGTERM/SIGINT stop cleanly
    python manage.py kernia_report_usage --once --customer 42

Each queued row is sent with its own stable identifier, so a retry after a crash or a
timeout is de-duplicated by Stripe. Rows Stripe refuses are parked with the reason
(admin: overage reports; ``billing/usage-reporting/health``). Same code as
``kernia_billing.services.metering.sender`` (``send_pending()``, ``run_forever()``).
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from kernia_billing.services.metering.sender import SendSummary, run_forever, send_pending


class Command(BaseCommand):
    help = "Send queued overage usage to Stripe billing meters."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true", help="Drain the queue, then exit.")
        parser.add_argument("--customer", type=int, help="Only this billing customer's rows.")
        parser.add_argument(
            "--idle", type=float, default=1.0, help="Seconds to wait when nothing is queued."
        )

    def handle(self, *args: Any, once: bool, customer: int | None, idle: float, **o: Any) -> None:
        if once:
            summary = send_pending(customer_id=customer)
        else:
            stop = threading.Event()
            previous = {
                sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGTERM, signal.SIGINT)
            }
            try:
                summary = run_forever(stop, idle_seconds=idle)
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
        self._summary(summary)

    def _summary(self, summary: SendSummary) -> None:
        text = (
            f"Sent {summary.sent}, parked {summary.parked}, not billed {summary.unbilled}, "
            f"deferred {summary.deferred} (Stripe busy or unreachable; retried later)."
        )
        style = (
            self.style.SUCCESS if not (summary.parked or summary.deferred) else self.style.WARNING
        )
        self.stdout.write(style(text))
