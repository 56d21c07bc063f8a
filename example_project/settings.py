"""Settings of the example project: a small SaaS billed through kernia_billing.

Runs offline by default: SQLite and the fake Stripe API shipped in
``kernia_billing.testing``. Environment variables:

- ``DATABASE_URL``: ``postgres://user@host:port/name`` selects PostgreSQL.
- ``STRIPE_SECRET_KEY``: a real ``sk_test_...`` key talks to Stripe instead of the fake
  (set ``STRIPE_API_BASE=https://api.stripe.com`` too).
- ``STRIPE_API_BASE``: where the Stripe SDK sends requests (default: the local fake).
- ``DJANGO_DEBUG=1``: Django's debug mode (off by default; ``scripts/demo`` turns it on
  for its localhost-only server). With DEBUG on, dj-stripe accepts webhooks signed
  with a secret the sender names (``X-Djstripe-Webhook-Secret``): never expose a
  DEBUG site (system check ``kernia_billing.W003``).
- ``DJANGO_ALLOWED_HOSTS``: comma-separated (default: local hosts only).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlparse

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-project-insecure-key-for-the-demo-only")
DEBUG = os.environ.get("DJANGO_DEBUG", "0") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,testserver").split(",")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI's files served locally: no CDN, works offline
    "djstripe",
    "kernia_billing",
    "example_project.accounts",
    "example_project.demo",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "example_project.urls"
WSGI_APPLICATION = "example_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "example_project" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]


def _prepare_threshold() -> int | None:
    value = os.environ.get("DATABASE_PREPARE_THRESHOLD", "5").strip().lower()
    return None if value in ("", "none") else int(value)


def _database_from_env() -> dict[str, object]:
    url = os.environ.get("DATABASE_URL", "")
    if url.startswith(("postgres://", "postgresql://")):
        parsed = urlparse(url)
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parsed.path.lstrip("/")) or "postgres",
            "USER": unquote(parsed.username or ""),
            "PASSWORD": unquote(parsed.password or ""),
            "HOST": parsed.hostname or "",
            "PORT": str(parsed.port or ""),
            # Persistent connections: worth several times the throughput on the hot path.
            "CONN_MAX_AGE": 600,
            "CONN_HEALTH_CHECKS": True,
            # The hot statements are planned once per connection (see
            # kernia_billing/services/prepared.py); "none" behind a transaction-mode pooler.
            "OPTIONS": {"prepare_threshold": _prepare_threshold()},
        }
    if url and not url.startswith("sqlite:"):
        raise ValueError(f"Unsupported DATABASE_URL: {url!r}")
    name = url.removeprefix("sqlite:///") if url else str(BASE_DIR / "db.sqlite3")
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": name,
        "OPTIONS": {
            # Concurrent writers queue for the write lock instead of failing with
            # "database is locked"; WAL lets readers run beside the writer.
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        },
        # Tests use an in-memory database unless SQLITE_TEST_NAME names a file; the
        # threaded concurrency tests need a file (CI sets one).
        "TEST": {"NAME": os.environ.get("SQLITE_TEST_NAME") or None},
    }


DATABASES = {"default": _database_from_env()}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS: list[dict[str, str]] = []
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/login/"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.TokenAuthentication",
    ],
    "EXCEPTION_HANDLER": "kernia_billing.api.exceptions.exception_handler",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "kernia-billing",
    "DESCRIPTION": "Entitlements on top of a Stripe catalog: check, track, plans, customers.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- Stripe / dj-stripe -------------------------------------------------------------
FAKE_STRIPE_PORT = int(os.environ.get("FAKE_STRIPE_PORT", "12111"))
STRIPE_API_BASE = os.environ.get("STRIPE_API_BASE", f"http://127.0.0.1:{FAKE_STRIPE_PORT}")
STRIPE_LIVE_MODE = False
# The fake accepts any well-formed test key; dj-stripe insists on this shape.
STRIPE_TEST_SECRET_KEY = os.environ.get(
    "STRIPE_SECRET_KEY", "sk_test_kerniaDemoFakeStripeKey000000000"
)
STRIPE_TEST_PUBLIC_KEY = os.environ.get("STRIPE_PUBLIC_KEY", "pk_test_kerniaDemoFakeStripeKey0000")
STRIPE_API_VERSION = os.environ.get("STRIPE_API_VERSION", "2026-05-27.dahlia")
DJSTRIPE_FOREIGN_KEY_TO_FIELD = "id"
DJSTRIPE_USE_NATIVE_JSONFIELD = True

KERNIA_BILLING = {
    "ORGANIZATION_MODEL": "accounts.Organization",
    "IS_ORGANIZATION_MEMBER": "example_project.accounts.billing.is_member",
    "PAST_DUE_GRACE": True,
    # The local fake by default; None (the SDK's own base) for real Stripe.
    "STRIPE_API_BASE": None if "api.stripe.com" in STRIPE_API_BASE else STRIPE_API_BASE,
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "WARNING")},
}
