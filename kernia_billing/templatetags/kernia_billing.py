"""Ask for a feature or a balance from a template, like waffle's ``{% flag %}``.

    {% load kernia_billing %}
    {% feature "sso" %}<a href="/sso/">Single sign-on</a>{% else %}Upgrade for SSO{% endfeature %}
    {% balance "messages" as left %}You have {{ left }} messages left.
    {% feature "exports" for organization %}...{% endfeature %}

The owner is ``request.user`` unless ``for <owner>`` names one; an anonymous user has
no feature and no balance. The answers are :func:`kernia_billing.check`'s (no usage is
recorded), cached for the request.
"""

from __future__ import annotations

from typing import Any

from django import template
from django.template.base import FilterExpression, NodeList, Parser, Token

from ..context_processors import BillingLookup, lookup_for

register = template.Library()


def _lookup(context: template.Context, owner: Any = None) -> BillingLookup:
    if owner is not None:
        return BillingLookup(owner)
    request = context.get("request")
    if request is not None:
        return lookup_for(request)
    return BillingLookup(context.get("user"))


class FeatureNode(template.Node):
    def __init__(
        self,
        feature: FilterExpression,
        owner: FilterExpression | None,
        allowed: NodeList,
        denied: NodeList,
    ):
        self.feature, self.owner, self.allowed, self.denied = feature, owner, allowed, denied

    def render(self, context: template.Context) -> str:
        owner = self.owner.resolve(context) if self.owner is not None else None
        result = _lookup(context, owner).check(str(self.feature.resolve(context)))
        branch = self.allowed if result is not None and result.allowed else self.denied
        return branch.render(context)


@register.tag
def feature(parser: Parser, token: Token) -> FeatureNode:
    """``{% feature "key" [for owner] %}...[{% else %}...]{% endfeature %}``."""
    bits = token.split_contents()
    if len(bits) not in (2, 4) or (len(bits) == 4 and bits[2] != "for"):
        raise template.TemplateSyntaxError(
            f'Usage: {{% {bits[0]} "feature" [for owner] %}}...{{% end{bits[0]} %}}'
        )
    owner = parser.compile_filter(bits[3]) if len(bits) == 4 else None
    allowed = parser.parse(("else", "endfeature"))
    denied = NodeList()
    if parser.next_token().contents == "else":
        denied = parser.parse(("endfeature",))
        parser.delete_first_token()
    return FeatureNode(parser.compile_filter(bits[1]), owner, allowed, denied)


@register.simple_tag(takes_context=True)
def balance(context: template.Context, feature: str, owner: Any = None) -> int | str | None:
    """``{% balance "messages" as left %}``: the balance, ``"unlimited"``, or None."""
    result = _lookup(context, owner).check(feature)
    if result is None or result.kind is None:
        return None
    if result.unlimited:
        return "unlimited"
    return result.balance
