"""Decoding of Stripe's bracketed form encoding."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
from stripe._encode import _api_encode

from kernia_billing.testing.fake_stripe.forms import FormError, coerce_bool, coerce_int, decode_form


def test_nested_items_and_lists() -> None:
    decoded = decode_form(
        "items[0][price]=price_a&items[0][quantity]=2&items[1][price]=price_b"
        "&expand[]=data.product&expand[]=data.customer&lookup_keys[]=pro"
    )
    assert decoded == {
        "items": [{"price": "price_a", "quantity": "2"}, {"price": "price_b"}],
        "expand": ["data.product", "data.customer"],
        "lookup_keys": ["pro"],
    }


def test_metadata_stays_a_dict_and_keeps_empty_strings() -> None:
    decoded = decode_form("metadata[0]=zero&metadata[plan]=&recurring[interval]=month")
    assert decoded == {"metadata": {"0": "zero", "plan": ""}, "recurring": {"interval": "month"}}


def test_round_trips_what_the_sdk_encodes() -> None:
    params = {
        "line_items": [{"price": "price_1", "quantity": 3}],
        "subscription_data": {"metadata": {"a": "b"}, "trial_period_days": 7},
        "expand": ["subscription", "line_items"],
        "active": True,
    }
    decoded = decode_form(urlencode(list(_api_encode(params))))
    assert decoded == {
        "line_items": [{"price": "price_1", "quantity": "3"}],
        "subscription_data": {"metadata": {"a": "b"}, "trial_period_days": "7"},
        "expand": ["subscription", "line_items"],
        "active": "true",
    }


def test_array_of_dicts_with_empty_brackets() -> None:
    assert decode_form("a[][x]=1&a[][y]=2&a[][x]=3") == {"a": [{"x": "1", "y": "2"}, {"x": "3"}]}


def test_repeated_plain_keys_become_lists() -> None:
    assert decode_form("include=a&include=b") == {"include": ["a", "b"]}


def test_bytes_and_invalid_keys() -> None:
    assert decode_form(b"name=T%C3%A9") == {"name": "Té"}
    with pytest.raises(FormError):
        decode_form("a[b=1")
    with pytest.raises(FormError):
        decode_form("a=1&a[b]=2")


def test_coercions() -> None:
    assert coerce_bool("true", "x") is True
    assert coerce_bool("false", "x") is False
    assert coerce_int("42", "x") == 42
    with pytest.raises(FormError):
        coerce_bool("yes", "x")
    with pytest.raises(FormError):
        coerce_int("4.2", "x")
