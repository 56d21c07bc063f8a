"""``billing`` in every template: ``{{ billing.allowed.sso }}``, ``{{ billing.balance.messages }}``.

Add ``"kernia_billing.context_processors.billing"`` to the ``context_processors`` of
your ``TEMPLATES``. Nothing is read until a template asks; each feature is checked
once per request (:func:`kernia_billing.check`, no usage recorded). Anonymous users
have no feature and no balance.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from .exceptions import BillingError
from .services.usage import check
from .types import CheckResult

_REQUEST_ATTR = "_kernia_billing_lookup"


class BillingLookup:
    """Per-owner, per-request answers of ``check(owner, feature)``."""

    def __init__(self, owner: Any):
        self.owner = owner
        self._results: dict[str, CheckResult | None] = {}

    def check(self, feature: str) -> CheckResult | None:
        if feature not in self._results:
            self._results[feature] = self._check(feature)
        return self._results[feature]

    def _check(self, feature: str) -> CheckResult | None:
        if self.owner is None or not getattr(self.owner, "is_authenticated", True):
            return None
        try:
            return check(self.owner, feature)
        except BillingError:
            return None  # an unknown feature gates nothing in a template

    @property
    def allowed(self) -> _Lookup:
        return _Lookup(lambda key: bool((r := self.check(key)) and r.allowed))

    @property
    def balance(self) -> _Lookup:
        def value(key: str) -> Any:
            result = self.check(key)
            if result is None:
                return None
            return "unlimited" if result.unlimited else result.balance

        return _Lookup(value)


class _Lookup:
    """``lookup.some_key`` in a template calls ``fn("some_key")``."""

    def __init__(self, fn: Any):
        self._fn = fn

    def __getitem__(self, key: str) -> Any:
        return self._fn(key)

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):
            raise AttributeError(key)
        return self._fn(key)


def lookup_for(request: HttpRequest) -> BillingLookup:
    """The request's lookup, shared by the context processor and the template tags."""
    found = getattr(request, _REQUEST_ATTR, None)
    if found is None:
        found = BillingLookup(getattr(request, "user", None))
        setattr(request, _REQUEST_ATTR, found)
    return found


def billing(request: HttpRequest) -> dict[str, Any]:
    return {"billing": lookup_for(request)}
