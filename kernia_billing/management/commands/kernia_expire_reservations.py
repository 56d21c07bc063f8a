"""``kernia_expire_reservations``: give back every hold past its ``expiresAt``.

Safe from cron at any rate and concurrently with itself: each hold is claimed under
its entitlement's lock, so it is given back exactly once.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from kernia_billing.services.reservations.giveback import expire_reservations


class Command(BaseCommand):
    help = "Give back the balance held by reservations past their expiry (exactly once)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--limit", type=int, default=None, help="At most this many holds in one run."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        count = expire_reservations(limit=options["limit"])
        self.stdout.write(f"Expired {count} reservation(s).")
