"""``{% load kernia_billing %}`` and the ``billing`` context processor."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import AnonymousUser
from django.template import Context, RequestContext, Template
from django.test import RequestFactory

import kernia_billing
from kernia_billing.context_processors import billing
from tests.api.entitlement_fixtures import *  # noqa: F403

pytestmark = pytest.mark.django_db

GATED = (
    "{% load kernia_billing %}"
    '{% feature "sso" %}SSO on{% else %}SSO off{% endfeature %} '
    '{% feature "exports" %}exports on{% else %}exports off{% endfeature %} '
    '{% feature "nonsense" %}on{% else %}unknown off{% endfeature %} '
    '{% balance "messages" as left %}{{ left }} left'
)


def request_for(user):
    request = RequestFactory().get("/")
    request.user = user
    return request


def test_feature_and_balance_tags_answer_for_the_signed_in_user(plan, user):
    kernia_billing.track(user, "messages", 25)

    page = Template(GATED).render(Context({"request": request_for(user)}))

    assert page == "SSO on exports off unknown off 9975 left"
    assert kernia_billing.check(user, "messages").usage == 25  # asking recorded nothing


def test_an_anonymous_visitor_has_no_feature_and_no_balance(plan):
    page = Template(GATED).render(Context({"request": request_for(AnonymousUser())}))
    assert page == "SSO off exports off unknown off None left"


def test_feature_for_another_owner(plan, user, org):
    template = Template(
        '{% load kernia_billing %}{% feature "sso" for org %}yes{% else %}no{% endfeature %}'
    )
    assert template.render(Context({"org": org})) == "yes"


def test_the_context_processor_checks_lazily_and_once_per_feature(
    plan, user, django_assert_max_num_queries
):
    request = request_for(user)
    template = Template(
        "{% if billing.allowed.sso %}SSO{% endif %} "
        "{{ billing.balance.messages }} {{ billing.balance.messages }} "
        "{% if not billing.allowed.exports %}no exports{% endif %}"
    )
    context = RequestContext(request, {}, [billing])
    assert template.render(context) == "SSO 10000 10000 no exports"
    with django_assert_max_num_queries(0):  # already answered for this request
        assert template.render(RequestContext(request, {}, [billing])).startswith("SSO 10000")


def test_a_bad_feature_tag_is_a_template_syntax_error():
    from django.template import TemplateSyntaxError

    with pytest.raises(TemplateSyntaxError):
        Template('{% load kernia_billing %}{% feature "a" "b" %}{% endfeature %}')
