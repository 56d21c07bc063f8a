"""Reservations under real threads and a killed worker process (PostgreSQL, file SQLite)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from datetime import timedelta
from pathlib import Path

import pytest
import time_machine
from django.core.management import call_command
from django.db import connection, connections, transaction
from django.utils import timezone

import kernia_billing
from kernia_billing.exceptions import InsufficientBalance, ReservationClosed, ReservationExpired
from kernia_billing.models import Entitlement, Grant, Reservation, ResetPeriod, UsageEvent
from kernia_billing.services.ledger_audit import audit_ledger
from kernia_billing.services.reservations.giveback import expire_reservations
from tests.factories import FeatureFactory, PlanFactory, PlanFeatureFactory, UserFactory
from tests.services.test_batch_period_race import wait_for_a_lock_waiter
from tests.services.test_concurrency import assert_only_refusals
from tests.threads import run_concurrently, skip_unless_shared_database

THREADS = 64
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _needs_shared_database(transactional_db):
    skip_unless_shared_database()


@pytest.fixture
def owner():
    tokens = FeatureFactory(key="tokens")
    plan = PlanFactory(key="pro", is_default=True)
    PlanFeatureFactory(plan=plan, feature=tokens, included=20, reset_period=ResetPeriod.MONTH)
    user = UserFactory()
    kernia_billing.check(user, "tokens")
    kernia_billing.grant(user, "tokens", 30, source="topup")
    return user


def balance(owner):
    return kernia_billing.check(owner, "tokens").balance


@pytest.mark.clock_matrix("today", "feb29-leap")
def test_64_concurrent_reserves_of_1_on_a_balance_of_50_hold_exactly_50(owner):
    results = run_concurrently(THREADS, lambda i: kernia_billing.reserve(owner, "tokens", 1))
    assert_only_refusals(results)
    held = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, InsufficientBalance)]
    assert (len(held), len(refused)) == (50, THREADS - 50)
    assert balance(owner) == 0
    assert Grant.objects.get().consumed == 30
    assert not UsageEvent.objects.exists()
    assert audit_ledger() == []
    # Confirm half with 1 and give the other half back (actual 0), all at once.
    results = run_concurrently(
        len(held), lambda i: kernia_billing.confirm(held[i].id, actual=i % 2)
    )
    assert not [r for r in results if isinstance(r, Exception)]
    assert balance(owner) == 25
    assert UsageEvent.objects.count() == 25
    assert audit_ledger() == []


def test_concurrent_confirms_with_smaller_actuals_give_back_exactly(owner):
    holds = [kernia_billing.reserve(owner, "tokens", 5) for _ in range(10)]
    assert balance(owner) == 0
    actuals = [1, 2, 3, 4, 5, 0, 1, 2, 3, 4]

    def work(i):
        if i < len(holds):
            return kernia_billing.confirm(holds[i].id, actual=actuals[i])
        return kernia_billing.track(owner, "tokens", 1)  # tracks racing the give-backs

    results = run_concurrently(len(holds) + 10, work)
    assert_only_refusals(results)
    tracked = sum(1 for r in results[len(holds) :] if not isinstance(r, Exception))
    assert not [r for r in results[: len(holds)] if isinstance(r, Exception)]
    assert balance(owner) == 50 - sum(actuals) - tracked
    assert sum(UsageEvent.objects.values_list("amount", flat=True)) == sum(actuals) + tracked
    assert audit_ledger() == []


def test_confirm_racing_expiry_has_exactly_one_outcome(owner):
    holds = [
        kernia_billing.reserve(owner, "tokens", 2, ttl=timedelta(minutes=5)) for _ in range(16)
    ]

    def work(i):
        hold = holds[i // 2]
        if i % 2:
            return expire_reservations(now=hold.expires_at + timedelta(milliseconds=1))
        return kernia_billing.confirm(
            hold.id, actual=1, now=hold.expires_at - timedelta(milliseconds=1)
        )

    results = run_concurrently(2 * len(holds), work)
    assert not [
        r for r in results if isinstance(r, Exception) and not isinstance(r, ReservationExpired)
    ]
    confirmed = Reservation.objects.filter(status="confirmed").count()
    expired = Reservation.objects.filter(status="expired").count()
    assert confirmed + expired == len(holds)
    assert UsageEvent.objects.count() == confirmed
    assert sum(1 for r in results[0::2] if isinstance(r, ReservationExpired)) == expired
    assert balance(owner) == 50 - confirmed
    assert audit_ledger() == []


def test_concurrent_expiry_commands_give_each_hold_back_once(owner):
    for _ in range(20):
        kernia_billing.reserve(owner, "tokens", 2, ttl=timedelta(seconds=5))
    assert balance(owner) == 10
    later = timezone.now() + timedelta(seconds=6)
    results = run_concurrently(8, lambda i: expire_reservations(now=later))
    assert sum(results) == 20
    assert balance(owner) == 50
    assert audit_ledger() == []


WORKER = textwrap.dedent(
    """
    import os, sys, time
    import django
    django.setup()
    from datetime import timedelta
    import kernia_billing
    from django.contrib.auth import get_user_model
    user = get_user_model().objects.get(pk=int(sys.argv[1]))
    hold = kernia_billing.reserve(user, "tokens", 30, ttl=timedelta(seconds=60))
    print(hold.id, flush=True)
    time.sleep(600)  # the work never finishes: the parent kills this process
    """
)


def _worker_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "SQLITE_TEST_NAME"}}
    settings = connection.settings_dict
    if connection.vendor == "postgresql":
        user, host, port = settings["USER"], settings["HOST"], settings["PORT"] or 5432
        url = f"postgres://{user}@{host}:{port}/{settings['NAME']}"
    else:
        url = f"sqlite:///{settings['NAME']}"
    env.update(DATABASE_URL=url, DJANGO_SETTINGS_MODULE="tests.settings", PYTHONPATH=str(ROOT))
    return env


def test_a_worker_killed_after_reserving_is_released_at_its_ttl(owner):
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(owner.pk)],
        cwd=ROOT,
        env=_worker_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = worker.stdout.readline() if worker.stdout else ""
        assert line.strip().isdigit(), worker.stderr.read() if worker.stderr else line
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
    assert worker.returncode == -signal.SIGKILL
    hold = Reservation.objects.get(pk=int(line))
    assert (hold.status, hold.held) == ("open", 30)
    assert balance(owner) == 20  # the dead worker's hold still counts until its TTL
    assert audit_ledger() == []
    with time_machine.travel(hold.expires_at + timedelta(seconds=1), tick=False):
        call_command("kernia_expire_reservations")
        assert balance(owner) == 50
        with pytest.raises(ReservationExpired):
            kernia_billing.confirm(hold.pk)
    hold.refresh_from_db()
    assert hold.status == "expired"
    entitlement = Entitlement.objects.get()
    assert (entitlement.usage, entitlement.grant_usage, entitlement.grant_remaining) == (0, 0, 30)
    assert not UsageEvent.objects.exists()
    assert audit_ledger() == []


@pytest.mark.postgres
def test_a_confirm_that_waited_for_a_release_rolls_back_and_answers_closed(owner):
    # The confirm reads the reservation in the statement that waits for the entitlement's
    # lock: PostgreSQL hands back the reservation as it was before the release committed.
    # The claim at the end re-checks it, so the confirm rolls back whole (no ledger row,
    # nothing given back twice).
    hold = kernia_billing.reserve(owner, "tokens", 5)
    answers: list[object] = []

    def confirm() -> None:
        try:
            answers.append(kernia_billing.confirm(hold.id, actual=3))
        except Exception as error:  # asserted on below
            answers.append(error)
        finally:
            connections.close_all()

    with transaction.atomic():
        Entitlement.objects.select_for_update().get()
        worker = threading.Thread(target=confirm)
        worker.start()
        wait_for_a_lock_waiter()
        assert kernia_billing.release(hold.id).status == "released"
    worker.join(timeout=30)
    [answer] = answers
    assert isinstance(answer, ReservationClosed), answer
    assert not UsageEvent.objects.exists()
    assert Reservation.objects.get().status == "released"
    assert balance(owner) == 50
    assert audit_ledger() == []
