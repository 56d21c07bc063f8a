"""The example project's answer to kernia_billing's organization-membership callback."""

from __future__ import annotations

from typing import Any

from .models import Membership


def is_member(user: Any, organization: Any) -> bool:
    return bool(
        user.is_authenticated
        and Membership.objects.filter(user=user, organization=organization).exists()
    )
