"""Who may act for which billing owner: the permission matrix of SPEC §4."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.test import override_settings
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from example_project.accounts.models import Organization
from kernia_billing.models import BillingCustomer, UsageEvent
from kernia_billing.services.customers import get_or_create_customer
from tests.api.entitlement_fixtures import *  # noqa: F403
from tests.api.test_entitlements_api import CHECK, TRACK, USAGE, assert_error
from tests.factories import OrganizationFactory, StaffFactory, UserFactory

pytestmark = pytest.mark.django_db


def client_for(user) -> APIClient:
    client = APIClient()
    client.force_login(user)  # session authentication
    return client


def owner_of(event_id: int):
    return UsageEvent.objects.select_related("customer").get(pk=event_id).customer.owner


@pytest.fixture
def stranger(db):
    return UserFactory()


@pytest.fixture
def manager(db):
    """Staff, not superuser, granted the app's manage permission."""
    staff = UserFactory(is_staff=True)
    staff.user_permissions.add(
        Permission.objects.get(codename="manage_billing", content_type__app_label="kernia_billing")
    )
    return staff


@pytest.fixture
def plain_staff(db):
    """Staff without the manage permission."""
    return UserFactory(is_staff=True)


# --- unauthenticated ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "data"),
    [
        ("post", CHECK, {"feature": "messages"}),
        ("post", TRACK, {"feature": "messages"}),
        ("get", USAGE, {}),
    ],
)
def test_anonymous_callers_get_no_data(anon, plan, method, path, data):
    kwargs = {"format": "json"} if method == "post" else {}
    response = getattr(anon, method)(path, data, **kwargs)

    # Token authentication offers a challenge, so 401 even though session comes first.
    assert_error(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"] == "Token"
    assert BillingCustomer.objects.count() == 0


def test_a_bad_token_is_401(anon, plan):
    anon.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")

    response = anon.post(CHECK, {"feature": "messages"}, format="json")

    assert_error(response, 401, "authentication_failed")
    assert response["WWW-Authenticate"] == "Token"


def test_token_of_an_inactive_user_is_401(plan, user):
    token = Token.objects.create(user=user)
    user.is_active = False
    user.save()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")

    assert_error(client.post(CHECK, {"feature": "messages"}, format="json"), 401)


# --- signed-in user ----------------------------------------------------------------------


def test_token_and_session_both_act_for_the_signed_in_user(api, plan, user):
    by_token = api.post(TRACK, {"feature": "messages"}, format="json").json()["eventId"]
    by_session = (
        client_for(user).post(TRACK, {"feature": "messages"}, format="json").json()["eventId"]
    )

    assert owner_of(by_token) == user
    assert owner_of(by_session) == user


def test_session_posts_need_csrf_when_the_client_enforces_it(plan, user):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)

    assert_error(client.post(CHECK, {"feature": "messages"}, format="json"), 403)


# --- organizations -----------------------------------------------------------------------


def test_a_member_acts_for_the_organization(api, plan, user, org):
    response = api.post(TRACK, {"feature": "messages", "organizationId": org.pk}, format="json")

    assert response.status_code == 201
    assert owner_of(response.json()["eventId"]) == org
    # Separate balances: the user's own customer is untouched.
    mine = api.post(CHECK, {"feature": "messages"}, format="json").json()
    theirs = api.post(CHECK, {"feature": "messages", "organizationId": org.pk}, format="json")
    assert mine["usage"] == 0
    assert theirs.json()["usage"] == 1


def test_a_member_reads_the_organizations_usage(api, plan, org):
    event = api.post(
        TRACK, {"feature": "messages", "organizationId": str(org.pk)}, format="json"
    ).json()["eventId"]

    org_usage = api.get(USAGE, {"organizationId": org.pk}).json()
    own_usage = api.get(USAGE).json()

    assert [e["id"] for e in org_usage["results"]] == [event]
    assert own_usage["results"] == []


@pytest.mark.parametrize(("method", "path"), [("post", CHECK), ("post", TRACK), ("get", USAGE)])
def test_a_non_member_gets_403_and_no_data(plan, org, stranger, method, path):
    client = client_for(stranger)
    data = {"feature": "messages", "organizationId": org.pk}
    if method == "get":
        data.pop("feature")
    kwargs = {"format": "json"} if method == "post" else {}

    response = getattr(client, method)(path, data, **kwargs)

    assert_error(response, 403, "permission_denied")
    assert not BillingCustomer.objects.filter(owner_id=str(org.pk)).exists()
    assert UsageEvent.objects.count() == 0


def test_an_unknown_organization_looks_like_a_foreign_one_to_members(api, plan, org):
    missing = Organization.objects.order_by("-pk").first().pk + 1
    foreign = OrganizationFactory()

    unknown = assert_error(
        api.post(CHECK, {"feature": "messages", "organizationId": missing}, format="json"), 403
    )
    other = assert_error(
        api.post(CHECK, {"feature": "messages", "organizationId": foreign.pk}, format="json"), 403
    )

    assert unknown == other  # nothing tells which organization ids exist


def test_an_unknown_organization_is_404_for_managers(plan, org, manager):
    missing = Organization.objects.order_by("-pk").first().pk + 1

    error = assert_error(
        client_for(manager).post(
            CHECK, {"feature": "messages", "organizationId": missing}, format="json"
        ),
        404,
    )

    assert error["code"] == "unknown_owner"
    assert error["fields"] == {"organizationId": str(missing)}


@pytest.mark.parametrize("bad", ["abc", "", " ", "1.5", "-", "0x10"])
def test_a_malformed_organization_id_in_the_query_is_400_or_ignored(api, plan, org, bad):
    response = api.get(USAGE, {"organizationId": bad})

    if bad == "":
        # Blank means "not given": the caller's own usage.
        assert response.status_code == 200
    else:
        assert_error(response, 400, "invalid_request")


@override_settings(KERNIA_BILLING={"ORGANIZATION_MODEL": None})
def test_organization_id_when_the_project_has_no_organizations_is_400(api, plan, org):
    error = assert_error(
        api.post(CHECK, {"feature": "messages", "organizationId": org.pk}, format="json"), 400
    )
    assert "organizationId" in error["fields"]


@override_settings(KERNIA_BILLING={"ORGANIZATION_MODEL": "accounts.Organization"})
def test_without_a_membership_callback_nobody_is_a_member(api, plan, org):
    assert_error(
        api.post(CHECK, {"feature": "messages", "organizationId": org.pk}, format="json"),
        403,
        "permission_denied",
    )


def test_naming_two_owners_is_400(api, plan, org, user):
    error = assert_error(
        api.post(
            CHECK,
            {"feature": "messages", "organizationId": org.pk, "userId": user.pk},
            format="json",
        ),
        400,
        "invalid_request",
    )
    assert set(error["fields"]) == {"organizationId", "userId"}


# --- other customers: staff with the manage permission only -----------------------------


@pytest.mark.parametrize("field", ["userId", "customerId"])
def test_users_cannot_name_other_customers_even_unknown_ones(api, plan, stranger, field):
    customer = get_or_create_customer(stranger)
    known = stranger.pk if field == "userId" else customer.pk

    for value in (known, 999_999):
        response = api.post(CHECK, {"feature": "messages", field: value}, format="json")
        assert_error(response, 403, "permission_denied")
    assert_error(api.get(USAGE, {field: known}), 403, "permission_denied")


@pytest.mark.parametrize("field", ["userId", "customerId"])
def test_staff_without_the_permission_cannot_name_customers(plan, plain_staff, stranger, field):
    customer = get_or_create_customer(stranger)
    value = stranger.pk if field == "userId" else customer.pk

    response = client_for(plain_staff).post(
        TRACK, {"feature": "messages", field: value}, format="json"
    )

    assert_error(response, 403, "permission_denied")
    assert UsageEvent.objects.count() == 0


def test_staff_without_the_permission_cannot_use_other_organizations(plan, plain_staff, org):
    response = client_for(plain_staff).post(
        CHECK, {"feature": "messages", "organizationId": org.pk}, format="json"
    )
    assert_error(response, 403, "permission_denied")


@pytest.mark.parametrize("who", ["manager", "superuser"])
def test_managers_may_name_any_customer(plan, org, stranger, manager, who):
    client = client_for(manager if who == "manager" else StaffFactory())
    customer = get_or_create_customer(stranger)

    by_user = client.post(TRACK, {"feature": "messages", "userId": stranger.pk}, format="json")
    by_customer = client.post(
        TRACK, {"feature": "messages", "customerId": customer.pk}, format="json"
    )
    by_org = client.post(TRACK, {"feature": "messages", "organizationId": org.pk}, format="json")

    assert owner_of(by_user.json()["eventId"]) == stranger
    assert owner_of(by_customer.json()["eventId"]) == stranger
    assert owner_of(by_org.json()["eventId"]) == org
    usage = client.get(USAGE, {"customerId": customer.pk}).json()
    assert usage["count"] == 2
    check = client.post(CHECK, {"feature": "messages", "userId": stranger.pk}, format="json")
    assert check.json()["usage"] == 2


def test_managers_get_404_for_unknown_and_400_for_malformed_ids(plan, manager):
    client = client_for(manager)

    assert_error(
        client.post(CHECK, {"feature": "messages", "customerId": 424242}, format="json"),
        404,
        "unknown_customer",
    )
    assert_error(
        client.post(CHECK, {"feature": "messages", "userId": 424242}, format="json"),
        404,
        "unknown_owner",
    )
    assert_error(client.get(USAGE, {"customerId": "12abc"}), 400, "invalid_request")
    assert_error(
        client.post(CHECK, {"feature": "messages", "customerId": 2**70}, format="json"),
        400,
        "invalid_request",
    )


def test_a_superuser_who_is_not_staff_counts_as_manager(plan, stranger):
    # Superusers hold every permission; the manage permission is what matters.
    superuser = UserFactory(is_superuser=True, is_staff=False)
    response = client_for(superuser).post(
        CHECK, {"feature": "messages", "userId": stranger.pk}, format="json"
    )
    assert response.status_code == 200


def test_resolve_owner_is_reusable_outside_the_entitlement_views(rf, user, org, stranger):
    from rest_framework.request import Request

    from kernia_billing.api.owners import resolve_owner

    request = Request(rf.get("/"))
    request.user = user

    assert resolve_owner(request, {}) == user
    assert resolve_owner(request, {"organizationId": str(org.pk)}) == org
    other = OrganizationFactory()
    with pytest.raises(Exception) as denied:
        resolve_owner(request, {"organizationId": other.pk})
    assert getattr(denied.value, "status_code", None) == 403
