"""Customers of the fake Stripe, and their search."""

from __future__ import annotations

import copy
import re
import secrets

from .catalog import CatalogStore
from .core import (
    JSON,
    StripeError,
    _diff,
    _int,
    _merge_metadata,
    _require,
    _snapshot,
    _str_list,
    generate_id,
    template,
)

_SEARCH_CLAUSE = re.compile(
    r"\s*(-?)(email|name|phone|description|metadata\['[^']+'\])\s*([:~])\s*'([^']*)'\s*"
)


def _parse_search(query: str) -> tuple[list[tuple[bool, str, str, str]], str]:
    """Split a search query into ``(negate, field, op, value)`` clauses and the joiner."""
    clauses: list[tuple[bool, str, str, str]] = []
    joiners: set[str] = set()
    rest = query
    while True:
        match = _SEARCH_CLAUSE.match(rest)
        if not match:
            raise StripeError.invalid(
                f"Invalid search query: {query!r}. See https://stripe.com/docs/search#search-query-language.",
                param="query",
            )
        clauses.append((match.group(1) == "-", match.group(2), match.group(3), match.group(4)))
        rest = rest[match.end() :]
        if not rest.strip():
            break
        joiner = re.match(r"(AND|OR)\s+", rest)
        if not joiner:
            raise StripeError.invalid(f"Invalid search query: {query!r}.", param="query")
        joiners.add(joiner.group(1))
        rest = rest[joiner.end() :]
    if len(joiners) > 1:
        raise StripeError.invalid("Search queries cannot mix AND and OR clauses.", param="query")
    return clauses, joiners.pop() if joiners else "AND"


class CustomerStore(CatalogStore):
    """Customers of the fake Stripe, and their search."""

    # ----------------------------------------------------------------- customers

    _CUSTOMER_FIELDS = frozenset(
        {
            "address",
            "balance",
            "description",
            "email",
            "invoice_settings",
            "metadata",
            "name",
            "phone",
            "preferred_locales",
            "shipping",
            "tax_exempt",
        }
    )

    def _apply_customer_fields(self, customer: JSON, params: JSON) -> None:
        for key in self._CUSTOMER_FIELDS:
            if key not in params:
                continue
            value = params[key]
            if key == "metadata":
                customer["metadata"] = _merge_metadata(customer["metadata"], value)
            elif key == "balance":
                customer["balance"] = _int(value, "balance")
            elif key == "preferred_locales":
                customer[key] = _str_list(value, key)
            elif key in ("address", "shipping", "invoice_settings"):
                if value == "":
                    customer[key] = None
                elif isinstance(value, dict):
                    merged = dict(customer.get(key) or {})
                    merged.update(value)
                    customer[key] = merged
            else:
                customer[key] = None if value == "" else str(value)

    def create_customer(self, params: JSON) -> JSON:
        """POST /v1/customers."""
        with self.lock:
            customer = template("customer")
            customer.update(
                id=generate_id("cus_", 14),
                created=self._created(),
                currency=None,
                discount=None,
                email=None,
                name=None,
                phone=None,
                description=None,
                metadata={},
                livemode=False,
                shipping=None,
                address=None,
                invoice_prefix=secrets.token_hex(4).upper(),
                next_invoice_sequence=1,
            )
            self._apply_customer_fields(customer, params)
            self._bucket("customer")[customer["id"]] = customer
            self._emit("customer.created", customer)
            return _snapshot(customer)

    def _live_customer(self, customer_id: str, param: str | None = "id") -> JSON:
        if customer_id in self._deleted_customers:
            raise StripeError.missing("customer", customer_id, param)
        return self._get("customer", customer_id, param)

    def update_customer(self, customer_id: str, params: JSON) -> JSON:
        """POST /v1/customers/{id}."""
        with self.lock:
            customer = self._live_customer(customer_id)
            before = copy.deepcopy(customer)
            self._apply_customer_fields(customer, params)
            changes = _diff(before, customer)
            if changes:
                self._emit("customer.updated", customer, changes)
            return _snapshot(customer)

    def delete_customer(self, customer_id: str) -> JSON:
        """DELETE /v1/customers/{id}: also cancels the customer's subscriptions."""
        with self.lock:
            customer = self._live_customer(customer_id)
            for sub in list(self._bucket("subscription").values()):
                if sub["customer"] == customer_id and sub["status"] not in (
                    "canceled",
                    "incomplete_expired",
                ):
                    self._cancel_subscription_locked(sub, reason="cancellation_requested")
            del self._bucket("customer")[customer_id]
            self._deleted_customers.add(customer_id)
            self._emit("customer.deleted", customer)
            return {"id": customer_id, "object": "customer", "deleted": True}

    # ----------------------------------------------------------------- balance transactions

    def create_balance_transaction(self, customer_id: str, params: JSON) -> JSON:
        """POST /v1/customers/{id}/balance_transactions: a credit (negative ``amount``)
        or debit applied to the customer's next invoices; ``customer.updated`` follows.

        As on Stripe: ``amount`` and ``currency`` are required, the currency must be the
        customer's (a customer without one takes it), and a deleted customer is refused.
        """
        with self.lock:
            customer = self._live_customer(customer_id, "customer")
            amount = _int(_require(params, "amount"), "amount")
            currency = str(_require(params, "currency")).lower()
            if customer.get("currency") and customer["currency"] != currency:
                raise StripeError.invalid(
                    f"Customer {customer_id} has a balance in {customer['currency']}; "
                    f"a balance transaction in {currency} cannot be added.",
                    param="currency",
                )
            before = copy.deepcopy(customer)
            customer["currency"] = currency
            customer["balance"] = int(customer.get("balance") or 0) + amount
            transaction = template("customer_balance_transaction")
            transaction.update(
                id=generate_id("cbtxn_"),
                amount=amount,
                created=self.now(),
                credit_note=None,
                checkout_session=None,
                currency=currency,
                customer=customer_id,
                description=params.get("description") or None,
                ending_balance=customer["balance"],
                invoice=None,
                livemode=False,
                metadata=_merge_metadata({}, params.get("metadata")),
                type="adjustment",
            )
            self._bucket("customer_balance_transaction")[transaction["id"]] = transaction
            self._emit("customer.updated", customer, _diff(before, customer))
            return _snapshot(transaction)

    def retrieve_balance_transaction(self, customer_id: str, transaction_id: str) -> JSON:
        """GET /v1/customers/{id}/balance_transactions/{id}."""
        with self.lock:
            self._live_customer(customer_id, "customer")
            transaction = self._get("customer_balance_transaction", transaction_id)
            if transaction["customer"] != customer_id:
                raise StripeError.missing("customer balance transaction", transaction_id, "id")
            return _snapshot(transaction)

    def list_balance_transactions(self, customer_id: str) -> list[JSON]:
        """GET /v1/customers/{id}/balance_transactions (newest first)."""
        with self.lock:
            self._live_customer(customer_id, "customer")
        return self.list_objects(
            "customer_balance_transaction", lambda t: t["customer"] == customer_id
        )

    def search_customers(self, query: str) -> list[JSON]:
        """GET /v1/customers/search: Stripe's search query language, for customer fields.

        Supports ``field:'value'`` (exact), ``field~'value'`` (substring), a
        leading ``-`` (negation), ``metadata['key']`` and clauses joined by
        ``AND`` or ``OR`` (not both), on ``email``, ``name``, ``phone``,
        ``description`` and ``metadata``.
        """
        clauses, joiner = _parse_search(query)

        def matches(customer: JSON) -> bool:
            results = []
            for negate, field, op, value in clauses:
                if field.startswith("metadata["):
                    actual = customer["metadata"].get(field[len("metadata['") : -2])
                else:
                    actual = customer.get(field)
                text = "" if actual is None else str(actual)
                hit = value.lower() in text.lower() if op == "~" else text.lower() == value.lower()
                results.append(hit != negate)
            return any(results) if joiner == "OR" else all(results)

        return self.list_objects("customer", matches)
