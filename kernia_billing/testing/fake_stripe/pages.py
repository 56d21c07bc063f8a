"""Tiny HTML pages standing in for Stripe's hosted Checkout and Customer Portal.

They are deliberately plain: enough for a person (or a browser test) to click
through the flow a real integration sends customers through.
"""

from __future__ import annotations

import datetime as dt
from html import escape
from typing import Any

__all__ = ["checkout_page", "message_page", "portal_page"]

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 40rem; margin: 3rem auto; color: #1a1f36; }
h1 { font-size: 1.4rem; } table { width: 100%; border-collapse: collapse; margin: 1rem 0; }
td, th { text-align: left; padding: .4rem; border-bottom: 1px solid #e3e8ee; }
button { background: #635bff; color: white; border: 0; padding: .6rem 1.2rem; border-radius: 4px;
         cursor: pointer; font-size: 1rem; }
button.secondary { background: #e3e8ee; color: #1a1f36; }
.banner { background: #fff8e1; padding: .5rem; border-radius: 4px; font-size: .9rem; }
form { display: inline; }
"""


def _money(amount: int | None, currency: str | None) -> str:
    if amount is None:
        return "-"
    return f"{amount / 100:,.2f} {(currency or '').upper()}"


def _date(timestamp: int | None) -> str:
    if not timestamp:
        return "-"
    return dt.datetime.fromtimestamp(int(timestamp), tz=dt.UTC).strftime("%Y-%m-%d")


def _page(title: str, body: str) -> str:
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>"
        "<p class='banner'>Fake Stripe (test mode): no real payment happens here.</p>"
        f"{body}</body></html>"
    )


def message_page(title: str, message: str) -> str:
    """A page with just a heading and a sentence."""
    return _page(title, f"<h1>{escape(title)}</h1><p>{escape(message)}</p>")


def checkout_page(session: dict[str, Any], line_items: list[dict[str, Any]]) -> str:
    """The hosted Checkout page: line items and a "Pay and subscribe" button."""
    rows = "".join(
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>".format(
            escape(str(item.get("description") or item["price"]["id"])),
            item["quantity"],
            escape(_interval(item["price"])),
            escape(_money(item["amount_total"], item["currency"])),
        )
        for item in line_items
    )
    action = "Pay and subscribe" if session["mode"] == "subscription" else "Pay"
    if session["mode"] == "setup":
        action = "Save payment details"
    email = (
        (session.get("customer_details") or {}).get("email") or session.get("customer_email") or ""
    )
    status = session["status"]
    if status != "open":
        controls = f"<p>This checkout session is <strong>{escape(status)}</strong>.</p>"
    else:
        cancel = ""
        if session.get("cancel_url"):
            cancel = (
                f"<form method='post' action='/checkout/{escape(session['id'])}/cancel'>"
                "<button class='secondary' type='submit'>Cancel</button></form>"
            )
        controls = (
            f"<form method='post' action='/checkout/{escape(session['id'])}/complete'>"
            f"<button type='submit'>{escape(action)}</button></form> {cancel}"
        )
    total = _money(session.get("amount_total"), session.get("currency"))
    body = (
        "<h1>Checkout</h1>"
        f"<p>{escape(email)}</p>"
        "<table><tr><th>Item</th><th>Qty</th><th>Billing</th><th>Amount</th></tr>"
        f"{rows}</table>"
        f"<p><strong>Total: {escape(total)}</strong></p>"
        f"{controls}"
    )
    return _page("Checkout", body)


def _interval(price: dict[str, Any]) -> str:
    recurring = price.get("recurring")
    if not recurring:
        return "one time"
    count = recurring.get("interval_count") or 1
    return f"every {count} {recurring['interval']}" + ("s" if count > 1 else "")


def portal_page(
    session: dict[str, Any],
    customer: dict[str, Any],
    subscriptions: list[dict[str, Any]],
    extra: str = "",
) -> str:
    """The Customer Portal: the customer's subscriptions with cancel/resume buttons."""
    rows = []
    for sub in subscriptions:
        items = ", ".join(
            f"{escape(str(item['price'].get('nickname') or item['price']['product']))} "
            f"x {item['quantity']}"
            for item in sub["items"]["data"]
        )
        period_end = min(
            (item["current_period_end"] for item in sub["items"]["data"]), default=None
        )
        base = f"/portal/{escape(session['id'])}/subscriptions/{escape(sub['id'])}"
        if sub["status"] in ("canceled", "incomplete_expired"):
            button = ""
        elif sub["cancel_at_period_end"]:
            button = (
                f"<form method='post' action='{base}/resume'>"
                "<button type='submit'>Resume</button></form>"
            )
        else:
            button = (
                f"<form method='post' action='{base}/cancel'>"
                "<button class='secondary' type='submit'>Cancel at period end</button></form>"
            )
        note = " (cancels at period end)" if sub["cancel_at_period_end"] else ""
        rows.append(
            f"<tr><td>{items}</td><td>{escape(sub['status'])}{note}</td>"
            f"<td>{_date(period_end)}</td><td>{button}</td></tr>"
        )
    table = (
        "<table><tr><th>Plan</th><th>Status</th><th>Current period ends</th><th></th></tr>"
        + "".join(rows)
        + "</table>"
        if rows
        else "<p>No subscriptions.</p>"
    )
    back = ""
    if session.get("return_url"):
        href = escape(session["return_url"])
        back = f"<p><a href='{href}'><button class='secondary'>Back</button></a></p>"
    who = customer.get("email") or customer.get("name") or customer["id"]
    body = f"<h1>Billing</h1><p>{escape(str(who))}</p>{table}{extra}{back}"
    return _page("Billing portal", body)
