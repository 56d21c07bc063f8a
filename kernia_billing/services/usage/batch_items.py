"""What batch track knows of each event before it locks anything (validated, its
entitlement found): shared by the general decision (:mod:`.batch`) and the fitting one
(:mod:`.batch_fits`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...exceptions import BillingError


@dataclass(slots=True)
class PoolDraw:
    """The credit pool an event of a pool feature draws from."""

    entitlement_id: int  # the pool's entitlement
    feature_id: int  # the feature used (the ledger row's ``used_feature``)
    cost: int  # credits per unit


@dataclass(slots=True)
class PreparedEvent:
    """One event of a batch, validated, with the entitlement(s) it is decided against."""

    index: int
    #: The feature's own entitlement; None for a pool feature without one (``pool`` then).
    entitlement_id: int | None
    #: Its feature's id; None with ``entitlement_id``.
    feature_id: int | None
    customer_id: int
    feature: str
    amount: int  # in the feature's units
    idempotency_key: str | None
    properties: dict[str, Any]
    fingerprint: bytes
    #: A pool feature's pool: drawn from when there is no own entitlement, or when it
    #: refuses the whole amount (as single track falls back to the pool).
    pool: PoolDraw | None = None
    #: The pool's own refusal (no plan includes it, ...), answered if the own one refuses.
    pool_error: BillingError | None = None

    def for_event(self, index: int, idempotency_key: str | None) -> PreparedEvent:
        """This preparation for another event alike (``dataclasses.replace`` costs ~4x)."""
        return PreparedEvent(
            index,
            self.entitlement_id,
            self.feature_id,
            self.customer_id,
            self.feature,
            self.amount,
            idempotency_key,
            self.properties,
            self.fingerprint,
            self.pool,
            self.pool_error,
        )

    @property
    def decided_on(self) -> int:
        """The entitlement the event is decided against first: its own, else its pool's."""
        if self.entitlement_id is not None:
            return self.entitlement_id
        assert self.pool is not None  # _prepare finds one or the other
        return self.pool.entitlement_id

    @property
    def entitlement_ids(self) -> list[int]:
        ids = [] if self.entitlement_id is None else [self.entitlement_id]
        return ids + ([] if self.pool is None else [self.pool.entitlement_id])
