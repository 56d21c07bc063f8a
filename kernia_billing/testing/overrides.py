"""Give an owner a plan or a balance for one test, without Stripe (like waffle's
``override_flag``). Context managers and decorators; the state is restored after.

    from kernia_billing.testing import override_balance, override_plan

    def test_pro_feature(client, user):
        with override_plan(user, "pro"):
            ...

    def test_last_message(user):
        with override_balance(user, "messages", 1):
            assert kernia_billing.check(user, "messages").balance == 1

Usage already recorded is kept (the ledger stays true); ``override_balance`` sets
what is *included* so that ``included - usage`` is the balance asked for.
"""

from __future__ import annotations

from contextlib import ContextDecorator
from typing import Any


def _plan(plan: Any) -> Any:
    from ..models import Plan

    if plan is None or isinstance(plan, Plan):
        return plan
    return Plan.objects.get(key=plan)


class override_plan(ContextDecorator):
    """Put ``owner`` on the plan ``plan`` (a key or a ``Plan``; None: no plan)."""

    def __init__(self, owner: Any, plan: Any):
        self.owner, self.plan = owner, plan

    def __enter__(self) -> Any:
        from ..services.customers import get_or_create_customer, set_plan

        self.customer = get_or_create_customer(self.owner)
        self.previous = self.customer.plan
        set_plan(self.customer, _plan(self.plan))
        return self.customer

    def __exit__(self, *exc: Any) -> None:
        from ..services.customers import set_plan

        set_plan(self.customer, self.previous)


class override_balance(ContextDecorator):
    """Give ``owner`` ``balance`` units of ``feature`` now (granted even if the plan
    does not include it); ``balance=None`` makes it unlimited."""

    def __init__(self, owner: Any, feature: str, balance: int | None):
        self.owner, self.feature, self.balance = owner, feature, balance

    def __enter__(self) -> Any:
        from django.db import transaction
        from django.db.models import F

        from ..models import Entitlement, Feature
        from ..services.customers import get_or_create_customer

        customer = get_or_create_customer(self.owner)
        feature = Feature.objects.get(key=self.feature)
        with transaction.atomic():
            entitlement, _ = Entitlement.objects.select_for_update().get_or_create(
                customer=customer, feature=feature, defaults={"granted": False}
            )
            self.previous = {
                "granted": entitlement.granted,
                "included": entitlement.included,
                "unlimited": entitlement.unlimited,
            }
            Entitlement.objects.filter(pk=entitlement.pk).update(
                granted=True,
                unlimited=self.balance is None,
                included=F("usage") + (self.balance or 0),
            )
        self.entitlement_id = entitlement.pk
        return customer

    def __exit__(self, *exc: Any) -> None:
        from ..models import Entitlement

        Entitlement.objects.filter(pk=self.entitlement_id).update(**self.previous)
