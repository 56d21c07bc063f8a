"""Load features, plans, plan features and price mappings from a catalog document."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Model

from ...exceptions import CatalogError
from ...models import (
    CatalogPrice,
    Feature,
    FeatureKind,
    Plan,
    PlanFeature,
    PlanPrice,
    ResetPeriod,
    ReviewState,
)
from ...types import LoadResult
from ..entitlements.sync import sync_plan_customers
from . import rules
from .addons_loader import parse_sections, save_sections
from .document import (
    PLAN_FEATURE_KEYS,
    PLAN_KEYS,
    _Errors,
    _FeatureSpec,
    _parse_features,
    _resolve_price,
    _typed,
)
from .review import _review
from .sync import Outcome


def load_catalog(
    data: Any, *, approve: bool = False, user: Any = None, dry_run: bool = False
) -> LoadResult:
    """Load features, plans, plan features and price mappings from a catalog document.

    The format is documented in ``kernia_load_catalog``. Plans in the document get
    exactly the features and prices it lists (others are removed from them); plans
    and features not in the document are left alone. Every problem is reported at
    once in a :class:`CatalogError`, and then nothing is written. Loading the same
    document twice changes nothing the second time.
    """
    errors = _Errors()
    if not isinstance(data, dict):
        raise CatalogError("The catalog must be a JSON object with 'features' and 'plans'.")
    unknown = set(data) - {"features", "plans", "addons", "topups"}
    if unknown:
        errors.add("catalog", f"unknown keys {sorted(unknown)}")
    feature_specs = _parse_features(data, errors)
    sections = parse_sections(data, errors)  # add-ons and top-up packs
    plans = data.get("plans", [])
    if not _typed(plans, list, "plans", errors):
        plans = []

    # Pass 1: shape, price references and review state; nothing is written.
    plan_specs: list[tuple[str, dict[str, Any], list[CatalogPrice], list[tuple[str, dict]]]] = []
    price_owner: dict[int, str] = {}
    to_approve: dict[int, CatalogPrice] = {}
    defaults: list[str] = []
    for i, entry in enumerate(plans):
        where = f"plans[{i}]"
        if not _typed(entry, dict, where, errors):
            continue
        key = entry.get("key")
        if not isinstance(key, str) or not key:
            errors.add(where, "key is required")
            continue
        where = f"plan {key!r}"
        if any(key == spec[0] for spec in plan_specs):
            errors.add(where, "listed twice")
            continue
        bad = set(entry) - PLAN_KEYS
        if bad:
            errors.add(where, f"unknown keys {sorted(bad)}")
        fields = {
            "name": entry.get("name") or key.title(),
            "description": entry.get("description", ""),
            "is_default": entry.get("isDefault", False),
            "active": entry.get("active", True),
            "display_order": entry.get("displayOrder", i),
            "trial_days": entry.get("trialDays", 0),
        }
        for name, kind in (
            ("is_default", bool),
            ("active", bool),
            ("display_order", int),
            ("trial_days", int),
        ):
            _typed(fields[name], kind, f"{where} {name}", errors)
        trial_days = fields["trial_days"]
        if isinstance(trial_days, int) and not 0 <= trial_days <= 730:
            errors.add(f"{where} trialDays", "must be between 0 and 730 (Stripe's limit)")
        if fields["is_default"] is True:
            defaults.append(key)

        prices: list[CatalogPrice] = []
        refs = entry.get("prices", [])
        if _typed(refs, list, f"{where} prices", errors):
            for ref in refs:
                price = _resolve_price(ref, f"{where} price {ref!r}", errors)
                if price is None:
                    continue
                if price.pk in price_owner:
                    errors.add(
                        f"{where} price {ref!r}",
                        f"also listed by plan {price_owner[price.pk]!r}; a price maps to one plan",
                    )
                    continue
                price_owner[price.pk] = key
                prices.append(price)
                if not rules.is_approved(price):
                    if approve:
                        to_approve[price.pk] = price
                    else:
                        errors.add(
                            f"{where} price {ref!r}",
                            f"Stripe price {price.stripe_id} is {price.review_state}, not approved;"
                            " approve it in the admin or pass --approve",
                        )

        plan_features: list[tuple[str, dict]] = []
        entries = entry.get("features", [])
        if _typed(entries, list, f"{where} features", errors):
            for j, pf in enumerate(entries):
                pf_where = f"{where} features[{j}]"
                if not _typed(pf, dict, pf_where, errors):
                    continue
                fkey = pf.get("key")
                if not isinstance(fkey, str) or not fkey:
                    errors.add(pf_where, "key is required")
                    continue
                pf_where = f"{where} feature {fkey!r}"
                bad = set(pf) - PLAN_FEATURE_KEYS
                if bad:
                    errors.add(pf_where, f"unknown keys {sorted(bad)}")
                if any(fkey == existing for existing, _ in plan_features):
                    errors.add(pf_where, "listed twice")
                    continue
                if "kind" in pf:
                    spec = feature_specs.get(fkey)
                    if spec is None:
                        feature_specs[fkey] = _FeatureSpec(
                            fkey,
                            {
                                "name": pf.get("name") or fkey.replace("-", " ").title(),
                                "kind": pf["kind"],
                            },
                        )
                    elif spec.fields.get("kind") != pf["kind"]:
                        errors.add(
                            pf_where, f"kind {pf['kind']!r} differs from {spec.fields['kind']!r}"
                        )
                pf_fields = {
                    "included": pf.get("included", 0),
                    "unlimited": pf.get("unlimited", False),
                    "reset_period": pf.get("resetPeriod", ResetPeriod.NONE),
                    "allow_overage": pf.get("allowOverage", False),
                    "included_from_quantity": pf.get("includedFromQuantity", False),
                    "rollover_max": pf.get("rolloverMax", 0),
                    "rollover_expires_after": pf.get("rolloverExpiresAfter", 1),
                }
                ok = True
                expected: tuple[tuple[str, type], ...] = (
                    ("included", int),
                    ("unlimited", bool),
                    ("reset_period", str),
                    ("allow_overage", bool),
                    ("included_from_quantity", bool),
                    ("rollover_max", int),
                    ("rollover_expires_after", int),
                )
                for name, expected_type in expected:
                    ok = _typed(pf_fields[name], expected_type, f"{pf_where} {name}", errors) and ok
                if pf.get("overagePrice") is not None:  # metering: the metered overage price
                    overage = _resolve_price(pf["overagePrice"], f"{pf_where} overagePrice", errors)
                    pf_fields["overage_price"] = overage
                    pf_fields["allow_overage"] = pf.get("allowOverage", True)
                    ok = overage is not None and ok
                    if overage is not None and not rules.is_approved(overage):
                        if approve:
                            to_approve[overage.pk] = overage
                        else:
                            errors.add(
                                f"{pf_where} overagePrice",
                                f"Stripe price {overage.stripe_id} is {overage.review_state}, "
                                "not approved; approve it in the admin or pass --approve",
                            )
                else:
                    pf_fields["overage_price"] = None
                if ok:
                    plan_features.append((fkey, pf_fields))
        plan_specs.append((key, fields, prices, plan_features))

    if len(defaults) > 1:
        errors.add("plans", f"only one plan can be the default, not {', '.join(defaults)}")
    listed = {spec[0] for spec in plan_specs}
    other_default = Plan.objects.filter(is_default=True).exclude(key__in=listed).first()
    if defaults and other_default:
        errors.add(
            f"plan {defaults[0]!r}",
            f"plan {other_default.key!r} is already the default; "
            "unset it or include it in the file with isDefault false",
        )
    stripe_ids = {p.pk: p.stripe_id for _, _, prices, _ in plan_specs for p in prices}
    for price_id, mapped_to in rules.mapped_plans(price_owner).items():
        wanted = price_owner[price_id]
        if mapped_to.key != wanted and mapped_to.key not in listed:
            errors.add(
                f"plan {wanted!r} price {stripe_ids[price_id]!r}",
                f"already mapped to plan {mapped_to.key!r}, which this file does not list",
            )
    for key, spec in feature_specs.items():
        if (
            spec.fields.get("kind") not in FeatureKind.values
            and not Feature.objects.filter(key=key).exists()
        ):
            errors.add(
                f"feature {key!r}",
                f"kind must be one of {', '.join(FeatureKind.values)}",
            )
    for key, _fields, _prices, pfs in plan_specs:
        for fkey, _ in pfs:
            if fkey not in feature_specs and not Feature.objects.filter(key=fkey).exists():
                errors.add(
                    f"plan {key!r} feature {fkey!r}",
                    "unknown feature; declare it under 'features' or give its 'kind'",
                )
    errors.raise_if_any()

    # Pass 2: write in one transaction; model validation errors roll everything back.
    counts = dict.fromkeys(
        (
            "features_created",
            "features_updated",
            "plans_created",
            "plans_updated",
            "plan_features_created",
            "plan_features_updated",
            "plan_features_removed",
            "prices_mapped",
            "prices_unmapped",
            "prices_approved",
            "addons_loaded",
            "topups_loaded",
        ),
        0,
    )
    for price in sections.unapproved:
        if approve:
            to_approve[price.pk] = price
        else:
            errors.add(f"price {price.stripe_id!r}", "not approved; review it or pass --approve")
    errors.raise_if_any()
    changed_plans: list[Plan] = []
    try:
        with transaction.atomic():
            if to_approve:
                counts["prices_approved"] = _review(to_approve.values(), ReviewState.APPROVED, user)
                for approved in to_approve.values():  # the rows plan features validate
                    approved.review_state = ReviewState.APPROVED
            features: dict[str, Feature] = {}
            for key, spec in feature_specs.items():
                existing = Feature.objects.filter(key=key).first()
                fields = {k: v for k, v in spec.fields.items() if v is not None}
                if existing is not None and set(spec.fields) == {"name", "kind"}:
                    # Declared inline by a plan entry: only the kind is authoritative.
                    fields = {"kind": fields["kind"]}
                feature, outcome = _save(
                    Feature, existing, {"key": key, **fields}, f"feature {key!r}", errors
                )
                if feature is not None:
                    features[key] = feature  # type: ignore[assignment]
                    if outcome != "unchanged":
                        counts[f"features_{outcome}"] += 1
            # The file may move the default between its plans: the one-default
            # constraint needs the old default unset before the new one is saved.
            Plan.objects.filter(is_default=True, key__in=listed).exclude(key__in=defaults).update(
                is_default=False
            )
            for key, fields, prices, pfs in plan_specs:
                existing_plan = Plan.objects.filter(key=key).first()
                plan, outcome = _save(
                    Plan, existing_plan, {"key": key, **fields}, f"plan {key!r}", errors
                )
                if plan is None:
                    continue
                assert isinstance(plan, Plan)
                if outcome != "unchanged":
                    counts[f"plans_{outcome}"] += 1
                features_changed = _load_plan_features(plan, pfs, features, counts, errors)
                _load_plan_prices(plan, prices, counts)
                # A plan whose features, default flag or active flag changed: its
                # customers (and those of the default plan) follow.
                if features_changed or outcome != "unchanged":
                    changed_plans.append(plan)
            save_sections(sections, errors, counts)
            errors.raise_if_any()
            if changed_plans:
                sync_plan_customers([plan.pk for plan in changed_plans])
            if dry_run:
                raise _DryRun
    except _DryRun:
        pass
    return LoadResult(**counts, dry_run=dry_run)


class _DryRun(Exception):
    """Raised to roll back a dry run."""


def _save(
    model: type[Model], existing: Model | None, fields: dict[str, Any], where: str, errors: _Errors
) -> tuple[Model | None, Outcome]:
    obj = existing or model()
    changed = [name for name, value in fields.items() if getattr(obj, name, None) != value]
    if existing is not None and not changed:
        return obj, "unchanged"
    for name in changed:
        setattr(obj, name, fields[name])
    try:
        obj.full_clean()
    except ValidationError as exc:
        errors.add(where, exc)
        return None, "unchanged"
    obj.save()
    return obj, "updated" if existing is not None else "created"


def _load_plan_features(
    plan: Plan,
    entries: list[tuple[str, dict[str, Any]]],
    features: dict[str, Feature],
    counts: dict[str, int],
    errors: _Errors,
) -> bool:
    changed = False
    current = {pf.feature.key: pf for pf in plan.plan_features.select_related("feature")}
    for fkey, fields in entries:
        feature = features.get(fkey) or Feature.objects.filter(key=fkey).first()
        if feature is None:
            continue  # its own error was reported
        existing = current.pop(fkey, None)
        _, outcome = _save(
            PlanFeature,
            existing,
            {"plan": plan, "feature": feature, **fields},
            f"plan {plan.key!r} feature {fkey!r}",
            errors,
        )
        if outcome != "unchanged":
            counts[f"plan_features_{outcome}"] += 1
            changed = True
    for stale in current.values():
        stale.delete()
        counts["plan_features_removed"] += 1
        changed = True
    return changed


def _load_plan_prices(plan: Plan, prices: list[CatalogPrice], counts: dict[str, int]) -> None:
    wanted = {p.pk for p in prices}
    removed, _ = PlanPrice.objects.filter(plan=plan).exclude(price_id__in=wanted).delete()
    counts["prices_unmapped"] += removed
    for price in prices:
        mapping = PlanPrice.objects.filter(price=price).first()
        if mapping is None:
            PlanPrice.objects.create(plan=plan, price=price)
            counts["prices_mapped"] += 1
        elif mapping.plan_id != plan.pk:
            # Moving between two plans of this file.
            mapping.plan = plan
            mapping.save(update_fields=["plan"])
            counts["prices_mapped"] += 1
