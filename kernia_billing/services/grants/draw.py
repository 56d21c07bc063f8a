"""The multi-grant draw: what track takes from which grant when the plan's grant is short.

The common case never comes here: a track the plan's grant covers is one conditional
``UPDATE`` of the entitlement (see :mod:`kernia_billing.services.usage.track`). This is
the slow path, inside the caller's transaction, in the lock order: the entitlement row,
then every grant of (customer, feature) with something left, ascending id
(``FOR UPDATE``). Then, in statements:

1. lock the entitlement, 2. lock the grants, 3. one ``UPDATE`` of the grants drawn from
(and of those whose expiry passed: their remainder is recorded as ``expired``), 4. one
``UPDATE`` of the entitlement; the caller inserts the ledger row with the draws.

Consumption order: the plan's grant first, then the other grants soonest-expiring
first, never-expiring last (older first on ties); with overage allowed, what no grant
covers goes onto the plan's grant as overage. A grant whose ``expires_at`` is at or
before the track's moment is never drawn from.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import Case, F, Q, Value, When
from django.utils import timezone

from ...models import Entitlement, Grant
from ..entitlements.rows import EntitlementRow
from .totals import REMAINING, consumption_key, lock_entitlement


@dataclass(slots=True)
class LockedGrant:
    id: int
    remaining: int
    expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class DrawOutcome:
    usage_after: int
    balance_after: int
    from_grants: int
    draws: list[dict[str, int | None]] | None


def lock_grants(customer_id: int, feature_id: int) -> list[LockedGrant]:
    """Step 3 of the lock order: the grants with something left, ascending id."""
    rows = (
        Grant.objects.filter(customer_id=customer_id, feature_id=feature_id)
        .annotate(left=REMAINING)
        .filter(left__gt=0)
        .order_by("pk")
        .select_for_update()
        .values_list("pk", "left", "expires_at")
    )
    return [LockedGrant(pk, left, expires_at) for pk, left, expires_at in rows]


def plan_draws(
    plan_remaining: int,
    live: list[LockedGrant],
    amount: int,
    *,
    allow_overage: bool,
    unlimited: bool,
) -> list[tuple[int | None, int]] | None:
    """``[(grant id or None for the plan, amount), ...]`` covering ``amount``, or None."""
    if unlimited:
        return [(None, amount)]
    # A plan's grant below zero (a downgrade mid-period) is a debt the other grants carry:
    # the spendable balance is the sum, and it must cover the amount.
    if not allow_overage and plan_remaining + sum(g.remaining for g in live) < amount:
        return None
    draws: list[tuple[int | None, int]] = []
    need = amount
    from_plan = min(max(plan_remaining, 0), need)
    need -= from_plan
    for grant in sorted(live, key=lambda g: consumption_key(g.id, g.expires_at)):
        if need == 0:
            break
        take = min(grant.remaining, need)
        draws.append((grant.id, take))
        need -= take
    if need and not allow_overage:
        return None
    from_plan += need  # overage lands on the plan's grant
    return ([(None, from_plan)] if from_plan else []) + draws


def draw(entitlement_id: int, amount: int, moment: datetime) -> DrawOutcome | None:
    """Deduct ``amount`` across the plan's grant and the live grants, or return None.

    None: refused, or the entitlement's period does not contain ``moment`` (the caller
    resets or refuses); nothing was written then. Must run inside a transaction.
    """
    row = lock_entitlement(entitlement_id)
    if not _in_period(row, moment) or not row.granted:
        return None
    grants = lock_grants(row.customer_id, row.feature_id)
    due = [g for g in grants if g.expires_at is not None and g.expires_at <= moment]
    live = [g for g in grants if not (g.expires_at is not None and g.expires_at <= moment)]
    planned = plan_draws(
        row.plan_remaining,
        live,
        amount,
        allow_overage=row.allow_overage,
        unlimited=row.unlimited,
    )
    if planned is None:
        return None
    taken = {grant_id: n for grant_id, n in planned if grant_id is not None}
    _write_grants(taken, {g.id: g.remaining for g in due})
    from_grants = sum(taken.values())
    left = [(g, g.remaining - taken.get(g.id, 0)) for g in live]
    remaining_after = sum(n for _, n in left)
    next_expiry = min(
        (g.expires_at for g, n in left if n > 0 and g.expires_at is not None), default=None
    )
    Entitlement.objects.filter(pk=row.id).update(
        usage=F("usage") + amount,
        grant_usage=F("grant_usage") + from_grants,
        grant_remaining=remaining_after,
        grant_next_expiry=next_expiry,
        updated_at=timezone.now(),
    )
    usage_after = row.usage + amount
    plan_after = row.included - (usage_after - row.grant_usage - from_grants)
    return DrawOutcome(
        usage_after=usage_after,
        balance_after=plan_after + remaining_after,
        from_grants=from_grants,
        draws=_as_draws(planned) if from_grants else None,
    )


def _as_draws(planned: list[tuple[int | None, int]]) -> list[dict[str, int | None]]:
    return [{"grant": grant_id, "amount": n} for grant_id, n in planned]


def _write_grants(taken: dict[int, int], expiring: dict[int, int]) -> None:
    """One ``UPDATE`` for every grant drawn from or expiring (rows held locked)."""
    ids = sorted(set(taken) | set(expiring))
    if not ids:
        return
    Grant.objects.filter(pk__in=ids).update(
        consumed=F("consumed")
        + Case(*[When(pk=i, then=Value(n)) for i, n in taken.items()], default=Value(0)),
        expired=F("expired")
        + Case(*[When(pk=i, then=Value(n)) for i, n in expiring.items()], default=Value(0)),
    )


def _in_period(row: EntitlementRow, moment: datetime) -> bool:
    if row.period_start is not None and moment < row.period_start:
        return False
    return not row.reset_due(moment)


class GrantLedger:
    """The locked grants of a batch's entitlements, decided against in memory.

    Batch track locks its entitlements (ascending id), then through :meth:`lock` every
    grant of them with something left (ascending id), decides each event in order with
    :meth:`draw`, and writes once with :meth:`write`.
    """

    def __init__(self, rows: list[EntitlementRow], grants: list[tuple[int, LockedGrant]]):
        self._rows = {row.id: row for row in rows}
        self._live: dict[int, list[LockedGrant]] = {row.id: [] for row in rows}
        self._due: dict[int, list[LockedGrant]] = {row.id: [] for row in rows}
        self._grant_usage = {row.id: row.grant_usage for row in rows}
        self._taken: dict[int, int] = {}
        for row_id, grant in grants:
            self._live[row_id].append(grant)

    @classmethod
    def lock(cls, rows: list[EntitlementRow], moment: datetime) -> GrantLedger:
        if not rows:
            return cls([], [])
        by_pair = {(row.customer_id, row.feature_id): row.id for row in rows}
        query = Q()
        for customer_id, feature_id in by_pair:
            query |= Q(customer_id=customer_id, feature_id=feature_id)
        locked = (
            Grant.objects.filter(query)
            .annotate(left=REMAINING)
            .filter(left__gt=0)
            .order_by("pk")
            .select_for_update()
            .values_list("pk", "customer_id", "feature_id", "left", "expires_at")
        )
        grants = [
            (by_pair[(customer_id, feature_id)], LockedGrant(pk, left, expires_at))
            for pk, customer_id, feature_id, left, expires_at in locked
        ]
        ledger = cls(rows, grants)
        for row_id, live in ledger._live.items():
            ledger._due[row_id] = [g for g in live if _expired(g, moment)]
            ledger._live[row_id] = [g for g in live if not _expired(g, moment)]
        return ledger

    def balance(self, row: EntitlementRow, usage: int) -> int:
        """The balance of ``row`` at ``usage``, with what this batch drew so far."""
        grant_usage = self._grant_usage.get(row.id, row.grant_usage)
        live = self._live.get(row.id)
        remaining = row.grant_remaining if live is None else sum(g.remaining for g in live)
        return row.included - (usage - grant_usage) + remaining

    def draw(
        self, row: EntitlementRow, usage: int, amount: int
    ) -> tuple[int, list[dict[str, int | None]] | None] | None:
        """Decide ``amount`` at ``usage``: ``(from_grants, draws)``, or None if refused."""
        grant_usage = self._grant_usage.get(row.id, row.grant_usage)
        live = self._live.get(row.id, [])
        if not live:  # plan_draws without grants: the plan's grant alone, or nothing
            covered = row.included - (usage - grant_usage) >= amount
            return (0, None) if row.unlimited or row.allow_overage or covered else None
        planned = plan_draws(
            row.included - (usage - grant_usage),
            live,
            amount,
            allow_overage=row.allow_overage,
            unlimited=row.unlimited,
        )
        if planned is None:
            return None
        by_id = {g.id: g for g in live}
        from_grants = 0
        for grant_id, n in planned:
            if grant_id is None:
                continue
            by_id[grant_id].remaining -= n
            self._taken[grant_id] = self._taken.get(grant_id, 0) + n
            from_grants += n
        if from_grants:
            self._grant_usage[row.id] = grant_usage + from_grants
        return from_grants, (_as_draws(planned) if from_grants else None)

    def write(self, moment: datetime) -> None:
        """One ``UPDATE`` of the grants, one per entitlement whose grants changed."""
        expiring = {g.id: g.remaining for due in self._due.values() for g in due}
        _write_grants(self._taken, expiring)
        for row_id in sorted(self._rows):
            row, live = self._rows[row_id], self._live[row_id]
            if self._grant_usage[row_id] == row.grant_usage and not self._due[row_id]:
                continue
            Entitlement.objects.filter(pk=row_id).update(
                grant_usage=self._grant_usage[row_id],
                grant_remaining=sum(g.remaining for g in live),
                grant_next_expiry=min(
                    (g.expires_at for g in live if g.remaining > 0 and g.expires_at), default=None
                ),
                updated_at=moment,
            )


def _expired(grant: LockedGrant, moment: datetime) -> bool:
    return grant.expires_at is not None and grant.expires_at <= moment
