"""Checkout and billing portal sessions of the fake Stripe."""

from __future__ import annotations

import copy

from .core import (
    JSON,
    StripeError,
    _bool,
    _int,
    _merge_metadata,
    _require,
    _snapshot,
    _str_list,
    generate_id,
    template,
)
from .lifecycle import LifecycleStore


class CheckoutStore(LifecycleStore):
    """Checkout and billing portal sessions of the fake Stripe."""

    # ----------------------------------------------------------------- checkout

    def create_checkout_session(self, params: JSON) -> JSON:
        """POST /v1/checkout/sessions."""
        mode = str(_require(params, "mode"))
        if mode not in ("payment", "subscription", "setup"):
            raise StripeError.invalid(
                "Invalid mode: must be one of payment, setup, or subscription", param="mode"
            )
        with self.lock:
            customer_id = params.get("customer") or None
            if customer_id:
                self._live_customer(str(customer_id), "customer")
            if customer_id and params.get("customer_email"):
                raise StripeError.invalid(
                    "You may only specify one of these parameters: customer, customer_email.",
                    param="customer_email",
                )
            raw_items = params.get("line_items") or []
            if mode != "setup" and not raw_items:
                raise StripeError.required("line_items")
            if not isinstance(raw_items, list):
                raise StripeError.invalid(
                    "Invalid array", param="line_items", code="parameter_invalid_array"
                )
            session_id = generate_id("cs_test_", 58)
            line_items: list[JSON] = []
            for index, raw in enumerate(raw_items):
                if not isinstance(raw, dict) or not raw.get("price"):
                    raise StripeError.required(f"line_items[{index}][price]")
                param = f"line_items[{index}][price]"
                price = self._get("price", str(raw["price"]), param)
                if not price["active"]:
                    raise StripeError.invalid(
                        f"The price `{price['id']}` is not active.", param=param
                    )
                if mode == "payment" and price["type"] == "recurring":
                    raise StripeError.invalid(
                        "You specified `payment` mode but passed a recurring price. Either switch "
                        "to `subscription` mode or use only one-time prices.",
                        param=param,
                    )
                quantity = _int(raw.get("quantity", 1), f"line_items[{index}][quantity]")
                amount = int(price["unit_amount"] or 0) * quantity
                line = template("item")
                line.update(
                    id=generate_id("li_"),
                    adjustable_quantity=None,
                    amount_discount=0,
                    amount_subtotal=amount,
                    amount_tax=0,
                    amount_total=amount,
                    currency=price["currency"],
                    description=self._product_name(price["product"]),
                    metadata={},
                    price=_snapshot(price),
                    quantity=quantity,
                )
                line_items.append(line)
            if mode == "subscription" and not any(
                li["price"]["type"] == "recurring" for li in line_items
            ):
                raise StripeError.invalid(
                    "You must provide at least one recurring price in `subscription` mode when "
                    "using prices.",
                    param="line_items",
                )
            sub_data = params.get("subscription_data") or {}
            if sub_data and not isinstance(sub_data, dict):
                raise StripeError.invalid("Invalid hash", param="subscription_data")
            if sub_data.get("trial_period_days") not in (None, ""):
                _int(sub_data["trial_period_days"], "subscription_data[trial_period_days]")
            now = self.now()
            total = sum(li["amount_total"] for li in line_items)
            customer = self._bucket("customer").get(str(customer_id)) if customer_id else None
            email = params.get("customer_email") or (customer or {}).get("email")
            session = template("checkout.session")
            session.update(
                id=session_id,
                adaptive_pricing=None,
                after_expiration=None,
                allow_promotion_codes=(
                    _bool(params["allow_promotion_codes"], "allow_promotion_codes")
                    if "allow_promotion_codes" in params
                    else None
                ),
                amount_subtotal=total if mode != "setup" else None,
                amount_total=total if mode != "setup" else None,
                automatic_tax={
                    "enabled": False,
                    "liability": None,
                    "provider": None,
                    "status": None,
                },
                billing_address_collection=params.get("billing_address_collection"),
                cancel_url=params.get("cancel_url"),
                client_reference_id=params.get("client_reference_id") or None,
                client_secret=None,
                collected_information=None,
                consent=None,
                consent_collection=None,
                created=now,
                currency=line_items[0]["currency"] if line_items else None,
                currency_conversion=None,
                custom_fields=[],
                custom_text={
                    "after_submit": None,
                    "shipping_address": None,
                    "submit": None,
                    "terms_of_service_acceptance": None,
                },
                customer=customer_id,
                customer_account=None,
                customer_creation=None if customer_id or mode != "payment" else "if_required",
                customer_details=None,
                customer_email=params.get("customer_email") or None,
                discounts=[],
                expires_at=_int(params["expires_at"], "expires_at")
                if params.get("expires_at")
                else now + 86400,
                integration_identifier=None,
                invoice=None,
                invoice_creation=None,
                livemode=False,
                locale=params.get("locale"),
                managed_payments=None,
                metadata=_merge_metadata({}, params.get("metadata")),
                mode=mode,
                origin_context=None,
                payment_intent=None,
                payment_link=None,
                payment_method_collection=(
                    str(params.get("payment_method_collection") or "always")
                    if mode == "subscription"
                    else None
                ),
                payment_method_configuration_details=None,
                payment_method_options={},
                payment_method_types=_str_list(
                    params.get("payment_method_types"), "payment_method_types"
                )
                or ["card"],
                payment_status="no_payment_required" if mode == "setup" else "unpaid",
                permissions=None,
                phone_number_collection={"enabled": False},
                recovered_from=None,
                saved_payment_method_options=None,
                setup_intent=None,
                shipping_address_collection=None,
                shipping_cost=None,
                shipping_options=[],
                status="open",
                submit_type=params.get("submit_type"),
                subscription=None,
                success_url=params.get("success_url"),
                total_details={"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
                ui_mode=str(params.get("ui_mode", "hosted")),
                url=f"{self.base_url}/checkout/{session_id}",
                wallet_options=None,
            )
            if email:
                session["customer_details"] = {
                    "address": None,
                    "business_name": None,
                    "email": email,
                    "individual_name": None,
                    "name": (customer or {}).get("name"),
                    "phone": None,
                    "tax_exempt": "none",
                    "tax_ids": [],
                }
            # Keep what completion needs, but not in the public object.
            session["_subscription_data"] = _snapshot(sub_data)
            self._bucket("checkout.session")[session_id] = session
            self._line_items[session_id] = line_items
            return self._public_session(session)

    def _pay_checkout_locked(self, session: JSON, pm: str) -> str:
        """A payment-mode session's payment: its PaymentIntent id (see ``refunds``)."""
        return generate_id("pi_")

    @staticmethod
    def _public_session(session: JSON) -> JSON:
        return {k: _snapshot(v) for k, v in session.items() if not k.startswith("_")}

    def retrieve_checkout_session(self, session_id: str) -> JSON:
        """GET /v1/checkout/sessions/{id}."""
        with self.lock:
            return self._public_session(self._get("checkout.session", session_id))

    def list_checkout_sessions(self, params: JSON) -> list[JSON]:
        """GET /v1/checkout/sessions filters: customer, subscription, status."""
        with self.lock:
            return [
                self._public_session(s)
                for s in reversed(self._bucket("checkout.session").values())
                if all(
                    not params.get(k) or s.get(k) == params[k]
                    for k in ("customer", "subscription", "status")
                )
            ]

    def checkout_line_items(self, session_id: str) -> list[JSON]:
        """GET /v1/checkout/sessions/{id}/line_items (in creation order, as Stripe)."""
        with self.lock:
            self._get("checkout.session", session_id)
            return _snapshot(self._line_items.get(session_id, []))

    def expire_checkout_session(self, session_id: str) -> JSON:
        """POST /v1/checkout/sessions/{id}/expire."""
        with self.lock:
            session = self._get("checkout.session", session_id)
            if session["status"] != "open":
                raise StripeError.invalid(
                    f'Only Checkout Sessions with a status in ["open"] can be expired. This '
                    f'Checkout Session has a status of "{session["status"]}".',
                    param="session",
                )
            session["status"] = "expired"
            session["url"] = None
            public = self._public_session(session)
            self._emit("checkout.session.expired", public)
            return public

    def complete_checkout_session(self, session_id: str) -> JSON:
        """Complete a Checkout Session as if the customer paid on the hosted page.

        Creates the customer if needed and the test card the customer entered
        (``payment_method.attached``). In subscription mode, then, as on
        Stripe: ``customer.subscription.created`` (``incomplete``, or
        ``trialing``), ``invoice.created``, ``invoice.finalized``,
        ``invoice.paid``, ``invoice.payment_succeeded``,
        ``customer.subscription.updated`` (now ``active``) and finally
        ``checkout.session.completed``.
        """
        with self.lock:
            session = self._get("checkout.session", session_id)
            if session["status"] != "open":
                raise StripeError.invalid(
                    f"This Checkout Session is no longer open (status: {session['status']}).",
                    param="session",
                )
            customer_id = session["customer"]
            if not customer_id:
                email = session["customer_email"] or "customer@example.com"
                customer_id = self.create_customer({"email": email})["id"]
                session["customer"] = customer_id
            customer = self._bucket("customer")[customer_id]
            session["customer_details"] = {
                "address": None,
                "business_name": None,
                "email": customer.get("email"),
                "individual_name": None,
                "name": customer.get("name"),
                "phone": None,
                "tax_exempt": "none",
                "tax_ids": [],
            }
            payment_status = "paid"
            trial_days = (session["_subscription_data"] or {}).get("trial_period_days")
            optional = session.get("payment_method_collection") == "if_required"
            # A trial checkout that collects a payment method only if required takes none.
            pm = (
                None
                if optional and trial_days not in (None, "", 0, "0")
                else self.create_payment_method(customer_id)["id"]
            )
            if session["mode"] == "subscription":
                sub_data = session["_subscription_data"]
                sub_params: JSON = {
                    "customer": customer_id,
                    "items": [
                        {"price": li["price"]["id"], "quantity": li["quantity"]}
                        for li in self._line_items[session_id]
                        if li["price"]["type"] == "recurring"
                    ],
                    "metadata": sub_data.get("metadata") or {},
                    "default_payment_method": pm or "",
                    "payment_behavior": "default_incomplete",
                }
                for key in ("trial_period_days", "trial_end", "description", "trial_settings"):
                    if sub_data.get(key) not in (None, ""):
                        sub_params[key] = sub_data[key]
                sub = self._create_subscription_locked(sub_params)
                invoice = self._bucket("invoice")[sub["latest_invoice"]]
                if invoice["status"] == "open":
                    before = copy.deepcopy(sub)
                    self._mark_paid(invoice, pm)
                    self._after_payment_locked(sub, before)
                session["subscription"] = sub["id"]
                session["invoice"] = sub["latest_invoice"]
                if sub["status"] == "trialing":
                    payment_status = "no_payment_required"
            elif session["mode"] == "payment":
                assert pm is not None  # only a subscription's trial goes without one
                session["payment_intent"] = self._pay_checkout_locked(session, pm)
            else:
                session["setup_intent"] = generate_id("seti_")
                payment_status = "no_payment_required"
            session["status"] = "complete"
            session["url"] = None
            session["payment_status"] = payment_status
            public = self._public_session(session)
            self._emit("checkout.session.completed", public)
            return public

    # ----------------------------------------------------------------- billing portal

    def create_portal_session(self, params: JSON) -> JSON:
        """POST /v1/billing_portal/sessions."""
        customer_id = str(_require(params, "customer"))
        with self.lock:
            self._live_customer(customer_id, "customer")
            session = template("billing_portal.session")
            session_id = generate_id("bps_")
            session.update(
                id=session_id,
                configuration=params.get("configuration") or "bpc_fakedefaultconfiguration",
                created=self.now(),
                customer=customer_id,
                customer_account=None,
                flow=None,
                livemode=False,
                locale=params.get("locale"),
                on_behalf_of=None,
                return_url=params.get("return_url"),
                url=f"{self.base_url}/portal/{session_id}",
            )
            self._bucket("billing_portal.session")[session_id] = session
            return _snapshot(session)
