"""kernia_sync_catalog and kernia_load_catalog."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from kernia_billing.models import CatalogPrice, Plan, PlanPrice
from tests.catalog_support import EXAMPLE_CATALOG, seed_example_stripe, table_snapshot

pytestmark = pytest.mark.django_db


def run(*args):
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_sync_prints_progress_and_a_summary(fake_stripe):
    seed_example_stripe(fake_stripe)

    output = run("kernia_sync_catalog")

    assert "Fetched 4 products." in output and "Fetched 7 prices." in output
    assert "Fetched 1 meters." in output
    assert "Products: 4 created, 0 updated, 0 unchanged." in output
    assert "Prices: 7 created, 0 updated, 0 unchanged." in output
    assert "7 awaiting review in the admin." in output
    assert "Prices: 0 created, 0 updated, 7 unchanged." in run("kernia_sync_catalog", "--quiet")


def test_sync_failure_is_a_command_error_and_changes_nothing(fake_stripe):
    seed_example_stripe(fake_stripe)
    fake_stripe.inject_fault("/v1/products", status=500, times=5)

    with pytest.raises(CommandError, match=r"nothing was changed.*HTTP 500"):
        run("kernia_sync_catalog")
    assert not CatalogPrice.objects.exists()

    with pytest.raises(CommandError, match="API key"):
        run("kernia_sync_catalog", "--api-key", "sk_test_bad")


def test_command_line_only_from_empty_database_to_mapped_plans(fake_stripe):
    seed_example_stripe(fake_stripe)
    run("kernia_sync_catalog")

    output = run("kernia_load_catalog", str(EXAMPLE_CATALOG), "--approve")

    assert "Plans: 3 created" in output and "Prices: 4 mapped, 0 unmapped, 7 approved." in output
    assert sorted(
        PlanPrice.objects.filter(plan__key="pro").values_list(
            "price__recurring_interval", flat=True
        )
    ) == ["month", "year"]
    before = table_snapshot()
    assert "nothing changed" in run("kernia_load_catalog", str(EXAMPLE_CATALOG))
    assert table_snapshot() == before


def test_load_refuses_unreviewed_prices_and_writes_nothing(fake_stripe):
    seed_example_stripe(fake_stripe)
    run("kernia_sync_catalog")

    with pytest.raises(CommandError, match=r"nothing was written[\s\S]*--approve"):
        run("kernia_load_catalog", str(EXAMPLE_CATALOG))
    assert not Plan.objects.exists()


def test_load_dry_run_and_file_errors(tmp_path, fake_stripe):
    seed_example_stripe(fake_stripe)
    run("kernia_sync_catalog")
    assert "Dry run" in run("kernia_load_catalog", str(EXAMPLE_CATALOG), "--approve", "--dry-run")
    assert not Plan.objects.exists()

    with pytest.raises(CommandError, match="Cannot read"):
        run("kernia_load_catalog", str(tmp_path / "missing.json"))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(CommandError, match="not valid JSON"):
        run("kernia_load_catalog", str(broken))
    listing = tmp_path / "list.json"
    listing.write_text(json.dumps([]))
    with pytest.raises(CommandError, match="JSON object"):
        run("kernia_load_catalog", str(listing))


def test_commands_honour_django_verbosity(fake_stripe):
    seed_example_stripe(fake_stripe)

    assert run("kernia_sync_catalog", "-v", "0") == ""
    assert run("kernia_load_catalog", str(EXAMPLE_CATALOG), "--approve", "-v", "0") == ""
    assert run("kernia_reconcile", "-v", "0") == ""

    normal = run("kernia_load_catalog", str(EXAMPLE_CATALOG))
    assert "Loading" not in normal and "nothing changed" in normal
    verbose = run("kernia_load_catalog", str(EXAMPLE_CATALOG), "-v", "2")
    assert "Loading" in verbose and "nothing changed" in verbose
    assert "Fetched 7 prices." in run("kernia_sync_catalog", "-v", "1")


def test_init_writes_a_starter_catalog_that_loads(fake_stripe, tmp_path):
    seed_example_stripe(fake_stripe)
    target = tmp_path / "catalog.json"

    assert "Wrote" in run("kernia_init_catalog", str(target))
    with pytest.raises(CommandError, match="--force"):
        run("kernia_init_catalog", str(target))
    run("kernia_sync_catalog", "-v", "0")
    assert "Catalog loaded." in run("kernia_load_catalog", str(target), "--approve")

    pro = Plan.objects.get(key="pro")
    assert sorted(pro.plan_prices.values_list("price__lookup_key", flat=True)) == [
        "pro_annual",
        "pro_monthly",
    ]
    assert Plan.objects.get(is_default=True).key == "free"
