"""Money as people read it: Stripe amounts and prices formatted for display."""

from __future__ import annotations

from decimal import Decimal

# Stripe's zero-decimal currencies: amounts are in the currency's whole unit.
ZERO_DECIMAL_CURRENCIES = frozenset(
    [
        "bif",
        "clp",
        "djf",
        "gnf",
        "jpy",
        "kmf",
        "krw",
        "mga",
        "pyg",
        "rwf",
        "ugx",
        "vnd",
        "vuv",
        "xaf",
        "xof",
        "xpf",
    ]
)
CURRENCY_SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£", "jpy": "¥", "cad": "CA$", "aud": "A$"}


def format_amount(unit_amount: int | None, currency: str) -> str:
    """``1200, "usd"`` -> ``$12.00``; unknown currencies as ``12.00 CHF``."""
    if unit_amount is None:
        return "custom"
    currency = (currency or "").lower()
    if currency in ZERO_DECIMAL_CURRENCIES:
        number = f"{unit_amount:,}"
    else:
        number = f"{Decimal(unit_amount) / 100:,.2f}"
    symbol = CURRENCY_SYMBOLS.get(currency)
    return f"{symbol}{number}" if symbol else f"{number} {currency.upper()}"


def format_price(
    unit_amount: int | None, currency: str, interval: str, interval_count: int = 1
) -> str:
    """``$12.00 / month``, ``$120.00 / year``, ``$30.00 / 3 months``, ``$5.00`` (one-off)."""
    amount = format_amount(unit_amount, currency)
    if not interval:
        return amount
    if interval_count and interval_count > 1:
        return f"{amount} / {interval_count} {interval}s"
    return f"{amount} / {interval}"
