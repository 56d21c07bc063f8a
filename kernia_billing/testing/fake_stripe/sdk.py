"""Pointing the ``stripe`` SDK at the fake (and back)."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from .store import DEFAULT_API_VERSION

__all__ = ["SdkConfiguration", "configure_stripe_sdk"]


class SdkConfiguration:
    """Undo handle returned by :func:`configure_stripe_sdk`.

    Call it (or use it as a context manager) to restore the SDK settings that
    were in effect before.
    """

    def __init__(self, previous: dict[str, Any]) -> None:
        self._previous = previous

    def restore(self) -> None:
        """Put the previous SDK settings back."""
        import stripe
        from stripe import _stripe_client

        prev = self._previous
        stripe.api_base = prev["api_base"]
        stripe.max_network_retries = prev["max_network_retries"]
        stripe.api_key = prev["api_key"]
        stripe.api_version = prev["api_version"]
        _stripe_client.DEFAULT_API_BASE = prev["client_api_base"]  # type: ignore[attr-defined]

    __call__ = restore

    def __enter__(self) -> SdkConfiguration:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.restore()


def configure_stripe_sdk(
    api_base: str, api_key: str | None = None, api_version: str = DEFAULT_API_VERSION
) -> SdkConfiguration:
    """Point the ``stripe`` SDK (module-level API and ``StripeClient``) at ``api_base``.

    Sets ``stripe.api_base``, turns network retries off, makes new
    ``stripe.StripeClient`` instances default to ``api_base`` too (dj-stripe's
    AccountV2 builds its own client) and optionally sets the API key and
    version. Returns a handle that restores the previous settings when called
    or used as a context manager.
    """
    import stripe
    from stripe import _stripe_client

    previous = {
        "api_base": stripe.api_base,
        "max_network_retries": stripe.max_network_retries,
        "api_key": stripe.api_key,
        "api_version": stripe.api_version,
        "client_api_base": _stripe_client.DEFAULT_API_BASE,  # type: ignore[attr-defined]
    }
    base = api_base.rstrip("/")
    stripe.api_base = base
    stripe.max_network_retries = 0
    _stripe_client.DEFAULT_API_BASE = base  # type: ignore[attr-defined]
    if api_key is not None:
        stripe.api_key = api_key
    if api_version:
        stripe.api_version = api_version
    return SdkConfiguration(previous)
