"""One currency per visitor for the pricing table.

Plans can have prices in several currencies; a visitor sees one: the one they chose
(``?currency=eur``, kept in the session), else the one their browser's language
region suggests (``Accept-Language: de-DE`` -> EUR), else ``settings.DEMO_CURRENCY``
(default USD). A plan without a price in that currency shows its default-currency
prices, never a mix.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.http import HttpRequest

SESSION_KEY = "demo_currency"

#: Language region (or bare language) -> currency, for the regions the demo sells in.
REGION_CURRENCIES = {
    "us": "usd",
    "gb": "gbp",
    "uk": "gbp",
    "ie": "eur",
    "de": "eur",
    "at": "eur",
    "fr": "eur",
    "es": "eur",
    "it": "eur",
    "nl": "eur",
    "be": "eur",
    "fi": "eur",
    "pt": "eur",
    "jp": "jpy",
    "ja": "jpy",
    "ca": "cad",
    "au": "aud",
}


def default_currency() -> str:
    return str(getattr(settings, "DEMO_CURRENCY", "usd")).lower()


def _from_accept_language(header: str) -> list[str]:
    """Currencies suggested by ``Accept-Language``, most preferred first."""
    ranked = []
    for position, part in enumerate(header.split(",")):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        pieces = tag.lower().replace("_", "-").split("-")
        region = pieces[1] if len(pieces) > 1 else ""
        currency = REGION_CURRENCIES.get(region) or REGION_CURRENCIES.get(pieces[0])
        if currency and quality > 0:
            ranked.append((-quality, position, currency))
    return [currency for *_, currency in sorted(ranked)]


def visitor_currency(request: HttpRequest, offered: Iterable[str]) -> str:
    """The currency this visitor sees, among the ``offered`` ones (lower case)."""
    offered = sorted(set(offered))
    chosen = request.GET.get("currency", "").lower()
    if chosen in offered:
        request.session[SESSION_KEY] = chosen
        return chosen
    remembered = request.session.get(SESSION_KEY, "")
    if remembered in offered:
        return str(remembered)
    for currency in _from_accept_language(request.headers.get("Accept-Language", "")):
        if currency in offered:
            return currency
    fallback = default_currency()
    return fallback if fallback in offered or not offered else offered[0]


def prices_in(plan: Any, currency: str) -> list[Any]:
    """The plan's offered prices in ``currency``, else in the default currency."""
    for wanted in (currency, default_currency()):
        prices = [pp for pp in plan.offered_prices if pp.price.currency == wanted]
        if prices:
            return prices
    first = plan.offered_prices[0].price.currency if plan.offered_prices else ""
    return [pp for pp in plan.offered_prices if pp.price.currency == first]
