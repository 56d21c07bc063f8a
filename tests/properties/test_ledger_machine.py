"""A stateful property test of the ledger: random grants, revokes, tracks, usage
corrections, expiries, resets and plan changes; after every step the audit's invariants
hold.

Reservations take part: reserve, confirm (less, equal or more than held), release and
bulk expiry; open holds are usage without a ledger row, counted by the audit. Kept quick
so CI runs it on both databases.
"""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
import time_machine
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import kernia_billing
from kernia_billing.exceptions import InsufficientBalance, ReservationExpired, UsageBelowZero
from kernia_billing.models import (
    AddOn,
    AddOnFeature,
    AddOnPrice,
    Entitlement,
    Feature,
    Grant,
    Reservation,
    ResetPeriod,
    UsageEvent,
)
from kernia_billing.services.addons.sync import sync_addon_grants, sync_addon_items
from kernia_billing.services.customers import get_or_create_customer
from kernia_billing.services.entitlements.sync import sync_entitlements
from kernia_billing.services.ledger_audit import audit_ledger
from kernia_billing.services.locking import lock_customer
from kernia_billing.services.reservations.giveback import expire_reservations
from kernia_billing.types import SubscriptionItemSnapshot, SubscriptionSnapshot, TrackRequest
from tests.factories import (
    CatalogPriceFactory,
    FeatureFactory,
    PlanFactory,
    PlanFeatureFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db(transaction=False)

_runs = itertools.count()


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        run = next(_runs)
        self.traveller = time_machine.travel(timezone.now(), tick=False)
        self.clock = self.traveller.start()
        feature = FeatureFactory(key=f"messages-{run}")
        self.feature = feature.key
        self.plans = []
        for included in (20, 50):
            plan = PlanFactory(key=f"p{run}-{included}")
            PlanFeatureFactory(
                plan=plan, feature=feature, included=included, reset_period=ResetPeriod.MONTH
            )
            self.plans.append(plan)
        self.user = UserFactory(username=f"machine-{run}")
        self.customer = get_or_create_customer(self.user)
        self._set_plan(0)
        self.keys: dict[str, int] = {}  # idempotency key -> amount of its first track
        self.correction_keys: dict[str, int] = {}  # the same for usage corrections
        # An add-on of 10 per unit on a 30-day billing period (issue 13).
        addon = AddOn.objects.create(key=f"boost-{run}", name="Boost")
        AddOnFeature.objects.create(
            addon=addon, feature=Feature.objects.get(key=self.feature), amount=10
        )
        price = CatalogPriceFactory(stripe_id=f"price_boost_{run}")
        AddOnPrice.objects.create(addon=addon, price=price)
        self.addon_price = price.stripe_id
        self.item_id = f"si_machine_{run}"
        self.started = timezone.now()

    def teardown(self) -> None:
        self.traveller.stop()

    def _set_plan(self, index: int) -> None:
        with transaction.atomic():
            customer = lock_customer(self.customer.pk)
            customer.plan = self.plans[index]
            customer.save(update_fields=["plan", "updated_at"])
            sync_entitlements(customer)

    def _grants(self):
        return Grant.objects.filter(customer=self.customer)

    @rule(
        amount=st.integers(1, 30),
        expires_in_hours=st.one_of(st.none(), st.integers(1, 72)),
    )
    def grant(self, amount, expires_in_hours):
        expires = None
        if expires_in_hours is not None:
            expires = timezone.now() + timedelta(hours=expires_in_hours)
        kernia_billing.grant(self.user, self.feature, amount, expires_at=expires)

    @precondition(lambda self: self._grants().exists())
    @rule(data=st.data())
    def revoke(self, data):
        grants = list(self._grants().order_by("pk"))
        kernia_billing.revoke(data.draw(st.sampled_from(grants)), reason="machine")

    @rule(amount=st.integers(1, 20))
    def claw_back(self, amount):
        kernia_billing.grant(self.user, self.feature, -amount, reason="machine")

    @rule(amount=st.integers(1, 15), key=st.one_of(st.none(), st.sampled_from("abcd")))
    def track(self, amount, key):
        if key is not None and key in self.keys:
            amount = self.keys[key]  # a replay: the same payload
        before = UsageEvent.objects.filter(customer=self.customer).count()
        try:
            result = kernia_billing.track(self.user, self.feature, amount, idempotency_key=key)
        except InsufficientBalance:
            assert UsageEvent.objects.filter(customer=self.customer).count() == before
            return
        after = UsageEvent.objects.filter(customer=self.customer).count()
        assert after == before + (0 if result.replayed else 1)
        if not result.replayed:
            assert result.balance >= 0  # no overage: never accepted below zero
        if key is not None:
            self.keys.setdefault(key, amount)

    @rule(
        events=st.lists(
            st.tuples(st.integers(1, 15), st.one_of(st.none(), st.sampled_from("abcdef"))),
            min_size=1,
            max_size=6,
        )
    )
    def track_batch(self, events):
        """Batch track (its set-based ledger write on PostgreSQL) with single track's keys:
        replays across the two doors, within the batch, and conflicts."""
        requests = [TrackRequest(self.feature, n, idempotency_key=key) for n, key in events]
        before = UsageEvent.objects.filter(customer=self.customer).count()
        results = kernia_billing.track_batch(self.user, requests)
        new = 0
        first_in_batch: dict[str, int] = {}  # a key's first payload here, even if refused
        for (amount, key), result in zip(events, results, strict=True):
            if key is not None:
                first = self.keys.get(key, first_in_batch.setdefault(key, amount))
                if first != amount:
                    assert not result.ok and result.error_code == "idempotency_conflict"
                    continue
            if not result.ok:
                assert result.error_code == "insufficient_balance"
                continue
            assert result.result.replayed == (key is not None and key in self.keys)
            new += 0 if result.result.replayed else 1
            assert result.result.replayed or result.result.balance >= 0
            if key is not None:
                self.keys.setdefault(key, amount)
        assert UsageEvent.objects.filter(customer=self.customer).count() == before + new

    @rule(
        amount=st.integers(-25, 15).filter(bool),
        key=st.one_of(st.none(), st.sampled_from("wxyz")),
    )
    def adjust_usage(self, amount, key):
        if key is not None and key in self.correction_keys:
            amount = self.correction_keys[key]  # a replay: the same payload
        entitlement = Entitlement.objects.get(customer=self.customer)
        balance = kernia_billing.check(self.user, self.feature).balance
        expired = self._expired_held()
        expired_usage = self._expired_held(usage_only=True)
        try:
            result = kernia_billing.adjust_usage(
                self.user, self.feature, amount, reason="machine", idempotency_key=key
            )
        except (InsufficientBalance, UsageBelowZero):
            given_back = expired_usage - self._expired_held(usage_only=True)
            usage = Entitlement.objects.get(customer=self.customer).usage
            assert usage == entitlement.usage - given_back
            return
        if key is not None:
            self.correction_keys.setdefault(key, amount)
        if not result.replayed:
            # Giving back returns exactly that much of the plan's grant; adding draws it.
            # (A downgrade may have left the balance below zero: no floor here.) Refused
            # at first, it gives back holds past their expiry and tries again.
            given_back = expired - self._expired_held()
            assert result.balance == balance + given_back - amount

    def _open_holds(self):
        return Reservation.objects.filter(customer=self.customer, status="open")

    def _expired_held(self, *, usage_only: bool = False) -> int:
        """What giving back the open holds past their expiry restores: a refusal gives
        them back first.

        A hold of the current period restores all it holds; one taken before the last
        reset is in no usage of this period (the reset wiped it), so it restores only
        what it drew from grants still live (``usage_only``: nothing).
        """
        now = timezone.now()
        period_start = Entitlement.objects.get(customer=self.customer).period_start
        live = {
            grant.pk
            for grant in Grant.objects.filter(customer=self.customer, revoked_at__isnull=True)
            if grant.expires_at is None or grant.expires_at > now
        }
        restored = 0
        for hold in self._open_holds().filter(expires_at__lte=now):
            if hold.period_start == period_start:
                restored += hold.held
            elif not usage_only:
                restored += sum(
                    int(part["amount"]) for part in hold.draws or () if part["grant"] in live
                )
        return restored

    @rule(amount=st.integers(1, 15), ttl_hours=st.integers(1, 72))
    def reserve(self, amount, ttl_hours):
        before = kernia_billing.check(self.user, self.feature).balance
        events = UsageEvent.objects.filter(customer=self.customer).count()
        try:
            hold = kernia_billing.reserve(
                self.user, self.feature, amount, ttl=timedelta(hours=ttl_hours)
            )
        except InsufficientBalance:
            assert kernia_billing.check(self.user, self.feature).balance < amount
            return
        # Refused at first, a reserve gives back holds past their expiry and tries again;
        # so does the check below when the balance is spent.
        expired = self._expired_held()
        after = kernia_billing.check(self.user, self.feature).balance
        assert hold.balance == after - (expired - self._expired_held()) >= 0
        assert after >= before - amount
        assert UsageEvent.objects.filter(customer=self.customer).count() == events  # not usage

    @precondition(lambda self: self._open_holds().exists())
    @rule(data=st.data(), delta=st.integers(-15, 5))
    def confirm(self, data, delta):
        hold = data.draw(st.sampled_from(list(self._open_holds().order_by("pk"))))
        actual = max(0, hold.held + delta)
        events = UsageEvent.objects.filter(customer=self.customer).count()
        try:
            done = kernia_billing.confirm(hold.pk, actual=actual)
        except (InsufficientBalance, ReservationExpired):
            assert UsageEvent.objects.filter(customer=self.customer).count() == events
            return
        assert done.actual == actual
        added = UsageEvent.objects.filter(customer=self.customer).count() - events
        assert added == (1 if actual else 0)

    @precondition(lambda self: self._open_holds().exists())
    @rule(data=st.data())
    def release(self, data):
        hold = data.draw(st.sampled_from(list(self._open_holds().order_by("pk"))))
        assert kernia_billing.release(hold.pk).status in ("released", "expired")
        assert kernia_billing.release(hold.pk).replayed

    @rule()
    def expire_holds(self):
        expire_reservations()
        assert not self._open_holds().filter(expires_at__lte=timezone.now()).exists()

    @rule(hours=st.integers(1, 48))
    def expire(self, hours):
        self.clock.shift(timedelta(hours=hours))

    @rule()
    def reset(self):
        self.clock.shift(timedelta(days=31))

    @rule(quantity=st.integers(0, 3))
    def addon_quantity(self, quantity):
        """The add-on's subscription item at ``quantity`` (0: removed) in the current
        30-day period: its grant follows, a new period grants afresh."""
        period = timedelta(days=30)
        start = self.started + period * ((timezone.now() - self.started) // period)
        items = (
            (
                SubscriptionItemSnapshot(
                    self.item_id, self.addon_price, quantity, start, start + period
                ),
            )
            if quantity
            else ()
        )
        snapshot = SubscriptionSnapshot(
            id="sub_machine",
            stripe_customer_id="",
            status="active",
            price_ids=(),
            current_period_start=start,
            current_period_end=start + period,
            items=items,
        )
        with transaction.atomic():
            customer = lock_customer(self.customer.pk)
            sync_addon_items(customer, snapshot)
            sync_addon_grants(customer)

    @rule(index=st.integers(0, 1))
    def change_plan(self, index):
        self._set_plan(index)

    @invariant()
    def audit_is_clean(self):
        check = kernia_billing.check(self.user, self.feature)  # records due resets/expiries
        assert audit_ledger(customer_ids=[self.customer.pk]) == []
        now = timezone.now()
        entitlement = Entitlement.objects.get(customer=self.customer)
        live_remaining = 0
        for grant in self._grants():
            assert grant.amount - grant.consumed - grant.expired - grant.revoked == grant.remaining
            assert grant.remaining >= 0
            if grant.expires_at is None or grant.expires_at > now:
                live_remaining += grant.remaining
            else:
                assert grant.remaining == 0  # expiry recorded by the check above
        plan_left = entitlement.included - (entitlement.usage - entitlement.grant_usage)
        assert plan_left <= entitlement.included  # corrections never give back grant units
        assert check.balance == plan_left + live_remaining
        since = UsageEvent.objects.filter(
            customer=self.customer, created_at__gte=entitlement.period_start
        ).aggregate(total=Sum("amount"))["total"]
        held = self._open_holds().filter(period_start=entitlement.period_start)
        in_usage = held.aggregate(total=Sum("held"))["total"] or 0
        assert entitlement.usage == (since or 0) + in_usage


def test_ledger_machine():
    run_state_machine_as_test(
        LedgerMachine,
        settings=settings(
            max_examples=25,
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
