"""The one order in which writers of balances take rows, and the helpers that take them.

Every writer follows this order and never another, so no two writers can wait on
each other:

1. **The billing customer**, with :func:`lock_customer` (``FOR NO KEY UPDATE``), by
   writers that change the customer's plan, subscription state or Stripe link:
   ``apply_subscription`` (webhooks, checkout return, ``kernia_reconcile --fix``, and
   the plan changes of ``services.subscriptions``, which hold no lock while Stripe is
   asked and then apply Stripe's answer through ``apply_subscription``),
   ``apply_default_plan``, ``ensure_stripe_customer``. Add-on items (``AddOnItem``)
   are written only under this lock, by the subscription sync that applies a state.
2. **Its entitlements, ascending id** (``ORDER BY id FOR UPDATE``), or a single
   conditional ``UPDATE`` of one entitlement: resets (lazy, by webhook and the renewal
   storm's batches; with their rollovers), plan sync (``apply_subscription`` locks all
   the customer's entitlements in one statement first, :func:`lock_customer_entitlements`),
   ``track`` and ``track_batch``, the ledger audit's fix, and
   every writer of grants (``grant``, ``revoke``, clawbacks, expiry, the multi-grant
   draw) which locks the grants' entitlement first. ``track_batch`` locks, in one
   statement, every entitlement its events may draw from: a pool feature's own (if
   any) and its credit pool's; a batch of one entitlement and no pool that fits it
   (``usage/batch_fits.py``) locks it by the conditional ``UPDATE`` of its one
   statement first, and where that matches nothing (the row is still locked if it
   waited for it) the same one-row lock follows.
3. **Grants, ascending id** (``ORDER BY id FOR UPDATE``), always after their
   entitlement: the multi-grant draw of ``track``, ``track_batch`` (all the grants of
   all its entitlements in one statement), clawbacks, ``revoke``, expiry, rollovers.
   A grant row is never locked by a writer that does not hold its entitlement.
   Usage corrections (``adjust_usage`` giving usage back) lock, after their
   entitlement, the period's overage outbox rows of it, ascending id. The sender
   locks outbox rows only (``SKIP LOCKED``, never an entitlement), so it never waits
   in a cycle with them.
   **A reservation row** (``services/reservations``) is closed (confirm, release,
   expiry) only by a writer holding its entitlement, with a conditional ``UPDATE ...
   WHERE status = 'open'``: release and expiry take it after the entitlement and before
   any grant. Confirm locks it in the statement that locks its entitlement
   (``FOR UPDATE OF e, r``: rows are locked in that order, the entitlement first) and
   closes it last, after its grants and its ledger insert (the claim and the ledger
   row's ``event_id`` in one statement). Nobody touches a reservation row without
   holding its entitlement, so neither waits on the other. A reserve inserts it after
   the deduction (step 4).
4. **Rows that are only inserted** (ledger events, new grants, reservations) come last,
   after every lock above.

``track`` and ``track_batch`` never lock the customer: they take steps 2 to 4 only. A
track the plan's grant covers is one conditional ``UPDATE`` (step 2) and inserts (on
PostgreSQL all of it, with the rollup and the outbox row, in one statement:
``usage/fast_track.py``); the first
track after a boundary resets and deducts that same row in one ``UPDATE`` (PostgreSQL,
no rollover), else runs the lazy reset of it first, in its transaction.
A refused track holds nothing it locked when it tries a credit pool next: inside a
caller's transaction its savepoint is rolled back.

Why ``NO KEY UPDATE`` and not ``FOR UPDATE`` for the customer: on PostgreSQL, Django's
foreign keys are ``DEFERRABLE INITIALLY DEFERRED``, so the ledger row that a track
inserts checks its customer at COMMIT, taking ``FOR KEY SHARE`` on the customer row
while the track still holds its entitlement row. ``FOR UPDATE`` conflicts with
``FOR KEY SHARE``; ``FOR NO KEY UPDATE`` does not. A renewal holding the customer
``FOR UPDATE`` while waiting for that entitlement was a deadlock. No writer changes a
customer's key columns, so nothing needs the stronger lock.

SQLite has one writer at a time (``BEGIN IMMEDIATE``) and ignores row locks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from django.db import OperationalError, connection, transaction

from ..models import BillingCustomer, Entitlement

T = TypeVar("T")

# PostgreSQL's deadlock_detected and serialization_failure.
_RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})
RETRY_ATTEMPTS = 3


def lock_customer(customer_id: int) -> BillingCustomer:
    """Step 1 of the lock order. Must run inside a transaction."""
    return BillingCustomer.objects.select_for_update(no_key=True).get(pk=customer_id)


def lock_customer_entitlements(customer_id: int) -> None:
    """Step 2 for a writer of many of a customer's entitlements: all of them, ascending id,
    in one statement, before it touches any (a renewal resets billing rows, re-anchors the
    others, then syncs the plan and add-ons: taken piecemeal, a lower id locked after a
    higher one deadlocked with a renewal storm's ascending batch). Inside a transaction."""
    if not connection.features.has_select_for_update:
        return
    table = connection.ops.quote_name(Entitlement._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id FROM {table} WHERE customer_id = %s ORDER BY id FOR UPDATE", [customer_id]
        )


def is_retryable(error: BaseException) -> bool:
    """A deadlock or serialization failure: the transaction can simply run again."""
    cause = error.__cause__
    return getattr(cause, "sqlstate", None) in _RETRYABLE_SQLSTATES


def atomic_with_retry(work: Callable[[], T], *, attempts: int = RETRY_ATTEMPTS) -> T:
    """Run ``work`` in a transaction; retry a deadlock/serialization failure a few times.

    Inside an outer transaction (a dj-stripe webhook, a caller's ``atomic``) nothing can
    be retried here: the error goes up and the outer owner retries (Stripe redelivers).
    """
    if connection.in_atomic_block:
        with transaction.atomic():
            return work()
    for attempt in range(1, attempts + 1):
        try:
            with transaction.atomic():
                return work()
        except OperationalError as error:
            if attempt == attempts or not is_retryable(error):
                raise
    raise AssertionError("unreachable")  # pragma: no cover
