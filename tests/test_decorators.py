"""requires_feature / track_usage decorators and the RequiresFeature DRF permission."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import AnonymousUser
from django.http import HttpResponse, JsonResponse
from django.test import RequestFactory, override_settings
from rest_framework.decorators import api_view
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.test import APIRequestFactory, force_authenticate
from rest_framework.views import APIView

from kernia_billing.api.permissions import RequiresFeature, request_owner
from kernia_billing.decorators import requires_feature, track_usage
from kernia_billing.models import Entitlement, UsageEvent
from kernia_billing.services.usage import check, track
from tests.api.entitlement_fixtures import *  # noqa: F403

pytestmark = pytest.mark.django_db


def get(user=None, **headers):
    request = RequestFactory().post("/action", **headers)
    request.user = user or AnonymousUser()
    return request


def error_of(response, status: int) -> dict:
    assert response.status_code == status
    assert response["Content-Type"].startswith("application/json")
    body = json.loads(response.content)
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "fields"}
    return body["error"]


def usage(owner, feature="messages") -> int:
    return check(owner, feature).usage


class Calls:
    """A view that records that it ran and answers ``status``."""

    def __init__(self, status: int = 200, raises: Exception | None = None):
        self.count = 0
        self.status = status
        self.raises = raises

    def __call__(self, request, *args, **kwargs):
        self.count += 1
        if self.raises is not None:
            raise self.raises
        return HttpResponse("done", status=self.status)


# --- requires_feature --------------------------------------------------------------------


def test_requires_feature_runs_the_view_when_allowed(plan, user):
    view = Calls()
    response = requires_feature("messages")(view)(get(user))

    assert response.status_code == 200 and view.count == 1
    assert UsageEvent.objects.count() == 0  # a check, never a track


def test_requires_feature_denied_is_402_and_the_view_does_not_run(plan, user):
    view = Calls()

    not_included = requires_feature("exports")(view)(get(user))
    too_much = requires_feature("messages", required=10001)(view)(get(user))

    assert error_of(not_included, 402)["code"] == "not_included"
    error = error_of(too_much, 402)
    assert error["code"] == "insufficient_balance"
    assert error["fields"]["balance"] == 10000
    assert view.count == 0


def test_requires_feature_without_a_plan_is_402_no_plan(messages, user):
    assert error_of(requires_feature("messages")(Calls())(get(user)), 402)["code"] == "no_plan"


def test_requires_feature_anonymous_is_401(plan):
    view = Calls()
    error = error_of(requires_feature("messages")(view)(get()), 401)
    assert error["code"] == "not_authenticated"
    assert view.count == 0


def test_requires_feature_unknown_feature_is_404(plan, user):
    error = error_of(requires_feature("typo")(Calls())(get(user)), 404)
    assert error["code"] == "unknown_feature"


def test_requires_feature_for_an_organization(plan, user, org):
    track(org, "messages", 10000)
    view = Calls()
    for_org = requires_feature("messages", owner=lambda request: org)(view)
    for_user = requires_feature("messages")(view)

    assert error_of(for_org(get(user)), 402)["code"] == "insufficient_balance"
    assert for_user(get(user)).status_code == 200


def test_requires_feature_owner_none_is_403(plan, user):
    response = requires_feature("messages", owner=lambda request: None)(Calls())(get(user))
    assert error_of(response, 403)["code"] == "permission_denied"


def test_on_denied_lets_html_views_answer_their_own_way(plan, user):
    def upgrade_page(request, result):
        return HttpResponse(f"Upgrade to get {result.feature} ({result.reason})", status=402)

    response = requires_feature("exports", on_denied=upgrade_page)(Calls())(get(user))

    assert response.status_code == 402
    assert response.content == b"Upgrade to get exports (not_included)"


def test_an_anonymous_browser_is_sent_to_the_login_page(plan, settings):
    settings.LOGIN_URL = "/login/"
    for decorator in (requires_feature("sso"), track_usage("messages")):
        view = decorator(Calls())
        page = view(get(HTTP_ACCEPT="text/html,application/xhtml+xml,*/*;q=0.8"))
        assert page.status_code == 302
        assert page["Location"] == "/login/?next=/action"
        api = view(get(HTTP_ACCEPT="application/json"))
        assert api.status_code == 401
        assert error_of(api, 401)["code"] == "not_authenticated"


# --- track_usage -------------------------------------------------------------------------


def test_track_usage_tracks_after_a_2xx(plan, user):
    view = track_usage("messages", amount=2)(Calls(status=201))

    assert view(get(user)).status_code == 201
    assert view(get(user)).status_code == 201
    assert usage(user) == 4
    assert UsageEvent.objects.count() == 2


@pytest.mark.parametrize("status", [302, 400, 404, 500])
def test_track_usage_does_not_track_failures(plan, user, status):
    response = track_usage("messages")(Calls(status=status))(get(user))

    assert response.status_code == status
    assert usage(user) == 0


def test_track_usage_with_track_redirects_counts_a_post_redirect_get_once_per_key(plan, user):
    view = track_usage(
        "messages",
        idempotency_key=lambda request: request.headers.get("X-Form-Token"),
        track_redirects=True,
    )(Calls(status=302))

    assert view(get(user, HTTP_X_FORM_TOKEN="abc")).status_code == 302
    assert view(get(user, HTTP_X_FORM_TOKEN="abc")).status_code == 302
    assert usage(user) == 1
    assert UsageEvent.objects.get().idempotency_key == "abc"
    failed = track_usage("messages", track_redirects=True)(Calls(status=404))(get(user))
    assert failed.status_code == 404
    assert usage(user) == 1


def test_track_usage_does_not_track_a_view_that_raises(plan, user):
    view = track_usage("messages")(Calls(raises=RuntimeError("boom")))
    with pytest.raises(RuntimeError):
        view(get(user))
    assert usage(user) == 0


@override_settings(
    KERNIA_BILLING={
        "ORGANIZATION_MODEL": "accounts.Organization",
        "IS_ORGANIZATION_MEMBER": "example_project.accounts.billing.is_member",
        "BILL_FAILED_ATTEMPTS": True,
    }
)
def test_bill_failed_attempts_counts_failures_too(plan, user):
    track_usage("messages")(Calls(status=400))(get(user))
    track_usage("messages")(Calls(status=500))(get(user))
    with pytest.raises(RuntimeError):
        track_usage("messages")(Calls(raises=RuntimeError("boom")))(get(user))

    assert usage(user) == 3


def test_track_usage_refuses_before_the_view_when_the_balance_is_spent(plan, user):
    track(user, "messages", 10000)
    view = Calls()

    response = track_usage("messages")(view)(get(user))

    assert error_of(response, 402)["code"] == "insufficient_balance"
    assert view.count == 0
    assert usage(user) == 10000


def test_track_usage_idempotency_key_header_counts_a_retry_once(plan, user):
    view = track_usage("messages")(Calls())

    view(get(user, HTTP_IDEMPOTENCY_KEY="send-42"))
    view(get(user, HTTP_IDEMPOTENCY_KEY="send-42"))
    view(get(user, HTTP_IDEMPOTENCY_KEY="send-43"))

    assert usage(user) == 2
    assert set(UsageEvent.objects.values_list("idempotency_key", flat=True)) == {
        "send-42",
        "send-43",
    }


def test_track_usage_over_long_idempotency_key_is_400_before_the_view(plan, user):
    view = Calls()
    response = track_usage("messages")(view)(get(user, HTTP_IDEMPOTENCY_KEY="k" * 256))

    assert error_of(response, 400)["code"] == "invalid_request"
    assert view.count == 0


def test_track_usage_amount_from_the_request_and_seats_going_down(plan, user):
    add = track_usage("members", amount=lambda request: int(request.GET["n"]))(Calls())
    remove = track_usage("members", amount=-1)(Calls())

    def call(view, n=""):
        request = RequestFactory().post(f"/members?n={n}")
        request.user = user
        return view(request)

    call(add, 3)
    call(remove)

    assert usage(user, "members") == 2
    # Adding past the 5 seats is refused before the view runs.
    assert error_of(call(add, 4), 402)["code"] == "insufficient_balance"


def test_track_usage_for_an_organization(plan, user, org):
    view = track_usage("messages", owner=lambda request: org)(Calls())
    view(get(user))

    assert usage(org) == 1
    assert usage(user) == 0


def test_a_track_refused_after_a_successful_view_keeps_the_response(plan, user):
    """The check passed, then the balance was spent before the track: the action
    already happened, so the response stands and nothing is over-counted."""

    def spends_everything(request):
        track(user, "messages", 10000)
        return HttpResponse("sent")

    response = track_usage("messages")(spends_everything)(get(user))

    assert response.status_code == 200
    assert Entitlement.objects.get(feature__key="messages").usage == 10000


# --- DRF: decorators under @api_view, and the permission class ---------------------------


def drf_post(user=None, data=None, path="/drf"):
    request = APIRequestFactory().post(path, data or {}, format="json")
    if user is not None:
        force_authenticate(request, user=user)
    return request


def test_decorators_under_api_view_use_drf_authentication_and_error_handler(plan, user):
    @api_view(["POST"])
    @track_usage("messages", amount=3)
    def send(request):
        return Response({"sent": True}, status=201)

    ok = send(drf_post(user))
    assert ok.status_code == 201
    assert usage(user) == 3

    denied = send(drf_post(None))
    assert denied.status_code in (401, 403)
    assert denied.data["error"]["code"] == "not_authenticated"

    track(user, "messages", 9997)
    spent = send(drf_post(user))
    assert spent.status_code == 402
    assert spent.data["error"]["code"] == "insufficient_balance"


def test_drf_view_4xx_is_not_tracked(plan, user):
    @api_view(["POST"])
    @track_usage("messages")
    def fails(request):
        return Response({"error": "nope"}, status=422)

    assert fails(drf_post(user)).status_code == 422
    assert usage(user) == 0


class Exports(APIView):
    permission_classes = [IsAuthenticated, RequiresFeature("exports")]

    def post(self, request):
        return Response({"ok": True})


class Messages(APIView):
    permission_classes = [RequiresFeature("messages", required=2, owner=request_owner)]

    def post(self, request):
        return JsonResponse({"ok": True})


def test_requires_feature_permission_denies_with_402(plan, user):
    response = Exports.as_view()(drf_post(user))

    assert response.status_code == 402
    assert response.data["error"]["code"] == "not_included"


def test_requires_feature_permission_allows(plan, user, org):
    assert Messages.as_view()(drf_post(user)).status_code == 200
    track(org, "messages", 9999)

    denied = Messages.as_view()(drf_post(user, {"organizationId": org.pk}))

    assert denied.status_code == 402
    assert denied.data["error"]["code"] == "insufficient_balance"


def test_requires_feature_permission_anonymous_and_non_member(plan, org):
    from tests.factories import UserFactory

    assert Messages.as_view()(drf_post(None)).status_code in (401, 403)
    stranger = Messages.as_view()(drf_post(UserFactory(), {"organizationId": org.pk}))
    assert stranger.status_code == 403
    assert stranger.data["error"]["code"] == "permission_denied"
