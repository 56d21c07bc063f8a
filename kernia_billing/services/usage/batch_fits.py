"""Batch track's fitting path: a batch whose every event fits, decided before the lock.

A hot customer's batches queue for its entitlement row from the lock to the ``COMMIT``,
so whatever a batch works out while it holds the row, every other batch of that
customer waits for. Most batches fit: every event has its own entitlement (so a credit
pool, if any, is not drawn from), no key repeats within the batch, and, once the rows
are locked, none of them has grants left to draw from and the batch stays within the
balance at every step. Such a batch's ledger rows are known before the lock up to the
locked usage: what each event has added to its entitlement's usage so far (a running
sum) does not depend on it. Under the lock :meth:`FittingBatch.fits` checks the rows
(the running sum's peak within the balance, its trough not below zero) and
:meth:`FittingBatch.decide` fills in three columns (``ledger.LOCKED_COLUMNS``); on
PostgreSQL a batch of one entitlement does all of it in one statement
(:meth:`FittingBatch.in_one_statement`).

The general decision (:mod:`.batch`) accepts every event of such a batch with the same
ledger rows: none draws from a grant, none goes beyond the balance (so no overage
outbox row), none takes usage below zero. Anything else is left to it. (Where a pool's
row is locked with them, its due grant expiries are left to the next reader of it,
which records them first, as every reader does.)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from django.db import connection

from ...models import Entitlement
from ..entitlements.rows import EntitlementRow
from .batch_items import PreparedEvent
from .ledger import (
    NewEvent,
    early_columns,
    insert_deducted_events,
    stored_fingerprint,
    stored_properties,
)

#: ``created_at`` until the lock gives the batch its moment.
_NOT_YET = datetime.min.replace(tzinfo=UTC)


@dataclass(slots=True)
class _Steps:
    """What a batch's events add to one entitlement's usage, as running sums."""

    total: int = 0
    peak: int = 0  # the highest running sum (0: before the first event)
    trough: int = 0  # the lowest


class FittingBatch:
    """The events of a batch, decided up to their entitlements' locked usage."""

    def __init__(
        self,
        prepared: list[PreparedEvent],
        events: list[NewEvent],
        running: list[int],
        steps: dict[int, _Steps],
    ) -> None:
        self._prepared = prepared
        self._events = events
        self._running = running  # per event: its entitlement's running sum, itself included
        self._steps = steps
        self._pooled = any(item.pool is not None for item in prepared)
        #: ``ledger.early_columns`` of the events, for the insert.
        self.early: list[list[Any]] | None = early_columns(events)

    @classmethod
    def of(cls, prepared: list[PreparedEvent]) -> FittingBatch | None:
        """None unless every event has its own entitlement and no key repeats."""
        if not prepared:
            return None
        keys: set[tuple[int, str]] = set()
        steps: dict[int, _Steps] = {}
        running, events = [], []
        for item in prepared:
            row_id, feature_id, key = item.entitlement_id, item.feature_id, item.idempotency_key
            if row_id is None or feature_id is None:
                return None
            if key is not None:
                if (item.customer_id, key) in keys:
                    return None  # a replay or a conflict within the batch
                keys.add((item.customer_id, key))
            step = steps.get(row_id)
            if step is None:
                step = steps[row_id] = _Steps()
            step.total += item.amount
            step.peak = max(step.peak, step.total)
            step.trough = min(step.trough, step.total)
            running.append(step.total)
            events.append(
                NewEvent(
                    customer_id=item.customer_id,
                    feature_id=feature_id,
                    amount=item.amount,
                    idempotency_key=key,
                    request_fingerprint=stored_fingerprint(key, item.fingerprint),
                    properties=stored_properties(item.properties),
                    created_at=_NOT_YET,
                    balance_after=0,
                    usage_after=0,
                    from_grants=0,
                    draws=None,
                    used_feature_id=None,
                    units=None,
                )
            )
        return cls(prepared, events, running, steps)

    def fits(
        self, rows: dict[int, EntitlementRow], before_period: set[int], moment: datetime
    ) -> bool:
        """Whether the locked ``rows`` accept every event as the general decision would."""
        for row_id, step in self._steps.items():
            row = rows[row_id]
            if row_id in before_period or not row.granted or row.reset_due(moment):
                return False
            if row.grant_remaining != 0:  # grants to draw from, maybe to expire
                return False
            # The plan's grant covers each event (see GrantLedger.draw) and the balance
            # after each stays at or above zero: no overage.
            if row.usage + step.peak > _plan_cap(row) or row.usage + step.trough < 0:
                return False
        return True

    def decide(
        self, rows: dict[int, EntitlementRow], moment: datetime
    ) -> tuple[dict[int, int], list[tuple[PreparedEvent, NewEvent]]]:
        """Once :meth:`fits`: each entitlement's usage after the batch, and the events'
        ledger rows (every event accepted)."""
        base = {row_id: rows[row_id].usage for row_id in self._steps}
        cap = {row_id: _plan_cap(rows[row_id]) for row_id in self._steps}
        for item, event, step in zip(self._prepared, self._events, self._running, strict=True):
            row_id = item.entitlement_id
            assert row_id is not None  # see of()
            event.usage_after = after = base[row_id] + step
            event.balance_after = cap[row_id] - after
            event.created_at = moment
        usage = {row_id: base[row_id] + step.total for row_id, step in self._steps.items()}
        return usage, list(zip(self._prepared, self._events, strict=True))

    def in_one_statement(
        self, moment: datetime
    ) -> tuple[dict[int, bool], list[tuple[PreparedEvent, NewEvent]]] | None:
        """PostgreSQL, one entitlement and no credit pool: lock, :meth:`fits`, deduct and
        insert the ledger rows and rollups in one statement (lock order step 2, then 4).
        None, with nothing written, if the row does not fit (or the batch has more rows):
        the general decision takes it then, in the same transaction. Else whether the
        entitlement is unlimited, and the events."""
        # A refused UPDATE that waited for the row keeps it locked; the general decision
        # then locks its ids ascending, so that one row must be all of them (no pool).
        if connection.vendor != "postgresql" or len(self._steps) != 1 or self._pooled:
            return None
        ((row_id, step),) = self._steps.items()
        for event in self._events:
            event.created_at = moment
        at = connection.ops.adapt_datetimefield_value(moment)
        # WHERE reads the usage before; RETURNING the usage after, less the total.
        params = [step.total, at, row_id, at, at, step.peak, step.trough, step.total]
        unlimited = insert_deducted_events(
            (_deduction_sql(), params), self._events, self._running, early=self.early
        )
        if unlimited is None:
            return None
        return {row_id: unlimited}, list(zip(self._prepared, self._events, strict=True))


@lru_cache(maxsize=1)
def _deduction_sql() -> str:
    """PostgreSQL: :meth:`FittingBatch.fits` as the condition of one ``UPDATE``.

    As single track's one statement (``fast_track``): the row is locked by the ``UPDATE``
    itself, re-checked on its newest version if another writer held it, and the moment
    is read before (a reset committed meanwhile fails ``next_reset_at > moment``).
    """
    quote = connection.ops.quote_name
    usage = quote("usage")
    return (
        f"UPDATE {quote(Entitlement._meta.db_table)} "
        f"SET {usage} = {usage} + %s::bigint, updated_at = %s::timestamptz "
        "WHERE id = %s::bigint AND {events_ready} AND granted AND grant_remaining = 0 "
        "AND (period_start IS NULL OR period_start <= %s::timestamptz) "
        "AND (next_reset_at IS NULL OR next_reset_at > %s::timestamptz) "
        # As PLAN_COVERS words it (no sum with included, which may be near bigint's end).
        f"AND {usage} - grant_usage + %s::bigint <= included AND {usage} + %s::bigint >= 0 "
        f"RETURNING {usage} - %s::bigint AS base, included, grant_usage, unlimited"
    )


def _plan_cap(row: EntitlementRow) -> int:
    """The usage at which the plan's grant is spent: the balance is ``cap - usage`` while
    no other grant is left (``GrantLedger.balance``)."""
    return row.included + row.grant_usage
