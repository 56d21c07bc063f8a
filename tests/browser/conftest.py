"""Playwright (Python) driving Debian's Chromium against pytest-django's live server.

The tests skip, with the reason, when Playwright or ``/usr/bin/chromium`` is missing;
CI installs both (``scripts/test``). Screenshots go to ``artifacts/screenshots/``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"


@pytest.fixture
def chromium_browser() -> Iterator[Any]:
    """Chromium for one test. Not session-scoped: Playwright's sync API runs an asyncio
    loop on the main thread while it is started, and Django refuses ORM calls there, so
    other tests of the session must not run under it."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="Playwright is not installed (pip install playwright)"
    )
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(chromium_browser: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A fresh browser context (no cookies) and page, 1280x900."""
    # Playwright's sync API keeps an asyncio loop on this thread; the ORM calls the test
    # makes between page actions are ordinary synchronous calls, so allow them.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    context = chromium_browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    page = context.new_page()
    try:
        yield page
    finally:
        context.close()


@pytest.fixture
def screenshot(request: pytest.FixtureRequest) -> Any:
    """``screenshot(page, "step")`` saves artifacts/screenshots/<test>-<nn>-<step>.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    counter = iter(range(1, 100))

    def take(page: Any, step: str, *, full_page: bool = True) -> Path:
        path = SCREENSHOTS / f"{request.node.name}-{next(counter):02d}-{step}.png"
        page.screenshot(path=str(path), full_page=full_page)
        return path

    return take


@pytest.fixture
def demo_server(transactional_db: None) -> Iterator[str]:
    """A live server for one test; returns its base URL (``http://localhost:<port>``).

    On PostgreSQL or a file SQLite database it serves requests on threads, like
    pytest-django's ``live_server``. On an in-memory SQLite database every thread must
    share the test's one connection, which cannot serve two requests at once ("database
    table is locked" when a webhook lands during a page load), so requests are served
    one at a time there.
    """
    from django.contrib.staticfiles.handlers import StaticFilesHandler
    from django.core.servers.basehttp import WSGIServer
    from django.db import connections
    from django.test.testcases import LiveServerThread

    class SerialWSGIServer(WSGIServer):
        def __init__(self, *args: Any, connections_override: Any = None, **kwargs: Any) -> None:
            # Requests run on the server thread, which already uses the shared connections.
            super().__init__(*args, **kwargs)

    class SerialLiveServerThread(LiveServerThread):
        server_class = SerialWSGIServer

    shared = {
        conn.alias: conn
        for conn in connections.all()
        if conn.vendor == "sqlite" and conn.is_in_memory_db()
    }
    thread_class = SerialLiveServerThread if shared else LiveServerThread
    thread = thread_class(
        "localhost", static_handler=StaticFilesHandler, connections_override=shared, port=0
    )
    thread.daemon = True
    for conn in shared.values():
        conn.inc_thread_sharing()
    thread.start()
    thread.is_ready.wait()
    try:
        if thread.error:
            raise thread.error
        yield f"http://{thread.host}:{thread.port}"
    finally:
        thread.terminate()
        for conn in shared.values():
            conn.dec_thread_sharing()
