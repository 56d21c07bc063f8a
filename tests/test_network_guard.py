"""The suite cannot reach the internet: only loopback connections are allowed."""

import socket

import pytest
from pytest_socket import SocketConnectBlockedError


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_connections_beyond_loopback_fail():
    with pytest.raises(SocketConnectBlockedError):
        socket.create_connection(("93.184.215.14", 443), timeout=1)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_stripe_sdk_cannot_reach_real_stripe():
    import stripe

    with pytest.raises((SocketConnectBlockedError, stripe.APIConnectionError)):
        stripe.Product.list(api_key="sk_test_" + "x" * 24, api_base="https://api.stripe.com")
