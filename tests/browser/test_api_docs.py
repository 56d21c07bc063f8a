"""Swagger UI renders offline: its files come from drf-spectacular-sidecar, not a CDN."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_swagger_ui_renders_the_billing_api_offline(
    demo_server: str, page: Any, screenshot: Any
) -> None:
    outside: list[str] = []
    page.on(
        "request",
        lambda request: (
            outside.append(request.url) if not request.url.startswith(demo_server) else None
        ),
    )

    page.goto(f"{demo_server}/api/docs/")
    page.wait_for_selector(".swagger-ui .info")
    screenshot(page, "swagger", full_page=False)
    paths = page.locator(".opblock-summary-path").all_inner_texts()

    assert "kernia-billing" in page.inner_text(".swagger-ui .info")
    assert outside == []
    assert any("/api/auth/billing/check" in p for p in paths), paths
