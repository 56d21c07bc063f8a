"""The usage chart in a real browser: y-axis labels fit, and a phone can read it."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

import kernia_billing
from kernia_billing.models import PlanFeature
from kernia_billing.services.entitlements.sync import sync_plan_customers

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

#: Every axis label of the visible chart: where it is drawn (SVG units) and how tall
#: it is on screen (CSS px).
AXIS_LABELS = """
() => {
  const svg = [...document.querySelectorAll('svg.chart')]
    .find(s => s.getBoundingClientRect().width > 0);
  return [...svg.querySelectorAll('text.axis')].map(t => {
    const box = t.getBBox();
    return {text: t.textContent, x: box.x, right: box.x + box.width, y: Math.round(box.y),
            width: svg.viewBox.baseVal.width, px: t.getBoundingClientRect().height};
  });
}
"""


class _Null:
    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass


@pytest.fixture
def heavy_user(demo_server: str, stripe_settings: Any, fake_stripe: Any) -> str:
    """alice on a Free plan of a million messages, 80,000 of them sent today."""
    call_command("demo_setup", base_url=demo_server, no_webhook=True, stdout=_Null())
    free = PlanFeature.objects.select_related("plan").get(
        plan__is_default=True, feature__key="messages"
    )
    PlanFeature.objects.filter(pk=free.pk).update(included=1_000_000)
    sync_plan_customers([free.plan_id])
    kernia_billing.track(get_user_model().objects.get(username="alice"), "messages", 80_000)
    return demo_server


@pytest.mark.parametrize("width", [1280, 390])
def test_axis_labels_fit_and_are_readable(
    heavy_user: str, chromium_browser: Any, screenshot: Any, monkeypatch: Any, width: int
) -> None:
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    context = chromium_browser.new_context(viewport={"width": width, "height": 900})
    page = context.new_page()
    try:
        page.goto(f"{heavy_user}/login/")
        page.fill("input[name=username]", "alice")
        page.fill("input[name=password]", "alice")
        page.click("button[type=submit]")
        page.wait_for_url(f"{heavy_user}/")
        page.goto(f"{heavy_user}/usage/")
        labels = page.evaluate(AXIS_LABELS)
        screenshot(page, f"chart-{width}")
    finally:
        context.close()

    texts = [label["text"] for label in labels]
    assert "80,000" in texts
    for label in labels:
        assert label["x"] >= 0, f"{label['text']!r} is clipped on the left"
        assert label["right"] <= label["width"], f"{label['text']!r} is clipped on the right"
        assert label["px"] >= 10, f"{label['text']!r} is {label['px']:.1f}px tall at {width}px"
    # Day labels on one line do not run into each other.
    days = sorted(
        (lb for lb in labels if lb["y"] == max(lb["y"] for lb in labels)), key=lambda lb: lb["x"]
    )
    for left, right in itertools.pairwise(days):
        assert left["right"] < right["x"], f"{left['text']!r} runs into {right['text']!r}"
