"""factory-boy factories for the package's models and the example project's."""

from __future__ import annotations

import factory
from django.contrib.auth import get_user_model

from example_project.accounts.models import Membership, Organization
from kernia_billing.models import (
    CatalogPrice,
    CatalogProduct,
    Feature,
    FeatureKind,
    Plan,
    PlanFeature,
    PlanPrice,
    ResetPeriod,
    ReviewState,
)


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda o: f"{o.username}@example.com")
    password = factory.django.Password("password")


class StaffFactory(UserFactory):
    is_staff = True
    is_superuser = True


class OrganizationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Organization

    name = factory.Sequence(lambda n: f"Org {n}")
    slug = factory.Sequence(lambda n: f"org-{n}")


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    organization = factory.SubFactory(OrganizationFactory)
    user = factory.SubFactory(UserFactory)


class FeatureFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Feature
        django_get_or_create = ("key",)

    key = factory.Sequence(lambda n: f"feature-{n}")
    name = factory.LazyAttribute(lambda o: o.key.replace("-", " ").title())
    kind = FeatureKind.METERED


class PlanFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Plan
        django_get_or_create = ("key",)

    key = factory.Sequence(lambda n: f"plan-{n}")
    name = factory.LazyAttribute(lambda o: o.key.title())


class PlanFeatureFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = PlanFeature

    plan = factory.SubFactory(PlanFactory)
    feature = factory.SubFactory(FeatureFactory)
    included = 100
    reset_period = ResetPeriod.MONTH


class CatalogProductFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = CatalogProduct

    stripe_id = factory.Sequence(lambda n: f"prod_test{n:06d}")
    name = factory.Sequence(lambda n: f"Product {n}")


class CatalogPriceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = CatalogPrice

    stripe_id = factory.Sequence(lambda n: f"price_test{n:06d}")
    product = factory.SubFactory(CatalogProductFactory)
    stripe_product_id = factory.LazyAttribute(lambda o: o.product.stripe_id)
    currency = "usd"
    unit_amount = 1200
    recurring_interval = "month"
    price_type = "recurring"
    review_state = ReviewState.APPROVED


class PlanPriceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = PlanPrice

    plan = factory.SubFactory(PlanFactory)
    price = factory.SubFactory(CatalogPriceFactory)
