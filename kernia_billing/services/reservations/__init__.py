"""Reservations: hold balance before the work, settle with the actual amount.

A hold is taken exactly like a track deducts (the plan's grant in one conditional
``UPDATE``, else the multi-grant draw across the grants in consumption order), but
writes a :class:`~kernia_billing.models.Reservation` instead of a ledger row. The held
amount is therefore part of the entitlement's ``usage`` at once, and check and track
see the lower balance with no extra query.

- ``confirm(actual)`` keeps the first ``actual`` units of the hold (in consumption
  order), gives the rest back and writes the one ledger row (so only confirmed usage
  reaches the ledger and the metering outbox). More than was held draws the difference
  as a track would; refused, nothing is done and the hold stays open.
- ``release`` gives everything back. Confirm and release are idempotent.
- Expiry gives the hold back exactly once: at the next access to the reservation, a
  reserve, check or track of the same entitlement refused for balance, or in bulk with
  ``kernia_expire_reservations``.
- Where nothing can be refused (overage allowed, unlimited) a reservation holds
  nothing (``held`` 0) and its confirm is a plain track: overage is billed exactly once,
  on confirmed usage.
- A reset since the hold was taken wiped its plan part with the period's usage; what it
  drew from grants goes back to them and a confirm then deducts the actual amount in
  the new period, like a track.

Modules: :mod:`.holds` reserves; :mod:`.settle` confirms and releases (and the
``reserved()`` block); :mod:`.reads` answers (the result, the list, reading a row);
:mod:`.giveback` gives holds back (release, expiry), importing nothing of usage, so
check and track can give back expired holds when they refuse for balance.

Lock order (``services/locking.py``), for every writer of this package: the
entitlement (a confirm reads and locks the reservation in the same statement), then the
reservation row, closed with a conditional ``UPDATE ... WHERE status = 'open'`` so
exactly one of confirm, release and expiry closes it (a confirm's last statement, with
its ledger row's id; release and expiry before any grant), then grants ascending id,
then inserts (a reserve inserts its reservation after the deduction).

Names are re-exported lazily so that import does not pull the usage services into
:mod:`.giveback`'s importers.
"""

from typing import Any

_NAMES = {
    "ReservationResult": "reads",
    "confirm": "settle",
    "list_reservations": "reads",
    "release": "settle",
    "reserve": "holds",
    "reserved": "settle",
    "customer_of": "reads",
    "expire_reservations": "giveback",
    "expire_due_holds": "giveback",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f"{__name__}.{module}"), name)
