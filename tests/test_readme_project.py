"""A new Django project built from the README alone works end to end.

``django-admin startproject`` in a temporary directory with this environment's
Python, the README's settings and urls snippets appended as they are, then the
README's commands against the fake Stripe: check, migrate, sync, the starter catalog,
webhook registration, and check/track from Python and over REST.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kernia_billing.testing.pytest_plugin import FAKE_STRIPE_API_KEY
from tests.catalog_support import seed_example_stripe

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]

CALLS = """
import json
from django.contrib.auth import get_user_model
from django.test import Client
import kernia_billing

user = get_user_model().objects.create_user("newcomer", "new@example.com", "pw")
before = kernia_billing.check(user, "messages")
tracked = kernia_billing.track(user, "messages", 1, idempotency_key="first")
client = Client(HTTP_HOST="localhost")
client.force_login(user)
rest = client.post(
    "/api/auth/billing/check", {"feature": "messages"}, content_type="application/json"
)
schema = client.get("/api/schema/", {"format": "json"})
plans = client.get("/api/auth/billing/plans")
print(json.dumps({
    "plan": before.plan, "allowed": before.allowed, "balance": before.balance,
    "tracked": tracked.balance, "rest": rest.status_code, "rest_balance": rest.json()["balance"],
    "schema": schema.status_code, "paths": sorted(json.loads(schema.content)["paths"]),
    "plans": [p["key"] for p in plans.json()["plans"]],
}))
"""


def readme_snippet(name: str) -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(
        rf"<!-- readme-test: {re.escape(name)} -->\s*```python\n(.*?)```", readme, re.S
    )
    assert found, f"README has no {name} snippet"
    return found.group(1)


def test_a_project_built_from_the_readme_works(tmp_path: Path, fake_stripe: Any) -> None:
    seed_example_stripe(fake_stripe)
    fake_stripe.webhook_delivery = False
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DJANGO_SETTINGS_MODULE", "DATABASE_URL", "SQLITE_TEST_NAME"}
    }
    env.update(
        STRIPE_SECRET_KEY=FAKE_STRIPE_API_KEY,
        STRIPE_API_BASE=fake_stripe.url,
        PYTHONDONTWRITEBYTECODE="1",
    )

    def run(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, f"{args}\n{done.stdout}\n{done.stderr}"
        return done.stdout

    run("-m", "django", "startproject", "mysite", ".")
    for name in ("settings.py", "urls.py"):
        with (tmp_path / "mysite" / name).open("a", encoding="utf-8") as module:
            module.write("\n" + readme_snippet(name))

    run("manage.py", "check", "--fail-level", "WARNING")
    run("manage.py", "migrate", "--no-input", "-v", "0")
    run("manage.py", "kernia_sync_catalog", "-v", "0")
    run("manage.py", "kernia_init_catalog", "catalog.json")
    assert "Catalog loaded." in run("manage.py", "kernia_load_catalog", "catalog.json", "--approve")
    registered = run("manage.py", "kernia_register_webhook", "--url", "https://newcomer.example")
    assert "Stripe posts to: https://newcomer.example/stripe/webhook/" in registered
    answer = json.loads(run("manage.py", "shell", "-c", CALLS).strip().splitlines()[-1])

    assert answer["plan"] == "free" and answer["allowed"] is True
    assert (answer["balance"], answer["tracked"]) == (100, 99)
    assert (answer["rest"], answer["rest_balance"]) == (200, 99)
    assert answer["schema"] == 200 and "/api/auth/billing/check" in answer["paths"]
    assert answer["plans"] == ["free", "pro"]
