"""System checks report each misconfiguration with its stable id."""

from __future__ import annotations

import pytest
from django.test import override_settings

from kernia_billing.checks import check_settings

VALID = {
    "ORGANIZATION_MODEL": "accounts.Organization",
    "IS_ORGANIZATION_MEMBER": "example_project.accounts.billing.is_member",
}


def ids(**overrides) -> list[str]:
    with override_settings(**overrides):
        return [message.id for message in check_settings()]


def test_the_example_settings_are_clean():
    assert ids() == []


def test_djstripe_foreign_key_field_must_be_id():
    assert ids(DJSTRIPE_FOREIGN_KEY_TO_FIELD="djstripe_id") == ["kernia_billing.E002"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("not a dict", ["kernia_billing.E009"]),
        ({**VALID, "PAST_DUE_GRACES": True}, ["kernia_billing.E003"]),
        ({**VALID, "ORGANIZATION_MODEL": "accounts.Nope"}, ["kernia_billing.E004"]),
        ({"ORGANIZATION_MODEL": "accounts.Organization"}, ["kernia_billing.E005"]),
        ({**VALID, "IS_ORGANIZATION_MEMBER": "nowhere.at.all"}, ["kernia_billing.E006"]),
    ],
)
def test_bad_kernia_billing_settings(value, expected):
    assert ids(KERNIA_BILLING=value) == expected


def test_djstripe_must_be_installed(settings):
    apps = [app for app in settings.INSTALLED_APPS if app != "djstripe"]
    from django.apps import apps as registry

    registry.set_installed_apps(apps)
    try:
        assert "kernia_billing.E001" in [m.id for m in check_settings()]
    finally:
        registry.unset_installed_apps()


def debug_ids(**overrides) -> list[str]:
    from kernia_billing.checks import check_debug_webhooks

    with override_settings(**overrides):
        return [message.id for message in check_debug_webhooks()]


@pytest.mark.parametrize(
    ("debug", "hosts", "expected"),
    [
        (True, ["demo.example.com"], ["kernia_billing.W003"]),
        (True, ["*"], ["kernia_billing.W003"]),
        (True, ["127.0.0.1", "localhost", ".example.com"], ["kernia_billing.W003"]),
        (True, ["127.0.0.1", "localhost", "[::1]", "testserver"], []),
        (True, [], []),  # Django then serves local hosts only
        (False, ["*"], []),
    ],
)
def test_debug_with_public_hosts_and_djstripe_webhooks_warns(debug, hosts, expected):
    assert debug_ids(DEBUG=debug, ALLOWED_HOSTS=hosts) == expected


def test_no_warning_when_djstripe_webhooks_are_not_routed():
    assert debug_ids(DEBUG=True, ALLOWED_HOSTS=["*"], ROOT_URLCONF="kernia_billing.api.urls") == []


def test_the_warning_names_the_risk():
    from kernia_billing.checks import check_debug_webhooks

    with override_settings(DEBUG=True, ALLOWED_HOSTS=["demo.example.com"]):
        (warning,) = check_debug_webhooks()
    assert "X-Djstripe-Webhook-Secret" in warning.msg and "demo.example.com" in warning.msg
    assert "DEBUG" in warning.hint


def test_the_example_project_runs_with_debug_off_unless_asked(monkeypatch):
    import importlib

    import example_project.settings as example

    monkeypatch.delenv("DJANGO_DEBUG", raising=False)
    assert importlib.reload(example).DEBUG is False
    monkeypatch.setenv("DJANGO_DEBUG", "1")
    assert importlib.reload(example).DEBUG is True
    monkeypatch.delenv("DJANGO_DEBUG")
    importlib.reload(example)


def test_stripe_api_base_points_the_sdk_and_stripe_client_at_the_fake(settings, fake_stripe):
    import stripe
    from stripe import _stripe_client

    from kernia_billing.testing.pytest_plugin import FAKE_STRIPE_API_KEY

    settings.KERNIA_BILLING = {**settings.KERNIA_BILLING, "STRIPE_API_BASE": "http://127.0.0.1:9"}
    assert stripe.api_base == "http://127.0.0.1:9"
    assert _stripe_client.DEFAULT_API_BASE == "http://127.0.0.1:9"

    settings.KERNIA_BILLING = {**settings.KERNIA_BILLING, "STRIPE_API_BASE": fake_stripe.url}
    client = stripe.StripeClient(FAKE_STRIPE_API_KEY)  # as dj-stripe builds one
    assert client.v1.customers.create(params={"email": "c@example.com"}).id.startswith("cus_")
    assert stripe.Customer.create(email="d@example.com", api_key=FAKE_STRIPE_API_KEY).id


def test_a_bad_stripe_api_base_is_e010(settings):
    settings.KERNIA_BILLING = {**settings.KERNIA_BILLING, "STRIPE_API_BASE": "127.0.0.1:12111"}
    assert "kernia_billing.E010" in {m.id for m in check_settings()}
