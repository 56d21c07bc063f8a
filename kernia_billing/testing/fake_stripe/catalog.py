"""Products, prices and product features of the fake Stripe."""

from __future__ import annotations

import copy

from .core import (
    JSON,
    StoreCore,
    StripeError,
    _bool,
    _diff,
    _int,
    _merge_metadata,
    _require,
    _snapshot,
    _str_list,
    generate_id,
    template,
)


class CatalogStore(StoreCore):
    """Products, prices and product features of the fake Stripe."""

    # ----------------------------------------------------------------- products

    _PRODUCT_FIELDS = (
        "active",
        "description",
        "images",
        "marketing_features",
        "metadata",
        "name",
        "package_dimensions",
        "shippable",
        "statement_descriptor",
        "tax_code",
        "unit_label",
        "url",
    )

    def _apply_product_fields(self, product: JSON, params: JSON) -> None:
        for key in self._PRODUCT_FIELDS:
            if key not in params:
                continue
            value = params[key]
            if key == "metadata":
                product["metadata"] = _merge_metadata(product.get("metadata"), value)
            elif key in ("active", "shippable"):
                product[key] = None if value == "" else _bool(value, key)
            elif key == "images":
                product[key] = _str_list(value, key)
            elif key == "marketing_features":
                features = value if isinstance(value, list) else []
                product[key] = [
                    {"name": str(f.get("name", ""))} for f in features if isinstance(f, dict)
                ]
            elif key == "package_dimensions":
                product[key] = None if value == "" else value
            else:
                product[key] = None if value == "" else str(value)

    def create_product(self, params: JSON) -> JSON:
        """POST /v1/products."""
        name = _require(params, "name")
        with self.lock:
            product_id = str(params.get("id") or generate_id("prod_", 14))
            if product_id in self._bucket("product"):
                raise StripeError(
                    400,
                    f"Product already exists with id {product_id}",
                    code="resource_already_exists",
                    param="id",
                )
            now = self._created()
            product = template("product")
            product.update(
                id=product_id,
                name=str(name),
                created=now,
                updated=now,
                active=True,
                default_price=None,
                description=None,
                images=[],
                marketing_features=[],
                metadata={},
                package_dimensions=None,
                shippable=None,
                livemode=False,
                statement_descriptor=None,
                tax_code=None,
                type="service",
                unit_label=None,
                url=None,
            )
            self._apply_product_fields(product, params)
            self._bucket("product")[product_id] = product
            self._features[product_id] = []
            self._emit("product.created", product)
            price_data = params.get("default_price_data")
            if isinstance(price_data, dict):
                price = self._create_price_locked({**price_data, "product": product_id})
                before = copy.deepcopy(product)
                product["default_price"] = price["id"]
                self._emit("product.updated", product, _diff(before, product))
            return _snapshot(product)

    def update_product(self, product_id: str, params: JSON) -> JSON:
        """POST /v1/products/{id}."""
        with self.lock:
            product = self._get("product", product_id)
            before = copy.deepcopy(product)
            self._apply_product_fields(product, params)
            if "default_price" in params:
                price_id = params["default_price"] or None
                if price_id is not None:
                    price = self._get("price", str(price_id), "default_price")
                    if price["product"] != product_id:
                        raise StripeError.invalid(
                            "The price must belong to this product.", param="default_price"
                        )
                product["default_price"] = price_id
            changes = _diff(before, product)
            if changes:
                product["updated"] = self.now()
                self._emit("product.updated", product, changes)
            return _snapshot(product)

    def delete_product(self, product_id: str) -> JSON:
        """DELETE /v1/products/{id}: only products without prices, as on Stripe."""
        with self.lock:
            product = self._get("product", product_id)
            if any(p["product"] == product_id for p in self._bucket("price").values()):
                raise StripeError.invalid(
                    "This product cannot be deleted because it has one or more user-created "
                    "prices.",
                    code="resource_in_use",
                )
            del self._bucket("product")[product_id]
            self._features.pop(product_id, None)
            self._emit("product.deleted", product)
            return {"id": product_id, "object": "product", "deleted": True}

    def list_product_features(self, product_id: str) -> list[JSON]:
        """GET /v1/products/{id}/features: empty unless added with :meth:`add_product_feature`."""
        with self.lock:
            self._get("product", product_id)
            return _snapshot(list(reversed(self._features.get(product_id, []))))

    def add_product_feature(
        self, product_id: str, name: str, lookup_key: str | None = None
    ) -> JSON:
        """Attach an entitlement feature to a product (test helper)."""
        with self.lock:
            self._get("product", product_id)
            feature = template("product_feature")
            feature.update(
                id=generate_id("prodft_"),
                livemode=False,
                entitlement_feature={
                    "id": generate_id("feat_"),
                    "object": "entitlements.feature",
                    "active": True,
                    "livemode": False,
                    "lookup_key": lookup_key or name.lower().replace(" ", "-"),
                    "metadata": {},
                    "name": name,
                },
            )
            self._features.setdefault(product_id, []).append(feature)
            return _snapshot(feature)

    # ----------------------------------------------------------------- prices

    def _claim_lookup_key(self, price_id: str, lookup_key: str, transfer: bool) -> None:
        for other in self._bucket("price").values():
            if other["id"] != price_id and other.get("lookup_key") == lookup_key:
                if not transfer:
                    raise StripeError.invalid(
                        f"A price (`{other['id']}`) already uses that lookup key.",
                        param="lookup_key",
                    )
                before = copy.deepcopy(other)
                other["lookup_key"] = None
                self._emit("price.updated", other, _diff(before, other))

    def _create_price_locked(self, params: JSON) -> JSON:
        currency = str(_require(params, "currency")).lower()
        if params.get("product_data") is not None:
            data = params["product_data"]
            if not isinstance(data, dict):
                raise StripeError.invalid("Invalid hash", param="product_data")
            product = self.create_product(
                {
                    k: v
                    for k, v in data.items()
                    if k
                    in (
                        "name",
                        "active",
                        "metadata",
                        "statement_descriptor",
                        "tax_code",
                        "unit_label",
                        "id",
                    )
                }
            )
            product_id = product["id"]
        else:
            product_id = str(_require(params, "product"))
            self._get("product", product_id, "product")
        if "unit_amount" in params:
            unit_amount: int | None = _int(params["unit_amount"], "unit_amount")
            if unit_amount is not None and unit_amount < 0:
                raise StripeError.invalid(
                    "This value must be greater than or equal to 0.", param="unit_amount"
                )
        elif "unit_amount_decimal" in params:
            unit_amount = int(float(params["unit_amount_decimal"]))
        elif params.get("custom_unit_amount") is not None:
            unit_amount = None
        else:
            raise StripeError.required("unit_amount")
        recurring = None
        if params.get("recurring") not in (None, ""):
            raw = params["recurring"]
            if not isinstance(raw, dict):
                raise StripeError.invalid("Invalid hash", param="recurring")
            interval = str(_require(raw, "interval")) if raw.get("interval") else None
            if interval is None:
                raise StripeError.required("recurring[interval]")
            if interval not in ("day", "week", "month", "year"):
                raise StripeError.invalid(
                    "Invalid recurring[interval]: must be one of day, week, month, or year",
                    param="recurring[interval]",
                )
            trial_days = raw.get("trial_period_days")
            recurring = {
                "interval": interval,
                "interval_count": _int(raw.get("interval_count", 1), "recurring[interval_count]"),
                "meter": raw.get("meter"),
                "trial_period_days": _int(trial_days, "recurring[trial_period_days]")
                if trial_days
                else None,
                "usage_type": str(raw.get("usage_type", "licensed")),
            }
        price = template("price")
        price.update(
            id=generate_id("price_"),
            active=_bool(params.get("active", True), "active"),
            billing_scheme=str(params.get("billing_scheme", "per_unit")),
            created=self._created(),
            currency=currency,
            custom_unit_amount=params.get("custom_unit_amount") or None,
            livemode=False,
            lookup_key=params.get("lookup_key") or None,
            metadata=_merge_metadata({}, params.get("metadata")),
            nickname=params.get("nickname") or None,
            product=product_id,
            recurring=recurring,
            tax_behavior=str(params.get("tax_behavior", "unspecified")),
            tiers_mode=None,
            transform_quantity=None,
            type="recurring" if recurring else "one_time",
            unit_amount=unit_amount,
            unit_amount_decimal=None
            if unit_amount is None
            else str(params.get("unit_amount_decimal", unit_amount)),
        )
        if price["lookup_key"]:
            self._claim_lookup_key(
                price["id"],
                price["lookup_key"],
                _bool(params.get("transfer_lookup_key", False), "transfer_lookup_key"),
            )
        self._bucket("price")[price["id"]] = price
        self._emit("price.created", price)
        if recurring:
            self._emit("plan.created", self._plan(price))
        return price

    def create_price(self, params: JSON) -> JSON:
        """POST /v1/prices."""
        with self.lock:
            return _snapshot(self._create_price_locked(params))

    def update_price(self, price_id: str, params: JSON) -> JSON:
        """POST /v1/prices/{id}."""
        with self.lock:
            price = self._get("price", price_id)
            before = copy.deepcopy(price)
            if "active" in params:
                price["active"] = _bool(params["active"], "active")
            if "nickname" in params:
                price["nickname"] = params["nickname"] or None
            if "metadata" in params:
                price["metadata"] = _merge_metadata(price["metadata"], params["metadata"])
            if "tax_behavior" in params:
                price["tax_behavior"] = str(params["tax_behavior"])
            if "lookup_key" in params:
                key = params["lookup_key"] or None
                if key:
                    self._claim_lookup_key(
                        price_id,
                        str(key),
                        _bool(params.get("transfer_lookup_key", False), "transfer_lookup_key"),
                    )
                price["lookup_key"] = key
            changes = _diff(before, price)
            if changes:
                self._emit("price.updated", price, changes)
                if price["recurring"]:
                    self._emit("plan.updated", self._plan(price), changes)
            return _snapshot(price)

    def delete_price(self, price_id: str) -> JSON:
        """Remove a price (the API cannot; the dashboard can) and emit ``price.deleted``."""
        with self.lock:
            price = self._get("price", price_id)
            del self._bucket("price")[price_id]
            self._emit("price.deleted", price)
            return {"id": price_id, "object": "price", "deleted": True}

    @staticmethod
    def _plan(price: JSON) -> JSON:
        """The legacy plan object Stripe derives from a recurring price."""
        recurring = price.get("recurring") or {}
        plan = template("plan")
        plan.update(
            id=price["id"],
            active=price["active"],
            amount=price["unit_amount"],
            amount_decimal=price["unit_amount_decimal"],
            billing_scheme=price["billing_scheme"],
            created=price["created"],
            currency=price["currency"],
            interval=recurring.get("interval"),
            interval_count=recurring.get("interval_count"),
            livemode=False,
            metadata=copy.deepcopy(price["metadata"]),
            meter=recurring.get("meter"),
            nickname=price["nickname"],
            product=price["product"],
            tiers_mode=None,
            transform_usage=None,
            trial_period_days=recurring.get("trial_period_days"),
            usage_type=recurring.get("usage_type", "licensed"),
        )
        return plan
