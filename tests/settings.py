"""Test settings: the example project's, with a fast password hasher.

PBKDF2 costs ~0.3 s per hash on purpose; factories hash a password for every user.
"""

from example_project.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# Tests point the SDK at the fake through the ``fake_stripe`` fixture, per test.
KERNIA_BILLING = {k: v for k, v in KERNIA_BILLING.items() if k != "STRIPE_API_BASE"}  # noqa: F405

if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":  # noqa: F405
    # A test database needs no durability across a server crash, so commits do not wait
    # for the disk (a killed client process still loses nothing committed).
    DATABASES["default"]["OPTIONS"]["options"] = "-c synchronous_commit=off"  # noqa: F405
