"""Credit pools: a feature that draws ``units x credit_cost`` from a pool of kind ``credits``.

``images`` with ``credit_cost=20`` on the pool ``credits``: tracking 2 images draws 40
credits from the pool's grants (plan, top-ups, ...) in the pool's one atomic step; the
ledger row is on the pool (``amount`` = credits) and records the feature used and its
units. A feature with its own entitlement uses that first; the pool answers only when
the feature's own balance does not cover the whole amount (one track never splits
between the two). Check answers in both units: ``balance`` in the feature's units
(``floor(credits / cost)``) plus ``creditBalance`` and ``creditCost``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ...models import Feature
from ...types import CheckResult, TrackResult


@dataclass(frozen=True, slots=True)
class Pool:
    feature_id: int
    pool: str
    cost: int


def pool_of(feature: str) -> Pool | None:
    """The pool ``feature`` draws from, if any (one query)."""
    row = (
        Feature.objects.filter(key=feature, credit_pool__isnull=False, archived=False)
        .values_list("pk", "credit_pool__key", "credit_cost")
        .first()
    )
    return Pool(row[0], row[1], row[2]) if row else None


def in_units(
    result: CheckResult, pool: Pool, feature: str, kind: str, required: int
) -> CheckResult:
    """A check of the pool, told in the feature's units."""
    balance = result.balance
    return replace(
        result,
        feature=feature,
        kind=kind,
        required=required,
        balance=None if balance is None else balance // pool.cost,
        credit_balance=balance,
        credit_cost=pool.cost,
    )


def track_in_units(result: TrackResult, pool: Pool, feature: str, units: int) -> TrackResult:
    return replace(
        result,
        feature=feature,
        amount=units,
        balance=result.balance // pool.cost,
        credit_balance=result.balance,
        credit_cost=pool.cost,
    )
